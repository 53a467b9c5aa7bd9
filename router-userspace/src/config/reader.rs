//! Reading every declared variable into a [`Config`]: its value (or default) through its
//! parser into its field, every refused value recorded as an error naming the variable, the
//! value (masked for secrets) and where it came from, so all are reported at once.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::error::ConfigError;
use super::origin::Origin;
use super::sections::{
    AdminConfig, AuthConfig, ClearmlConfig, Config, HttpConfig, NginxConfig, RouterConfig,
    TcpConfig,
};
use super::show::mask;
use super::sources::Sources;
use super::spec::EnvVar;
use super::vars::ENV_VARS;
use crate::datapath::options::{
    AttachMode, DatapathConfig, DatapathKind, NatSourcePorts, Pressure,
};
use crate::logging::LogFormat;
use crate::routes::{HttpMode, PreserveClientIp};

/// What reading found besides the values: the refused ones, and what the operator set.
#[derive(Debug, Default)]
pub(super) struct Read {
    pub errors: Vec<ConfigError>,
    /// Variables set to a non-empty value (valid or not).
    set: BTreeSet<&'static str>,
    /// Variables whose value was refused; their field holds the default.
    refused: BTreeSet<&'static str>,
}

impl Read {
    pub fn is_set(&self, name: &str) -> bool {
        self.set.contains(name)
    }

    pub fn refused(&self, name: &str) -> bool {
        self.refused.contains(name)
    }
}

/// Reads every variable of [`ENV_VARS`] from `sources`, then fills the defaults computed from
/// other variables. A refused value leaves the default in its field, so the cross-checks after
/// this see a usable configuration.
pub(super) fn read(sources: &Sources) -> (Config, Read) {
    let mut cfg = unread();
    let mut read = Read::default();
    for var in ENV_VARS {
        let (value, origin, name) = match sources.value(var) {
            Ok(Some(found)) => (found.value.trim(), found.origin, found.name),
            Ok(None) => (var.default, Origin::Default, var.name),
            Err(conflict) => {
                read.errors.push(conflict);
                read.set.insert(var.name);
                read.refused.insert(var.name);
                let _ = (var.field.read)(&mut cfg, var.default);
                continue;
            }
        };
        if origin != Origin::Default {
            read.set.insert(var.name);
        }
        if let Err(detail) = (var.field.read)(&mut cfg, value) {
            read.errors
                .push(invalid(var, name, value, origin.clone(), detail));
            read.refused.insert(var.name);
            // A default that does not parse is a declaration bug, caught by the unit tests;
            // the error above already names it.
            if origin != Origin::Default {
                let _ = (var.field.read)(&mut cfg, var.default);
            }
        }
    }
    if cfg.router.url.is_empty() {
        cfg.router.url = RouterConfig::default_url(&cfg.tcp.router_address, cfg.http.server_port);
    }
    if let NatSourcePorts::Auto { router_ports } = &mut cfg.datapath.nat_source_ports {
        *router_ports = Some((cfg.tcp.port_start, cfg.tcp.port_end));
    }
    (cfg, read)
}

/// `var`'s value refused; `name` is the name it was given under (the variable's or its alias).
fn invalid(
    var: &EnvVar,
    name: &'static str,
    value: &str,
    origin: Origin,
    detail: String,
) -> ConfigError {
    let expected = if detail.is_empty() {
        var.expected.to_string()
    } else {
        format!("{} ({detail})", var.expected)
    };
    ConfigError::Invalid {
        var: name,
        value: if var.secret {
            mask(value)
        } else {
            value.to_string()
        },
        origin,
        expected,
    }
}

/// What each field holds before its variable is read. Every field is then set from a
/// variable (its value or its default), so none of these is ever seen.
fn unread() -> Config {
    Config {
        clearml: ClearmlConfig {
            api_host: None,
            access_key: String::new(),
            secret_key: String::new(),
            ssl_verify: false,
            ssl_verify_bundle: None,
            ca_bundle: None,
            listen_queues: Vec::new(),
            poll_interval: Duration::ZERO,
            request_timeout: Duration::ZERO,
        },
        router: RouterConfig {
            name: String::new(),
            url: String::new(),
            max_endpoints_per_task: 0,
        },
        tcp: TcpConfig {
            router_address: String::new(),
            port_start: 0,
            port_end: 0,
            allowed_upstreams: Vec::new(),
            port_grace: Duration::ZERO,
            preserve_client_ip: PreserveClientIp::Off,
            client_allow: crate::client_allow::ClientAllow::Any,
        },
        datapath: DatapathConfig {
            kind: DatapathKind::Ebpf(AttachMode::Auto),
            interfaces: Vec::new(),
            bpffs: PathBuf::new(),
            max_connections: 0,
            conntrack_pressure: Pressure {
                high_percent: 0,
                low_percent: 0,
                min_idle: Duration::ZERO,
            },
            router_addresses: Vec::new(),
            nat_source_ports: NatSourcePorts::Range(0, 0),
        },
        http: HttpConfig {
            server_port: 0,
            mode: HttpMode::Path,
            domain: None,
        },
        auth: AuthConfig {
            enabled: false,
            cookie_name: String::new(),
            secure_cookie: false,
            hmac_key: Vec::new(),
            algorithm: String::new(),
            login_url: None,
        },
        nginx: NginxConfig {
            managed: false,
            binary: PathBuf::new(),
            conf_dir: PathBuf::new(),
            reload_cmd: String::new(),
            test_cmd: String::new(),
        },
        admin: AdminConfig {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            allow: Vec::new(),
        },
        state_dir: PathBuf::new(),
        routes_file: None,
        extra_bash_command: None,
        log_level: String::new(),
        log_format: LogFormat::Text,
        detach_on_exit: false,
    }
}
