//! The shape of the configuration: [`Config`] and its sections, plain structs each owner takes
//! by reference. Which variable fills which field is declared once, in [`super::vars`].

use ipnet::Ipv4Net;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::client_allow::ClientAllow;
use crate::datapath::options::DatapathConfig;
use crate::routes::{HttpMode, PreserveClientIp};
use crate::routes_file::FileRules;

/// Everything `task-router run` needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub clearml: ClearmlConfig,
    pub router: RouterConfig,
    pub tcp: TcpConfig,
    pub datapath: DatapathConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub nginx: NginxConfig,
    pub admin: AdminConfig,
    /// `ROUTER_STATE_DIR` (default `/var/lib/task-router`): the local cache of allocations and the
    /// instance lock (`instance_lock`).
    pub state_dir: PathBuf,
    /// `--routes-file` / `ROUTER_ROUTES_FILE`: static routes (TOML), for use without ClearML and
    /// for benchmarks.
    pub routes_file: Option<PathBuf>,
    /// `EXTRA_BASH_COMMAND`: run once before start; its failure stops start-up.
    pub extra_bash_command: Option<String>,
    /// `LOGGER_LEVEL` (default `info`), as a tracing filter (ClearML's `WARNING`/`CRITICAL`
    /// spellings are mapped to `warn`/`error`).
    pub log_level: String,
    /// `LOG_FORMAT` (`text|json`, default `text`).
    pub log_format: crate::logging::LogFormat,
    /// `ROUTER_DETACH_ON_EXIT` / `--detach-on-exit` (default false): on exit, detach the
    /// programs and unpin every map and link. By default they stay pinned and forwarding goes
    /// on while no daemon runs; the next daemon adopts them.
    pub detach_on_exit: bool,
}

/// How to reach the ClearML API server.
#[derive(Clone, Debug)]
pub struct ClearmlConfig {
    /// `CLEARML_API_HOST`, e.g. `http://clearml:8008`. `None`: run without ClearML (routes file
    /// only).
    pub api_host: Option<String>,
    /// `CLEARML_API_ACCESS_KEY`.
    pub access_key: String,
    /// `CLEARML_API_SECRET_KEY` (masked in `check-config`).
    pub secret_key: String,
    /// `SSL_VERIFY` (default true): check the server's certificate.
    pub ssl_verify: bool,
    /// `SSL_VERIFY=<path>`: a CA bundle to trust besides the system store and built-in roots.
    pub ssl_verify_bundle: Option<PathBuf>,
    /// `CLEARML_API_CA_BUNDLE`: the same, in a variable of its own.
    pub ca_bundle: Option<PathBuf>,
    /// `LISTEN_QUEUE_NAME`: queue names; empty = every queue.
    pub listen_queues: Vec<String>,
    /// `ROUTER_POLL_INTERVAL` (default 2 s).
    pub poll_interval: Duration,
    /// `ROUTER_API_TIMEOUT` (default 10 s): one API call's deadline.
    pub request_timeout: Duration,
}

/// This router's identity.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// `ROUTER_NAME` (default: the host name): written as `_ROUTER_NAME<sfx>` on claimed tasks.
    pub name: String,
    /// `ROUTER_URL`: external base URL HTTP endpoints are built on (`https://router.example.com`),
    /// without a trailing slash. Default `http://{TCP_ROUTER_ADDRESS}:{server port}`.
    pub url: String,
    /// `ROUTER_MAX_ENDPOINTS_PER_TASK` (default [`DEFAULT_MAX_ENDPOINTS_PER_TASK`]): how many
    /// routes (TCP and HTTP together) one task may be given, so one task cannot take the whole
    /// port range (or bloat the nginx config) and starve the others.
    pub max_endpoints_per_task: u32,
}

/// Default of `ROUTER_MAX_ENDPOINTS_PER_TASK`. ClearML's own users of the router ask for one or
/// a few routes per task: clearml-session routes only SSH (Jupyter and VS Code go through its
/// tunnel), an SDK task calls `request_external_endpoint` once per named endpoint (an API and a
/// UI, maybe a TCP port next to them). 16 leaves ample headroom for those, while the default
/// range of 1000 ports still takes 63 tasks at the limit to fill.
pub const DEFAULT_MAX_ENDPOINTS_PER_TASK: u32 = 16;

/// The TCP port range and what is written back for it.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// `TCP_ROUTER_ADDRESS`: the address written back as `external_address` (IP or host name).
    pub router_address: String,
    /// `TCP_PORT_START`..=`TCP_PORT_END`.
    pub port_start: u16,
    pub port_end: u16,
    /// `ROUTER_ALLOWED_UPSTREAMS` (default: 10/8, 172.16/12, 192.168/16, 100.64/10).
    pub allowed_upstreams: Vec<Ipv4Net>,
    /// `ROUTER_PORT_GRACE`: port reuse grace period after a route ends (default 60 s).
    pub port_grace: Duration,
    /// `ROUTER_PRESERVE_CLIENT_IP` (default off): the translation of TCP routes that do not
    /// name their own (`TcpRoute::preserve_client_ip`).
    pub preserve_client_ip: PreserveClientIp,
    /// `ROUTER_TCP_CLIENT_ALLOW` (default: everyone): the clients that may connect to any TCP
    /// route; a route's own list only narrows it.
    pub client_allow: ClientAllow,
}

/// HTTP routes through nginx.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// `ROUTER__WEBSERVER__SERVER_PORT` (default 8010): the port nginx listens on.
    pub server_port: u16,
    /// `ROUTER_HTTP_MODE` (`path|subdomain`, default `path`).
    pub mode: HttpMode,
    /// `ROUTER_DOMAIN`: required for subdomain mode.
    pub domain: Option<String>,
}

/// Authentication of routed HTTP requests.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `AUTH_ENABLED` (default true).
    pub enabled: bool,
    /// `AUTH_COOKIE_NAME` (default `clearml_token_basic`): one cookie name, or several
    /// separated by commas (all are read; the first is the one the router sets).
    pub cookie_name: String,
    /// `AUTH_SECURE_ENABLED` (default true): `Secure` on cookies the router sets.
    pub secure_cookie: bool,
    /// `AUTH_BASE64_JWKS_KEY` as written (masked in output): the server's token secret, or the
    /// JWKS `k` of it; [`AuthConfig::hmac_keys`] says which keys that makes.
    pub hmac_key: Vec<u8>,
    /// `AUTH_JWT_ALGORITHM` (default `HS256`; HS384/HS512 accepted).
    pub algorithm: String,
    /// `AUTH_LOGIN_URL`: where unauthenticated browsers are redirected; `None` = plain 401.
    pub login_url: Option<String>,
}

/// nginx: managed by the daemon, or an existing one driven through a config dir and a command.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    /// `NGINX_MANAGED` (default false): start and supervise nginx with a generated main config.
    pub managed: bool,
    /// `NGINX_BINARY` (default `nginx`).
    pub binary: PathBuf,
    /// `NGINX_CONF_DIR` (default `/etc/nginx/conf.d`): where the generated files go.
    pub conf_dir: PathBuf,
    /// `NGINX_RELOAD_CMD` (default `nginx -s reload`), run through `sh -c`.
    pub reload_cmd: String,
    /// `NGINX_TEST_CMD` (default `nginx -t`), run through `sh -c` before installing a config.
    pub test_cmd: String,
}

/// The admin endpoint: metrics, health, nginx auth checks, status.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `ROUTER_ADMIN_ADDR` (default `127.0.0.1:9180`).
    pub addr: SocketAddr,
    /// `ROUTER_ADMIN_ALLOW` (default empty): non-loopback CIDRs allowed to call it.
    pub allow: Vec<Ipv4Net>,
}

/// Default private ranges tasks may be forwarded to.
pub const DEFAULT_ALLOWED_UPSTREAMS: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10";

impl Config {
    /// Whether routes come from ClearML.
    pub fn clearml_enabled(&self) -> bool {
        self.clearml.api_host.is_some()
    }

    /// What the routes file may hold, given the HTTP, auth and TCP settings.
    pub fn routes_file_rules(&self) -> FileRules {
        FileRules {
            domain_set: self.http.domain.is_some(),
            auth_key_missing: self.auth.enabled && self.auth.hmac_key.is_empty(),
            client_allow: self.tcp.client_allow.clone(),
        }
    }
}

/// How `AUTH_BASE64_JWKS_KEY` is read into an HMAC key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyForm {
    /// The bytes of the variable: the token secret as ClearML documents it for the router
    /// (the server signs with `jwt.encode(payload, token_secret)`, PyJWT taking the string's
    /// bytes, clearml-server `apiserver/service_repo/auth/payload/token.py:81-83`).
    AsWritten,
    /// The base64url decoding of the variable: a JWKS `k`.
    JwksK,
}

impl AuthConfig {
    /// The HMAC keys `AUTH_BASE64_JWKS_KEY` stands for, in the order they are tried: the
    /// secret as written, then its base64url decoding when it decodes (the open-source
    /// defaults are valid base64url, so both forms of them are real candidates).
    pub fn hmac_keys(&self) -> Vec<(KeyForm, Vec<u8>)> {
        if self.hmac_key.is_empty() {
            return Vec::new();
        }
        let mut keys = vec![(KeyForm::AsWritten, self.hmac_key.clone())];
        if let Some(decoded) = super::parse::base64url_key(&self.hmac_key)
            && decoded != self.hmac_key
        {
            keys.push((KeyForm::JwksK, decoded));
        }
        keys
    }

    /// The cookie names of `AUTH_COOKIE_NAME`, the one the router sets first.
    pub fn cookie_names(&self) -> Vec<&str> {
        super::parse::split_list(&self.cookie_name).collect()
    }
}

impl ClearmlConfig {
    /// The CA bundles to trust besides the system store and built-in roots, each with the
    /// variable that names it.
    pub fn ca_bundles(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut out = Vec::new();
        if let Some(path) = &self.ssl_verify_bundle {
            out.push(("SSL_VERIFY", path.as_path()));
        }
        if let Some(path) = &self.ca_bundle
            && self.ssl_verify_bundle.as_ref() != Some(path)
        {
            out.push(("CLEARML_API_CA_BUNDLE", path.as_path()));
        }
        out
    }
}

impl RouterConfig {
    /// `ROUTER_NAME` when unset: the host name, each character a router name may not hold
    /// replaced by `-`, cut to 64.
    pub(super) fn default_name() -> String {
        host_name()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect()
    }

    /// `ROUTER_URL` when unset: `http://{TCP_ROUTER_ADDRESS}:{server port}`, the host name when
    /// no address is set.
    pub(super) fn default_url(router_address: &str, server_port: u16) -> String {
        let host = if router_address.is_empty() {
            host_name()
        } else if router_address.contains(':') {
            format!("[{router_address}]")
        } else {
            router_address.to_string()
        };
        format!("http://{host}:{server_port}")
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "task-router".to_string())
}
