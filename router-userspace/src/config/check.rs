//! The checks across variables, after each was read on its own: what one variable requires of
//! another, and ranges that must not overlap.

use super::error::ConfigError;
use super::reader::Read;
use super::sections::Config;
use crate::datapath::options::{DatapathKind, NatSourcePorts};
use crate::host_ephemeral::{self, PortRange};
use crate::routes::HttpMode;

/// Every variable required by another and every conflict between values, in the order an
/// operator would fix them: what is missing, then the port ranges.
pub(super) fn cross_checks(cfg: &Config, read: &Read) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut missing = |var: &'static str, why: &str| {
        errors.push(ConfigError::Missing {
            var,
            why: why.to_string(),
        })
    };
    // Set (even to a refused value): the operator meant to use ClearML.
    let clearml = read.is_set("CLEARML_API_HOST");
    if clearml && cfg.clearml.access_key.is_empty() {
        missing("CLEARML_API_ACCESS_KEY", "CLEARML_API_HOST is set");
    }
    if clearml && cfg.clearml.secret_key.is_empty() {
        missing("CLEARML_API_SECRET_KEY", "CLEARML_API_HOST is set");
    }
    if cfg.http.mode == HttpMode::Subdomain && !read.is_set("ROUTER_DOMAIN") {
        missing("ROUTER_DOMAIN", "ROUTER_HTTP_MODE=subdomain");
    }
    if clearml && !read.is_set("TCP_ROUTER_ADDRESS") {
        missing(
            "TCP_ROUTER_ADDRESS",
            "CLEARML_API_HOST is set, and TCP endpoints are written back with it",
        );
    }
    // A refused AUTH_ENABLED says nothing about whether a key is needed. Tasks may ask for HTTP
    // endpoints at any time; a routes file is checked for HTTP entries when it is read
    // (`Config::routes_file_rules`), so a TCP-only routes file needs no key.
    let auth = cfg.auth.enabled && !read.refused("AUTH_ENABLED");
    if auth && cfg.auth.hmac_key.is_empty() && clearml {
        missing(
            "AUTH_BASE64_JWKS_KEY",
            "AUTH_ENABLED=true and HTTP routes may be served: set the key or AUTH_ENABLED=false",
        );
    }
    if !cfg.clearml.ssl_verify && cfg.clearml.ca_bundle.is_some() {
        errors.push(ConfigError::Conflict {
            what: "CLEARML_API_CA_BUNDLE names a CA to trust, but SSL_VERIFY=false turns \
                   certificate checks off: set one of them"
                .into(),
        });
    }
    errors.extend(
        port_conflicts(cfg)
            .into_iter()
            .map(|what| ConfigError::Conflict { what }),
    );
    errors
}

/// The TCP range against the other ports the router uses, and interfaces named twice.
fn port_conflicts(cfg: &Config) -> Vec<String> {
    let mut conflicts = Vec::new();
    let (start, end) = (cfg.tcp.port_start, cfg.tcp.port_end);
    if start > end {
        conflicts.push(format!(
            "TCP_PORT_START={start} is above TCP_PORT_END={end}: the range is empty"
        ));
    }
    let server_port = cfg.http.server_port;
    if (start..=end).contains(&server_port) {
        conflicts.push(format!(
            "ROUTER__WEBSERVER__SERVER_PORT={server_port} lies inside the TCP range \
             {start}-{end}"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (iface, _) in &cfg.datapath.interfaces {
        if !seen.insert(iface) {
            conflicts.push(format!("ROUTER_INTERFACES names {iface} twice"));
        }
    }
    // A NAT source port inside the router's range would make a task's replies look like
    // new connections to a router port.
    if let NatSourcePorts::Range(first, last) = cfg.datapath.nat_source_ports
        && first <= end
        && start <= last
    {
        conflicts.push(format!(
            "ROUTER_NAT_SOURCE_PORTS={first}-{last} overlaps the TCP range \
             TCP_PORT_START-TCP_PORT_END={start}-{end}"
        ));
    }
    let admin = cfg.admin.addr;
    if admin.port() != 0 && (start..=end).contains(&admin.port()) {
        conflicts.push(format!(
            "ROUTER_ADMIN_ADDR={admin} uses a port inside the TCP range {start}-{end}"
        ));
    }
    conflicts
}

/// NAT source ports the router host's own stack may pick for its connections (`host`, its
/// `net.ipv4.ip_local_port_range`): refused, since a client given such a tuple may meet the
/// task's TIME_WAIT of a host connection, or a host connection in progress. Only the eBPF
/// datapath translates; `auto` keeps out of the range by itself.
pub(super) fn nat_ports_outside_host_ephemeral(
    cfg: &Config,
    host: PortRange,
) -> Option<ConfigError> {
    let NatSourcePorts::Range(first, last) = cfg.datapath.nat_source_ports else {
        return None;
    };
    if matches!(cfg.datapath.kind, DatapathKind::Nginx) || !host.overlaps((first, last)) {
        return None;
    }
    Some(ConfigError::Conflict {
        what: format!(
            "ROUTER_NAT_SOURCE_PORTS={first}-{last} overlaps the router host's ephemeral port \
             range {host} (sysctl {}): the host's own connections to tasks take their source \
             ports from there; use ports outside it, `auto`, or narrow the sysctl",
            host_ephemeral::SYSCTL
        ),
    })
}
