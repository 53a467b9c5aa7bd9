//! The daemon's configuration: ClearML router names and meanings (`runtime.env`), plus
//! task-router's own `ROUTER_*` additions. Sections are plain structs each owner takes by
//! reference; parsing and validation (environment, `--env-file`, CLI flags) live here too.
//!
//! Precedence: CLI flags > real environment variables > the `--env-file` > defaults. A value set
//! (even empty) in a higher layer wins; an empty value means "unset, use the default". Every
//! variable the daemon reads is listed in [`ENV_VARS`] with its default and a one-line help.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::datapath::AttachMode;
use crate::routes::HttpMode;

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
    /// `SSL_VERIFY` (default true).
    pub ssl_verify: bool,
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
}

/// Which TCP datapath, where it attaches and how big its tables are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatapathKind {
    /// eBPF, each interface in its `AttachMode`; falls back to nginx stream (loudly) when the
    /// programs cannot load and the kind is `Auto`.
    Ebpf(AttachMode),
    /// nginx `stream` servers, no kernel programs.
    Nginx,
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatapathKind::Ebpf(mode) => f.write_str(attach_mode_name(*mode)),
            DatapathKind::Nginx => f.write_str("nginx"),
        }
    }
}

/// The spelling of `mode` in `ROUTER_DATAPATH` / `ROUTER_INTERFACES`.
pub fn attach_mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Auto => "auto",
        AttachMode::Xdp => "xdp",
        AttachMode::XdpGeneric => "xdp-generic",
        AttachMode::Tc => "tc",
    }
}

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// `ROUTER_DATAPATH` (`auto|xdp|xdp-generic|tc|nginx`, default `auto`).
    pub kind: DatapathKind,
    /// `ROUTER_INTERFACES`: interfaces to attach to (`eth0,veth1:tc`); an interface without a
    /// mode gets the mode of `kind`.
    pub interfaces: Vec<(String, Option<AttachMode>)>,
    /// `ROUTER_BPFFS` (default `/sys/fs/bpf/task-router`): where maps and links are pinned.
    pub bpffs: PathBuf,
    /// `ROUTER_MAX_CONNECTIONS` (default 262144): connection-table size.
    pub max_connections: u32,
    /// `ROUTER_CONNTRACK_PRESSURE` (`high,low` percent, default `90,80`) and
    /// `ROUTER_CONNTRACK_MIN_IDLE` (default 30 s, established connections): when the sweeper
    /// evicts idle connections before their timeout.
    pub conntrack_pressure: crate::datapath::Pressure,
    /// `ROUTER_ADDRESSES`: the router's own addresses, on which router ports accept
    /// connections; discovered from the interfaces when empty. (The NAT source toward a task is
    /// the address the kernel picks for that task's route.)
    pub router_addresses: Vec<Ipv4Addr>,
    /// `ROUTER_NAT_SOURCE_PORTS` (default `61000-65535`,
    /// `datapath::DEFAULT_NAT_SOURCE_PORTS`): source ports toward tasks, probed when a client's
    /// own port is taken toward the same task.
    pub nat_source_ports: (u16, u16),
}

/// HTTP routes through nginx.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// `ROUTER__WEBSERVER__SERVER_PORT` (default 8080): the port nginx listens on.
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
    /// `AUTH_COOKIE_NAME` (default `clearml_token_basic`).
    pub cookie_name: String,
    /// `AUTH_SECURE_ENABLED` (default true): `Secure` on cookies the router sets.
    pub secure_cookie: bool,
    /// `AUTH_BASE64_JWKS_KEY`: base64url `k` of the server's JWKS, decoded (masked in output).
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

// ------------------------------------------------------------------------------------------
// The variables.

/// One variable the daemon reads.
#[derive(Clone, Copy, Debug)]
pub struct EnvVar {
    pub name: &'static str,
    /// The value used when the variable is unset or empty; `""` = none (or computed, see help).
    pub default: &'static str,
    pub help: &'static str,
    /// Masked wherever the configuration is shown.
    pub secret: bool,
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> EnvVar {
    EnvVar {
        name,
        default,
        help,
        secret: false,
    }
}

const fn secret(name: &'static str, help: &'static str) -> EnvVar {
    EnvVar {
        name,
        default: "",
        help,
        secret: true,
    }
}

/// Default private ranges tasks may be forwarded to.
pub const DEFAULT_ALLOWED_UPSTREAMS: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10";

/// Every variable `task-router` reads, in the order `check-config` shows them.
pub const ENV_VARS: &[EnvVar] = &[
    var(
        "CLEARML_API_HOST",
        "",
        "ClearML API server URL (http://host:8008); unset = no ClearML, routes file only",
    ),
    var(
        "CLEARML_API_ACCESS_KEY",
        "",
        "API access key (required with CLEARML_API_HOST)",
    ),
    secret(
        "CLEARML_API_SECRET_KEY",
        "API secret key (required with CLEARML_API_HOST)",
    ),
    var(
        "SSL_VERIFY",
        "true",
        "verify the API server's TLS certificate",
    ),
    var(
        "LISTEN_QUEUE_NAME",
        "",
        "queues whose tasks to serve, separated by commas or spaces; empty or `none` = all",
    ),
    var(
        "ROUTER_POLL_INTERVAL",
        "2s",
        "how often tasks are synced (`2s`, `500ms`, `1m`)",
    ),
    var(
        "ROUTER_API_TIMEOUT",
        "10s",
        "deadline of one ClearML API call",
    ),
    var(
        "ROUTER_NAME",
        "",
        "this router's unique name, written on tasks it serves (default: the host name)",
    ),
    var(
        "ROUTER_URL",
        "",
        "external base URL of HTTP endpoints (default http://TCP_ROUTER_ADDRESS:SERVER_PORT)",
    ),
    var(
        "TCP_ROUTER_ADDRESS",
        "",
        "address written back as a TCP endpoint's external_address (required with ClearML)",
    ),
    var("TCP_PORT_START", "30000", "first port of the TCP range"),
    var("TCP_PORT_END", "30999", "last port of the TCP range"),
    var(
        "ROUTER_ALLOWED_UPSTREAMS",
        DEFAULT_ALLOWED_UPSTREAMS,
        "CIDRs tasks may be forwarded to (loopback, link-local, multicast never are)",
    ),
    var(
        "ROUTER_PORT_GRACE",
        "60s",
        "how long a released TCP port rests before it is handed out again",
    ),
    var(
        "ROUTER_MAX_ENDPOINTS_PER_TASK",
        "16",
        "routes one task may hold, TCP and HTTP counted together; its further requests are refused",
    ),
    var(
        "ROUTER_DATAPATH",
        "auto",
        "TCP datapath: auto, xdp, xdp-generic, tc (eBPF) or nginx (stream fallback)",
    ),
    var(
        "ROUTER_INTERFACES",
        "",
        "interfaces to attach to, optionally with a mode: `eth0,veth1:tc`",
    ),
    var(
        "ROUTER_BPFFS",
        "/sys/fs/bpf/task-router",
        "bpffs directory where maps and links are pinned",
    ),
    var(
        "ROUTER_DETACH_ON_EXIT",
        "false",
        "on exit, detach the programs and unpin everything (default: keep forwarding)",
    ),
    var(
        "ROUTER_MAX_CONNECTIONS",
        "262144",
        "size of the connection table",
    ),
    var(
        "ROUTER_CONNTRACK_PRESSURE",
        "90,80",
        "`high,low` percent of the connection table: from high, idle connections are evicted \
         (longest idle first) down to low",
    ),
    var(
        "ROUTER_CONNTRACK_MIN_IDLE",
        "30s",
        "an established connection idle for less than this is never evicted under pressure",
    ),
    var(
        "ROUTER_ADDRESSES",
        "",
        "the router's own IPv4 addresses (NAT source, never an upstream); empty = discovered",
    ),
    var(
        "ROUTER_NAT_SOURCE_PORTS",
        "61000-65535",
        "source ports toward tasks when a client's own port is taken; outside the TCP range",
    ),
    var(
        "ROUTER__WEBSERVER__SERVER_PORT",
        "8080",
        "port nginx listens on for HTTP routes",
    ),
    var(
        "ROUTER_HTTP_MODE",
        "path",
        "HTTP routes as /service/<task>/ paths (`path`) or <task>.ROUTER_DOMAIN (`subdomain`)",
    ),
    var(
        "ROUTER_DOMAIN",
        "",
        "domain of subdomain-mode routes (required for ROUTER_HTTP_MODE=subdomain)",
    ),
    var(
        "AUTH_ENABLED",
        "true",
        "require a valid ClearML token (cookie or Bearer) on routed HTTP requests",
    ),
    var(
        "AUTH_COOKIE_NAME",
        "clearml_token_basic",
        "name of the ClearML auth cookie",
    ),
    var(
        "AUTH_SECURE_ENABLED",
        "true",
        "set the Secure attribute on cookies the router sets",
    ),
    secret(
        "AUTH_BASE64_JWKS_KEY",
        "HMAC key: the base64url `k` of the API server's JWKS (its token secret)",
    ),
    var(
        "AUTH_JWT_ALGORITHM",
        "HS256",
        "token signature algorithm: HS256, HS384 or HS512",
    ),
    var(
        "AUTH_LOGIN_URL",
        "",
        "where unauthenticated browsers are redirected; empty = plain 401",
    ),
    var(
        "NGINX_MANAGED",
        "false",
        "start and supervise nginx with a generated main config",
    ),
    var("NGINX_BINARY", "nginx", "the nginx executable"),
    var(
        "NGINX_CONF_DIR",
        "/etc/nginx/conf.d",
        "directory the generated nginx files go to",
    ),
    var(
        "NGINX_RELOAD_CMD",
        "nginx -s reload",
        "command (sh -c) that reloads nginx",
    ),
    var(
        "NGINX_TEST_CMD",
        "nginx -t",
        "command (sh -c) that checks the nginx config before it is installed",
    ),
    var(
        "ROUTER_ADMIN_ADDR",
        "127.0.0.1:9180",
        "address of the admin endpoint (health, status, metrics, auth check)",
    ),
    var(
        "ROUTER_ADMIN_ALLOW",
        "",
        "non-loopback CIDRs allowed to call the admin endpoint",
    ),
    var(
        "ROUTER_STATE_DIR",
        "/var/lib/task-router",
        "where port allocations, the last route set and the instance lock (one daemon per directory) are kept",
    ),
    var(
        "ROUTER_ROUTES_FILE",
        "",
        "static routes file (TOML), reloaded on change",
    ),
    var(
        "EXTRA_BASH_COMMAND",
        "",
        "command (bash -c) run once before start; its failure stops start-up",
    ),
    var(
        "LOGGER_LEVEL",
        "info",
        "log level (debug, info, warning, error) or a tracing filter; RUST_LOG wins",
    ),
    var("LOG_FORMAT", "text", "log format: text or json"),
];

/// The [`EnvVar`] named `name`.
pub fn env_var(name: &str) -> Option<&'static EnvVar> {
    ENV_VARS.iter().find(|v| v.name == name)
}

// ------------------------------------------------------------------------------------------
// Sources.

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    File { path: PathBuf, line: usize },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("command line"),
            Origin::Env => f.write_str("environment"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// The layered raw values: flags, environment, env file.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    flags: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    file: BTreeMap<String, (String, PathBuf, usize)>,
    /// Things worth a warning (unknown keys in the env file, ...).
    pub warnings: Vec<String>,
}

impl Sources {
    /// Sources from the real process environment and an optional env file.
    pub fn from_process(
        flags: Vec<(String, String)>,
        env_file: Option<&Path>,
    ) -> Result<Sources, ConfigErrors> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect::<Vec<_>>();
        Sources::new(flags, env, env_file)
    }

    /// Sources from explicit parts: `flags` win over `env`, which wins over the file's lines.
    /// Only variables of [`ENV_VARS`] are taken from `env`; unknown flag names are errors.
    pub fn new(
        flags: Vec<(String, String)>,
        env: impl IntoIterator<Item = (String, String)>,
        env_file: Option<&Path>,
    ) -> Result<Sources, ConfigErrors> {
        let mut sources = Sources::default();
        let mut errors = Vec::new();
        for (name, value) in flags {
            if env_var(&name).is_none() {
                errors.push(ConfigError::UnknownVariable { name });
                continue;
            }
            sources.flags.insert(name, value);
        }
        for (name, value) in env {
            if env_var(&name).is_some() {
                sources.env.insert(name, value);
            }
        }
        if let Some(path) = env_file {
            match std::fs::read_to_string(path) {
                Ok(text) => match parse_env_file(&text) {
                    Ok(entries) => {
                        for (line, key, value) in entries {
                            if env_var(&key).is_none() {
                                sources.warnings.push(format!(
                                    "{}:{line}: {key} is not a variable task-router reads; ignored",
                                    path.display()
                                ));
                                continue;
                            }
                            sources.file.insert(key, (value, path.to_path_buf(), line));
                        }
                    }
                    Err((line, reason)) => errors.push(ConfigError::EnvFileSyntax {
                        path: path.to_path_buf(),
                        line,
                        reason,
                    }),
                },
                Err(source) => errors.push(ConfigError::EnvFileRead {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        if errors.is_empty() {
            Ok(sources)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The value of `name` and its origin; `None` when no layer sets it.
    pub fn get(&self, name: &str) -> Option<(&str, Origin)> {
        if let Some(v) = self.flags.get(name) {
            return Some((v, Origin::Flag));
        }
        if let Some(v) = self.env.get(name) {
            return Some((v, Origin::Env));
        }
        self.file.get(name).map(|(v, path, line)| {
            (
                v.as_str(),
                Origin::File {
                    path: path.clone(),
                    line: *line,
                },
            )
        })
    }

    /// Where the effective value of `name` comes from: an empty value counts as the default.
    pub fn origin(&self, name: &str) -> Origin {
        match self.get(name) {
            Some((v, origin)) if !v.trim().is_empty() => origin,
            _ => Origin::Default,
        }
    }
}

/// One `KEY=value` line of an env file: `(line number, key, value)`.
pub type EnvLine = (usize, String, String);

/// Parses the `runtime.env` format: `KEY=value` lines, `#` comments, blank lines, an optional
/// `export ` prefix, values optionally in single or double quotes (unquoted values lose a
/// trailing ` # comment`, as docker compose does). Returns `(line, key, value)`.
pub fn parse_env_file(text: &str) -> Result<Vec<EnvLine>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err((line_no, format!("expected KEY=value, found {line:?}")));
        };
        let key = key.trim();
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err((line_no, format!("{key:?} is not a variable name")));
        }
        let value = value.trim();
        let quoted = [('"', "double"), ('\'', "single")]
            .into_iter()
            .find_map(|(q, name)| Some((q, name, value.strip_prefix(q)?)));
        let value = if let Some((quote, name, rest)) = quoted {
            let Some(end) = rest.find(quote) else {
                return Err((line_no, format!("unterminated {name} quote in {key}")));
            };
            // Only a comment may follow the closing quote: `A="x" y` is a typo, not "x".
            let after = rest[end + 1..].trim_start();
            if !after.is_empty() && !after.starts_with('#') {
                return Err((
                    line_no,
                    format!(
                        "unexpected {:?} after the closing {name} quote of {key}",
                        crate::validate::truncate(after)
                    ),
                ));
            }
            rest[..end].to_string()
        } else {
            match value.find(" #") {
                Some(pos) => value[..pos].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        out.push((line_no, key.to_string(), value));
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Errors.

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} (from {origin}) is invalid: expected {expected}")]
    Invalid {
        var: &'static str,
        /// The offending value, masked for secrets.
        value: String,
        origin: Origin,
        expected: String,
    },
    #[error("{var} is required: {why}")]
    Missing { var: &'static str, why: String },
    #[error("{what}")]
    Conflict { what: String },
    #[error("{name} is not a variable task-router reads (see `task-router check-config --help`)")]
    UnknownVariable { name: String },
    #[error("cannot read the env file {}", path.display())]
    EnvFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    EnvFileSyntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Every problem found, so one run of `check-config` shows them all.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for e in &self.0 {
            write!(f, "\n  - {}", crate::error::error_chain(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ------------------------------------------------------------------------------------------
// Parsing.

/// Reads one variable at a time, collecting errors instead of stopping at the first.
struct Reader<'a> {
    sources: &'a Sources,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// The raw value (trimmed), `None` when unset or empty.
    fn raw(&self, name: &'static str) -> Option<(String, Origin)> {
        debug_assert!(env_var(name).is_some(), "{name} missing from ENV_VARS");
        self.sources
            .get(name)
            .map(|(v, o)| (v.trim().to_string(), o))
            .filter(|(v, _)| !v.is_empty())
    }

    fn default_of(name: &'static str) -> &'static str {
        env_var(name).map(|v| v.default).unwrap_or("")
    }

    /// Parses the value of `name` (or its default) with `parse`; on failure records an error
    /// naming the variable, the value and `expected`, and returns `fallback`.
    fn parse<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        fallback: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let (value, origin) = self
            .raw(name)
            .unwrap_or_else(|| (Self::default_of(name).to_string(), Origin::Default));
        match parse(&value) {
            Ok(v) => v,
            Err(detail) => {
                let secret = env_var(name).is_some_and(|v| v.secret);
                let expected = if detail.is_empty() {
                    expected.to_string()
                } else {
                    format!("{expected} ({detail})")
                };
                self.errors.push(ConfigError::Invalid {
                    var: name,
                    value: if secret { mask(&value) } else { value.clone() },
                    origin,
                    expected,
                });
                fallback
            }
        }
    }

    fn string(&self, name: &'static str) -> String {
        self.raw(name)
            .map(|(v, _)| v)
            .unwrap_or_else(|| Self::default_of(name).to_string())
    }

    fn optional(&self, name: &'static str) -> Option<String> {
        self.raw(name).map(|(v, _)| v)
    }

    fn boolean(&mut self, name: &'static str) -> bool {
        self.parse(name, "true or false", false, parse_bool)
    }

    fn missing(&mut self, var: &'static str, why: &str) {
        self.errors.push(ConfigError::Missing {
            var,
            why: why.to_string(),
        });
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(String::new()),
    }
}

/// `2s`, `500ms`, `1m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}")),
    };
    let secs = number * scale;
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err("out of range".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bounded_duration(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| {
        let d = parse_duration(s)?;
        if d < min || d > max {
            return Err(format!("between {min:?} and {max:?}"));
        }
        Ok(d)
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(String::new()),
    }
}

/// `high,low`: percentages of the connection table, both 1-100, low below high (equal would
/// evict on every sweep at the watermark).
fn parse_pressure(s: &str) -> Result<(u8, u8), String> {
    let (high, low) = s
        .split_once(',')
        .ok_or_else(|| "two numbers separated by a comma".to_string())?;
    let percent = |v: &str| match v.trim().parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err(format!("{:?} is not a percentage 1-100", v.trim())),
    };
    let (high, low) = (percent(high)?, percent(low)?);
    if low >= high {
        return Err(format!("low {low} is not below high {high}"));
    }
    Ok((high, low))
}

/// `first-last`, both 1024-65535, at least 64 ports (the kernel probes a bounded number of
/// random ports; a tiny range would fail connections long before it is in use).
fn parse_nat_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} has no `-`"))?;
    let port = |p: &str| match p.trim().parse::<u32>() {
        Ok(n @ 1024..=65535) => Ok(n as u16),
        _ => Err(format!("{:?} is not a port 1024-65535", p.trim())),
    };
    let (first, last) = (port(a)?, port(b)?);
    if last < first || last - first < 63 {
        return Err(format!("{first}-{last} holds fewer than 64 ports"));
    }
    Ok((first, last))
}

/// Items separated by commas and/or whitespace.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
}

fn parse_cidrs(s: &str) -> Result<Vec<Ipv4Net>, String> {
    split_list(s)
        .map(|item| {
            item.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .or_else(|_| item.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| format!("{item:?} is not an IPv4 CIDR"))
        })
        .collect()
}

/// `eth0` or `eth0:tc`.
pub fn parse_interface(s: &str) -> Result<(String, Option<AttachMode>), String> {
    let (name, mode) = match s.split_once(':') {
        Some((name, mode)) => (
            name,
            Some(parse_attach_mode(mode).ok_or_else(|| {
                format!("unknown mode {mode:?} for {name}: expected auto, xdp, xdp-generic or tc")
            })?),
        ),
        None => (s, None),
    };
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ' ', '\0', ',', ':'])
        || name == "."
        || name == ".."
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok((name.to_string(), mode))
}

fn parse_attach_mode(s: &str) -> Option<AttachMode> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Some(AttachMode::Auto),
        "xdp" => Some(AttachMode::Xdp),
        "xdp-generic" | "xdpgeneric" | "generic" => Some(AttachMode::XdpGeneric),
        "tc" => Some(AttachMode::Tc),
        _ => None,
    }
}

fn parse_datapath(s: &str) -> Result<DatapathKind, String> {
    if s.eq_ignore_ascii_case("nginx") {
        return Ok(DatapathKind::Nginx);
    }
    parse_attach_mode(s)
        .map(DatapathKind::Ebpf)
        .ok_or_else(String::new)
}

/// A DNS name: labels of `[A-Za-z0-9-]`, not starting or ending with `-`, ≤ 253 bytes.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_host(s: &str) -> Result<String, String> {
    if s.parse::<IpAddr>().is_ok() || is_host_name(s) {
        Ok(s.to_string())
    } else {
        Err(String::new())
    }
}

/// `http(s)://host[:port][/path]`; returns it without a trailing slash.
pub fn parse_http_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not accepted".into());
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("unterminated [")?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            if let Some(port) = after.strip_prefix(':') {
                parse_port(port).map_err(|_| format!("bad port {port:?}"))?;
            } else if !after.is_empty() {
                return Err(format!("unexpected {after:?} after the address"));
            }
            None
        }
        None => {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if let Some(port) = port {
                parse_port(port).map_err(|_| format!("bad port {port:?}"))?;
            }
            Some(host)
        }
    };
    if let Some(host) = host
        && parse_host(host).is_err()
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err("the path may not hold spaces, a query or a fragment".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Maps ClearML's Python-style level names onto tracing's; anything else is taken as a tracing
/// filter and checked.
fn parse_log_level(s: &str) -> Result<String, String> {
    let level = match s.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" | "fatal" => "error".to_string(),
        "notset" => "trace".to_string(),
        l @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => l.to_string(),
        _ => s.to_string(),
    };
    tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| e.to_string())?;
    Ok(level)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "task-router".to_string())
}

/// A router name: `[A-Za-z0-9._-]`, 1–64 bytes (it is written on tasks and shown in URLs).
pub fn is_router_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn decode_jwks_key(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let trimmed = s.trim_end_matches('=');
    let key = URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD.decode(s))
        .map_err(|_| "not base64url".to_string())?;
    if key.len() < 16 {
        return Err(format!(
            "decodes to {} bytes, at least 16 needed",
            key.len()
        ));
    }
    Ok(key)
}

/// `***` with the length, so an operator can tell a secret is set without seeing it.
pub fn mask(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        format!("*** ({} chars)", secret.chars().count())
    }
}

impl Config {
    /// Reads the configuration from the process environment, `env_file` and CLI `flags`
    /// (`(VARIABLE, value)` pairs). Returns the config and the warnings worth logging.
    pub fn load(
        flags: Vec<(String, String)>,
        env_file: Option<&Path>,
    ) -> Result<(Config, Sources), ConfigErrors> {
        let sources = Sources::from_process(flags, env_file)?;
        let config = Config::from_sources(&sources)?;
        Ok((config, sources))
    }

    /// Parses and validates every variable from `sources`; all problems are reported at once.
    pub fn from_sources(sources: &Sources) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            sources,
            errors: Vec::new(),
        };

        // ClearML.
        let api_host = r.raw("CLEARML_API_HOST").map(|_| {
            r.parse(
                "CLEARML_API_HOST",
                "an http:// or https:// URL",
                String::new(),
                parse_http_url,
            )
        });
        let access_key = r.string("CLEARML_API_ACCESS_KEY");
        let secret_key = r.string("CLEARML_API_SECRET_KEY");
        let ssl_verify = r.boolean("SSL_VERIFY");
        let listen_queues = match r.optional("LISTEN_QUEUE_NAME") {
            Some(v) if v.eq_ignore_ascii_case("none") => Vec::new(),
            Some(v) => split_list(&v).map(str::to_string).collect(),
            None => Vec::new(),
        };
        let poll_interval = r.parse(
            "ROUTER_POLL_INTERVAL",
            "a duration between 100ms and 1h (`2s`, `500ms`)",
            Duration::from_secs(2),
            parse_bounded_duration(Duration::from_millis(100), Duration::from_secs(3600)),
        );
        let request_timeout = r.parse(
            "ROUTER_API_TIMEOUT",
            "a duration between 100ms and 5m",
            Duration::from_secs(10),
            parse_bounded_duration(Duration::from_millis(100), Duration::from_secs(300)),
        );
        if api_host.is_some() {
            if access_key.is_empty() {
                r.missing("CLEARML_API_ACCESS_KEY", "CLEARML_API_HOST is set");
            }
            if secret_key.is_empty() {
                r.missing("CLEARML_API_SECRET_KEY", "CLEARML_API_HOST is set");
            }
        }

        // HTTP (needed for the default ROUTER_URL).
        let server_port = r.parse(
            "ROUTER__WEBSERVER__SERVER_PORT",
            "a port 1-65535",
            8080,
            parse_port,
        );
        let mode = r.parse(
            "ROUTER_HTTP_MODE",
            "path or subdomain",
            HttpMode::Path,
            |s| match s.to_ascii_lowercase().as_str() {
                "path" => Ok(HttpMode::Path),
                "subdomain" => Ok(HttpMode::Subdomain),
                _ => Err(String::new()),
            },
        );
        let domain = r.raw("ROUTER_DOMAIN").map(|_| {
            r.parse(
                "ROUTER_DOMAIN",
                "a DNS domain (router.example.com)",
                String::new(),
                |s| {
                    if is_host_name(s) && s.parse::<IpAddr>().is_err() {
                        Ok(s.to_ascii_lowercase())
                    } else {
                        Err(String::new())
                    }
                },
            )
        });
        if mode == HttpMode::Subdomain && domain.is_none() {
            r.missing("ROUTER_DOMAIN", "ROUTER_HTTP_MODE=subdomain");
        }

        // Router identity and the TCP range.
        let name = match r.raw("ROUTER_NAME") {
            Some(_) => r.parse(
                "ROUTER_NAME",
                "1-64 characters of A-Z a-z 0-9 . _ -",
                String::new(),
                |s| {
                    if is_router_name(s) {
                        Ok(s.to_string())
                    } else {
                        Err(String::new())
                    }
                },
            ),
            None => {
                let host = host_name();
                let cleaned: String = host
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(64)
                    .collect();
                cleaned
            }
        };
        let router_address = match r.raw("TCP_ROUTER_ADDRESS") {
            Some(_) => r.parse(
                "TCP_ROUTER_ADDRESS",
                "an IP address or a host name",
                String::new(),
                parse_host,
            ),
            None => {
                if api_host.is_some() {
                    r.missing(
                        "TCP_ROUTER_ADDRESS",
                        "CLEARML_API_HOST is set, and TCP endpoints are written back with it",
                    );
                }
                String::new()
            }
        };
        let url = match r.raw("ROUTER_URL") {
            Some(_) => r.parse(
                "ROUTER_URL",
                "an http:// or https:// URL (https://router.example.com)",
                String::new(),
                parse_http_url,
            ),
            None => {
                let host = if router_address.is_empty() {
                    host_name()
                } else if router_address.contains(':') {
                    format!("[{router_address}]")
                } else {
                    router_address.clone()
                };
                format!("http://{host}:{server_port}")
            }
        };
        let port_start = r.parse("TCP_PORT_START", "a port 1-65535", 30000, parse_port);
        let port_end = r.parse("TCP_PORT_END", "a port 1-65535", 30999, parse_port);
        if port_start > port_end {
            r.errors.push(ConfigError::Conflict {
                what: format!(
                    "TCP_PORT_START={port_start} is above TCP_PORT_END={port_end}: the range is empty"
                ),
            });
        }
        let allowed_upstreams = r.parse(
            "ROUTER_ALLOWED_UPSTREAMS",
            "IPv4 CIDRs separated by commas or spaces (10.0.0.0/8,192.168.0.0/16)",
            Vec::new(),
            parse_cidrs,
        );
        let port_grace = r.parse(
            "ROUTER_PORT_GRACE",
            "a duration up to 1 day (`60s`, `5m`)",
            Duration::from_secs(60),
            parse_bounded_duration(Duration::ZERO, Duration::from_secs(86400)),
        );
        let max_endpoints_per_task = r.parse(
            "ROUTER_MAX_ENDPOINTS_PER_TASK",
            "a number of routes between 1 and 65535",
            DEFAULT_MAX_ENDPOINTS_PER_TASK,
            |s| match s.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n),
                _ => Err(String::new()),
            },
        );
        if (port_start..=port_end).contains(&server_port) {
            r.errors.push(ConfigError::Conflict {
                what: format!(
                    "ROUTER__WEBSERVER__SERVER_PORT={server_port} lies inside the TCP range \
                     {port_start}-{port_end}"
                ),
            });
        }

        // Datapath.
        let kind = r.parse(
            "ROUTER_DATAPATH",
            "auto, xdp, xdp-generic, tc or nginx",
            DatapathKind::Ebpf(AttachMode::Auto),
            parse_datapath,
        );
        let interfaces = r.parse(
            "ROUTER_INTERFACES",
            "interface names, each optionally with :auto, :xdp, :xdp-generic or :tc, separated by commas",
            Vec::new(),
            |s| split_list(s).map(parse_interface).collect(),
        );
        let mut seen = std::collections::HashSet::new();
        for (iface, _) in &interfaces {
            if !seen.insert(iface.clone()) {
                r.errors.push(ConfigError::Conflict {
                    what: format!("ROUTER_INTERFACES names {iface} twice"),
                });
            }
        }
        let bpffs = PathBuf::from(r.string("ROUTER_BPFFS"));
        if !bpffs.is_absolute() {
            r.errors.push(ConfigError::Invalid {
                var: "ROUTER_BPFFS",
                value: bpffs.display().to_string(),
                origin: sources.origin("ROUTER_BPFFS"),
                expected: "an absolute path under a bpffs mount".into(),
            });
        }
        let detach_on_exit = r.boolean("ROUTER_DETACH_ON_EXIT");
        let max_connections = r.parse(
            "ROUTER_MAX_CONNECTIONS",
            "a number between 1024 and 16777216",
            262_144,
            |s| match s.parse::<u32>() {
                Ok(n) if (1024..=16_777_216).contains(&n) => Ok(n),
                _ => Err(String::new()),
            },
        );
        let (high_percent, low_percent) = r.parse(
            "ROUTER_CONNTRACK_PRESSURE",
            "`high,low` percent of the connection table, both 1-100, low below high",
            (90, 80),
            parse_pressure,
        );
        let conntrack_pressure = crate::datapath::Pressure {
            high_percent,
            low_percent,
            min_idle: r.parse(
                "ROUTER_CONNTRACK_MIN_IDLE",
                "a duration between 1s and 1h",
                crate::datapath::DEFAULT_MIN_IDLE,
                parse_bounded_duration(Duration::from_secs(1), Duration::from_secs(3600)),
            ),
        };
        let router_addresses = r.parse(
            "ROUTER_ADDRESSES",
            "IPv4 addresses separated by commas or spaces",
            Vec::new(),
            |s| {
                split_list(s)
                    .map(|a| {
                        a.parse::<Ipv4Addr>()
                            .map_err(|_| format!("{a:?} is not IPv4"))
                    })
                    .collect()
            },
        );

        let nat_source_ports = r.parse(
            "ROUTER_NAT_SOURCE_PORTS",
            "a port range `first-last` of at least 64 ports, 1024-65535",
            crate::datapath::DEFAULT_NAT_SOURCE_PORTS,
            parse_nat_ports,
        );
        // A NAT source port inside the router's range would make a task's replies look like
        // new connections to a router port.
        if nat_source_ports.0 <= port_end && port_start <= nat_source_ports.1 {
            r.errors.push(ConfigError::Conflict {
                what: format!(
                    "ROUTER_NAT_SOURCE_PORTS={}-{} overlaps the TCP range \
                     TCP_PORT_START-TCP_PORT_END={port_start}-{port_end}",
                    nat_source_ports.0, nat_source_ports.1
                ),
            });
        }

        // Auth.
        let enabled = r.boolean("AUTH_ENABLED");
        let cookie_name = r.parse(
            "AUTH_COOKIE_NAME",
            "a cookie name (letters, digits, - _ .)",
            String::new(),
            |s| {
                if s.len() <= 128
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    Ok(s.to_string())
                } else {
                    Err(String::new())
                }
            },
        );
        let secure_cookie = r.boolean("AUTH_SECURE_ENABLED");
        let hmac_key = match r.raw("AUTH_BASE64_JWKS_KEY") {
            Some(_) => r.parse(
                "AUTH_BASE64_JWKS_KEY",
                "the base64url `k` of the API server's JWKS",
                Vec::new(),
                decode_jwks_key,
            ),
            None => Vec::new(),
        };
        let algorithm = r.parse(
            "AUTH_JWT_ALGORITHM",
            "HS256, HS384 or HS512",
            "HS256".to_string(),
            |s| match s.to_ascii_uppercase().as_str() {
                a @ ("HS256" | "HS384" | "HS512") => Ok(a.to_string()),
                _ => Err(String::new()),
            },
        );
        let login_url = r.raw("AUTH_LOGIN_URL").map(|_| {
            r.parse(
                "AUTH_LOGIN_URL",
                "an http:// or https:// URL",
                String::new(),
                parse_http_url,
            )
        });
        let routes_file = r.optional("ROUTER_ROUTES_FILE").map(PathBuf::from);
        if enabled && hmac_key.is_empty() && (api_host.is_some() || routes_file.is_some()) {
            r.missing(
                "AUTH_BASE64_JWKS_KEY",
                "AUTH_ENABLED=true and HTTP routes may be served: set the key or AUTH_ENABLED=false",
            );
        }

        // nginx.
        let managed = r.boolean("NGINX_MANAGED");
        let binary = PathBuf::from(r.string("NGINX_BINARY"));
        let conf_dir = PathBuf::from(r.string("NGINX_CONF_DIR"));
        let reload_cmd = r.string("NGINX_RELOAD_CMD");
        let test_cmd = r.string("NGINX_TEST_CMD");

        // Admin.
        let admin_addr = r.parse(
            "ROUTER_ADMIN_ADDR",
            "an address:port (127.0.0.1:9180)",
            SocketAddr::from(([127, 0, 0, 1], 9180)),
            |s| s.parse::<SocketAddr>().map_err(|_| String::new()),
        );
        let admin_allow = r.parse(
            "ROUTER_ADMIN_ALLOW",
            "IPv4 CIDRs separated by commas or spaces",
            Vec::new(),
            parse_cidrs,
        );

        if admin_addr.port() != 0 && (port_start..=port_end).contains(&admin_addr.port()) {
            r.errors.push(ConfigError::Conflict {
                what: format!(
                    "ROUTER_ADMIN_ADDR={admin_addr} uses a port inside the TCP range \
                     {port_start}-{port_end}"
                ),
            });
        }

        // The rest.
        let state_dir = PathBuf::from(r.string("ROUTER_STATE_DIR"));
        if !state_dir.is_absolute() {
            r.errors.push(ConfigError::Invalid {
                var: "ROUTER_STATE_DIR",
                value: state_dir.display().to_string(),
                origin: sources.origin("ROUTER_STATE_DIR"),
                expected: "an absolute path".into(),
            });
        }
        let extra_bash_command = r.optional("EXTRA_BASH_COMMAND");
        let log_level = r.parse(
            "LOGGER_LEVEL",
            "debug, info, warning, error or a tracing filter",
            "info".to_string(),
            parse_log_level,
        );
        let log_format = r.parse(
            "LOG_FORMAT",
            "text or json",
            crate::logging::LogFormat::Text,
            |s| match s.to_ascii_lowercase().as_str() {
                "text" => Ok(crate::logging::LogFormat::Text),
                "json" => Ok(crate::logging::LogFormat::Json),
                _ => Err(String::new()),
            },
        );

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        Ok(Config {
            clearml: ClearmlConfig {
                api_host,
                access_key,
                secret_key,
                ssl_verify,
                listen_queues,
                poll_interval,
                request_timeout,
            },
            router: RouterConfig {
                name,
                url,
                max_endpoints_per_task,
            },
            tcp: TcpConfig {
                router_address,
                port_start,
                port_end,
                allowed_upstreams,
                port_grace,
            },
            datapath: DatapathConfig {
                kind,
                interfaces,
                bpffs,
                max_connections,
                conntrack_pressure,
                router_addresses,
                nat_source_ports,
            },
            http: HttpConfig {
                server_port,
                mode,
                domain,
            },
            auth: AuthConfig {
                enabled,
                cookie_name,
                secure_cookie,
                hmac_key,
                algorithm,
                login_url,
            },
            nginx: NginxConfig {
                managed,
                binary,
                conf_dir,
                reload_cmd,
                test_cmd,
            },
            admin: AdminConfig {
                addr: admin_addr,
                allow: admin_allow,
            },
            state_dir,
            routes_file,
            extra_bash_command,
            log_level,
            log_format,
            detach_on_exit,
        })
    }

    /// The effective value of every variable, as `check-config` shows it (secrets masked).
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let list = |v: &[Ipv4Net]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let secs = |d: Duration| {
            let ms = d.as_millis();
            if ms.is_multiple_of(1000) {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        };
        let interfaces = self
            .datapath
            .interfaces
            .iter()
            .map(|(name, mode)| match mode {
                Some(m) => format!("{name}:{}", attach_mode_name(*m)),
                None => name.clone(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let c = &self.clearml;
        vec![
            ("CLEARML_API_HOST", c.api_host.clone().unwrap_or_default()),
            ("CLEARML_API_ACCESS_KEY", c.access_key.clone()),
            ("CLEARML_API_SECRET_KEY", mask(&c.secret_key)),
            ("SSL_VERIFY", c.ssl_verify.to_string()),
            ("LISTEN_QUEUE_NAME", c.listen_queues.join(",")),
            ("ROUTER_POLL_INTERVAL", secs(c.poll_interval)),
            ("ROUTER_API_TIMEOUT", secs(c.request_timeout)),
            ("ROUTER_NAME", self.router.name.clone()),
            ("ROUTER_URL", self.router.url.clone()),
            ("TCP_ROUTER_ADDRESS", self.tcp.router_address.clone()),
            ("TCP_PORT_START", self.tcp.port_start.to_string()),
            ("TCP_PORT_END", self.tcp.port_end.to_string()),
            (
                "ROUTER_ALLOWED_UPSTREAMS",
                list(&self.tcp.allowed_upstreams),
            ),
            ("ROUTER_PORT_GRACE", secs(self.tcp.port_grace)),
            (
                "ROUTER_MAX_ENDPOINTS_PER_TASK",
                self.router.max_endpoints_per_task.to_string(),
            ),
            ("ROUTER_DATAPATH", self.datapath.kind.to_string()),
            ("ROUTER_INTERFACES", interfaces),
            ("ROUTER_BPFFS", self.datapath.bpffs.display().to_string()),
            ("ROUTER_DETACH_ON_EXIT", self.detach_on_exit.to_string()),
            (
                "ROUTER_MAX_CONNECTIONS",
                self.datapath.max_connections.to_string(),
            ),
            (
                "ROUTER_CONNTRACK_PRESSURE",
                format!(
                    "{},{}",
                    self.datapath.conntrack_pressure.high_percent,
                    self.datapath.conntrack_pressure.low_percent
                ),
            ),
            (
                "ROUTER_CONNTRACK_MIN_IDLE",
                secs(self.datapath.conntrack_pressure.min_idle),
            ),
            (
                "ROUTER_ADDRESSES",
                self.datapath
                    .router_addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "ROUTER_NAT_SOURCE_PORTS",
                format!(
                    "{}-{}",
                    self.datapath.nat_source_ports.0, self.datapath.nat_source_ports.1
                ),
            ),
            (
                "ROUTER__WEBSERVER__SERVER_PORT",
                self.http.server_port.to_string(),
            ),
            (
                "ROUTER_HTTP_MODE",
                match self.http.mode {
                    HttpMode::Path => "path",
                    HttpMode::Subdomain => "subdomain",
                }
                .to_string(),
            ),
            (
                "ROUTER_DOMAIN",
                self.http.domain.clone().unwrap_or_default(),
            ),
            ("AUTH_ENABLED", self.auth.enabled.to_string()),
            ("AUTH_COOKIE_NAME", self.auth.cookie_name.clone()),
            ("AUTH_SECURE_ENABLED", self.auth.secure_cookie.to_string()),
            (
                "AUTH_BASE64_JWKS_KEY",
                if self.auth.hmac_key.is_empty() {
                    String::new()
                } else {
                    format!("*** ({} byte key)", self.auth.hmac_key.len())
                },
            ),
            ("AUTH_JWT_ALGORITHM", self.auth.algorithm.clone()),
            (
                "AUTH_LOGIN_URL",
                self.auth.login_url.clone().unwrap_or_default(),
            ),
            ("NGINX_MANAGED", self.nginx.managed.to_string()),
            ("NGINX_BINARY", self.nginx.binary.display().to_string()),
            ("NGINX_CONF_DIR", self.nginx.conf_dir.display().to_string()),
            ("NGINX_RELOAD_CMD", self.nginx.reload_cmd.clone()),
            ("NGINX_TEST_CMD", self.nginx.test_cmd.clone()),
            ("ROUTER_ADMIN_ADDR", self.admin.addr.to_string()),
            ("ROUTER_ADMIN_ALLOW", list(&self.admin.allow)),
            ("ROUTER_STATE_DIR", self.state_dir.display().to_string()),
            (
                "ROUTER_ROUTES_FILE",
                self.routes_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "EXTRA_BASH_COMMAND",
                self.extra_bash_command.clone().unwrap_or_default(),
            ),
            ("LOGGER_LEVEL", self.log_level.clone()),
            (
                "LOG_FORMAT",
                match self.log_format {
                    crate::logging::LogFormat::Text => "text",
                    crate::logging::LogFormat::Json => "json",
                }
                .to_string(),
            ),
        ]
    }

    /// `NAME=value  # origin` lines for `check-config`.
    pub fn render(&self, sources: &Sources) -> String {
        let effective = self.effective();
        let width = effective
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .max()
            .unwrap_or(0)
            + 2;
        let mut out = String::new();
        for (name, value) in effective {
            let line = format!("{name}={value}");
            out.push_str(&format!(
                "{line:<width$}# {}\n",
                sources.origin(name),
                width = width
            ));
        }
        out
    }

    /// Whether routes come from ClearML.
    pub fn clearml_enabled(&self) -> bool {
        self.clearml.api_host.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sources(env: &[(&str, &str)]) -> Sources {
        Sources::new(
            Vec::new(),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            None,
        )
        .expect("sources")
    }

    fn parse(env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::from_sources(&sources(env))
    }

    fn ok(env: &[(&str, &str)]) -> Config {
        parse(env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error text for `env`, which must be refused.
    fn err(env: &[(&str, &str)]) -> String {
        match parse(env) {
            Ok(c) => panic!("accepted {env:?}: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    const CLEARML: &[(&str, &str)] = &[
        ("CLEARML_API_HOST", "http://clearml:8008"),
        ("CLEARML_API_ACCESS_KEY", "AK"),
        ("CLEARML_API_SECRET_KEY", "supersecretvalue"),
        ("TCP_ROUTER_ADDRESS", "203.0.113.7"),
        (
            "AUTH_BASE64_JWKS_KEY",
            "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2",
        ),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = CLEARML.to_vec();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn empty_environment_gives_the_documented_defaults() {
        let c = ok(&[]);
        assert!(c.clearml.api_host.is_none());
        assert!(c.clearml.ssl_verify);
        assert!(c.clearml.listen_queues.is_empty());
        assert_eq!(c.clearml.poll_interval, Duration::from_secs(2));
        assert_eq!((c.tcp.port_start, c.tcp.port_end), (30000, 30999));
        assert_eq!(c.tcp.port_grace, Duration::from_secs(60));
        assert_eq!(
            c.router.max_endpoints_per_task,
            DEFAULT_MAX_ENDPOINTS_PER_TASK
        );
        assert_eq!(c.tcp.allowed_upstreams.len(), 4);
        assert_eq!(c.datapath.kind, DatapathKind::Ebpf(AttachMode::Auto));
        assert_eq!(c.datapath.bpffs, PathBuf::from("/sys/fs/bpf/task-router"));
        assert_eq!(c.datapath.max_connections, 262_144);
        assert_eq!(
            c.datapath.conntrack_pressure,
            crate::datapath::Pressure::default()
        );
        assert_eq!(c.http.server_port, 8080);
        assert_eq!(c.http.mode, HttpMode::Path);
        assert!(c.auth.enabled && c.auth.secure_cookie);
        assert_eq!(c.auth.cookie_name, "clearml_token_basic");
        assert_eq!(c.auth.algorithm, "HS256");
        assert!(!c.nginx.managed);
        assert_eq!(c.nginx.reload_cmd, "nginx -s reload");
        assert_eq!(c.admin.addr, "127.0.0.1:9180".parse().unwrap());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/task-router"));
        assert_eq!(c.log_level, "info");
        assert!(!c.router.name.is_empty());
    }

    #[test]
    fn every_default_in_env_vars_parses() {
        // The defaults the table documents are the ones the parser uses.
        let explicit: Vec<(&str, &str)> = ENV_VARS
            .iter()
            .filter(|v| !v.default.is_empty())
            .map(|v| (v.name, v.default))
            .collect();
        let a = ok(&explicit);
        let b = ok(&[]);
        assert_eq!(a.effective(), b.effective());
    }

    #[test]
    fn every_variable_is_shown_by_check_config_once() {
        let c = ok(&[]);
        let shown: Vec<_> = c.effective().into_iter().map(|(n, _)| n).collect();
        let listed: Vec<_> = ENV_VARS.iter().map(|v| v.name).collect();
        assert_eq!(shown, listed);
    }

    #[test]
    fn clearml_variables_are_read() {
        let c = ok(&with(&[
            ("SSL_VERIFY", "false"),
            ("LISTEN_QUEUE_NAME", "gpu, cpu  services"),
            ("ROUTER_POLL_INTERVAL", "500ms"),
            ("ROUTER_API_TIMEOUT", "3"),
            ("ROUTER_NAME", "edge-1"),
            ("ROUTER_URL", "https://router.example.com/"),
            ("TCP_PORT_START", "10000"),
            ("TCP_PORT_END", "10010"),
            ("ROUTER_PORT_GRACE", "1m"),
        ]));
        assert_eq!(c.clearml.api_host.as_deref(), Some("http://clearml:8008"));
        assert_eq!(c.clearml.access_key, "AK");
        assert_eq!(c.clearml.secret_key, "supersecretvalue");
        assert!(!c.clearml.ssl_verify);
        assert_eq!(c.clearml.listen_queues, ["gpu", "cpu", "services"]);
        assert_eq!(c.clearml.poll_interval, Duration::from_millis(500));
        assert_eq!(c.clearml.request_timeout, Duration::from_secs(3));
        assert_eq!(c.router.name, "edge-1");
        assert_eq!(c.router.url, "https://router.example.com");
        assert_eq!(c.tcp.router_address, "203.0.113.7");
        assert_eq!((c.tcp.port_start, c.tcp.port_end), (10000, 10010));
        assert_eq!(c.tcp.port_grace, Duration::from_secs(60));
    }

    #[test]
    fn listen_queue_none_or_empty_means_every_queue() {
        for v in ["none", "NONE", "", "  "] {
            let c = ok(&with(&[("LISTEN_QUEUE_NAME", v)]));
            assert!(c.clearml.listen_queues.is_empty(), "{v:?}");
        }
    }

    #[test]
    fn router_url_defaults_to_the_tcp_address_and_server_port() {
        let c = ok(&with(&[("ROUTER__WEBSERVER__SERVER_PORT", "8010")]));
        assert_eq!(c.router.url, "http://203.0.113.7:8010");
        assert_eq!(c.http.server_port, 8010);
    }

    #[test]
    fn clearml_needs_credentials_and_tcp_address() {
        let e = err(&[
            ("CLEARML_API_HOST", "http://clearml:8008"),
            ("AUTH_ENABLED", "false"),
        ]);
        assert!(e.contains("CLEARML_API_ACCESS_KEY is required"), "{e}");
        assert!(e.contains("CLEARML_API_SECRET_KEY is required"), "{e}");
        assert!(e.contains("TCP_ROUTER_ADDRESS is required"), "{e}");
        assert!(e.contains("3 problems"), "{e}");
    }

    #[test]
    fn auth_key_is_required_when_auth_serves_routes() {
        let mut env = CLEARML.to_vec();
        env.retain(|(k, _)| *k != "AUTH_BASE64_JWKS_KEY");
        let e = err(&env);
        assert!(e.contains("AUTH_BASE64_JWKS_KEY is required"), "{e}");
        env.push(("AUTH_ENABLED", "false"));
        ok(&env);
    }

    #[test]
    fn datapath_and_interfaces() {
        let c = ok(&[
            ("ROUTER_DATAPATH", "tc"),
            ("ROUTER_INTERFACES", "eth0, veth1:xdp-generic eth2:XDP"),
            ("ROUTER_BPFFS", "/sys/fs/bpf/other"),
            ("ROUTER_MAX_CONNECTIONS", "1024"),
            ("ROUTER_CONNTRACK_PRESSURE", " 95 , 70 "),
            ("ROUTER_CONNTRACK_MIN_IDLE", "2s"),
            ("ROUTER_ADDRESSES", "10.0.0.1 10.0.0.2"),
        ]);
        assert_eq!(
            c.datapath.conntrack_pressure,
            crate::datapath::Pressure {
                high_percent: 95,
                low_percent: 70,
                min_idle: Duration::from_secs(2),
            }
        );
        let effective = c.effective();
        assert!(effective.contains(&("ROUTER_CONNTRACK_PRESSURE", "95,70".to_string())));
        assert!(effective.contains(&("ROUTER_CONNTRACK_MIN_IDLE", "2s".to_string())));
        assert_eq!(c.datapath.kind, DatapathKind::Ebpf(AttachMode::Tc));
        assert_eq!(
            c.datapath.interfaces,
            vec![
                ("eth0".to_string(), None),
                ("veth1".to_string(), Some(AttachMode::XdpGeneric)),
                ("eth2".to_string(), Some(AttachMode::Xdp)),
            ]
        );
        assert_eq!(c.datapath.bpffs, PathBuf::from("/sys/fs/bpf/other"));
        assert_eq!(c.datapath.max_connections, 1024);
        assert_eq!(c.datapath.router_addresses.len(), 2);
        assert_eq!(
            ok(&[("ROUTER_DATAPATH", "nginx")]).datapath.kind,
            DatapathKind::Nginx
        );
    }

    #[test]
    fn http_auth_nginx_admin_variables() {
        let c = ok(&[
            ("ROUTER_HTTP_MODE", "subdomain"),
            ("ROUTER_DOMAIN", "Apps.Example.com"),
            ("AUTH_ENABLED", "no"),
            ("AUTH_COOKIE_NAME", "allegro_token"),
            ("AUTH_SECURE_ENABLED", "0"),
            (
                "AUTH_BASE64_JWKS_KEY",
                "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2",
            ),
            ("AUTH_JWT_ALGORITHM", "hs512"),
            ("AUTH_LOGIN_URL", "https://app.clear.ml/login"),
            ("NGINX_MANAGED", "true"),
            ("NGINX_BINARY", "/usr/sbin/nginx"),
            ("NGINX_CONF_DIR", "/tmp/conf.d"),
            ("NGINX_RELOAD_CMD", "docker kill -s HUP proxy"),
            ("NGINX_TEST_CMD", "true"),
            ("ROUTER_ADMIN_ADDR", "0.0.0.0:9999"),
            ("ROUTER_ADMIN_ALLOW", "10.1.0.0/16 192.168.5.5"),
            ("ROUTER_STATE_DIR", "/tmp/state"),
            ("ROUTER_ROUTES_FILE", "/etc/task-router/routes.toml"),
            ("EXTRA_BASH_COMMAND", "echo hi"),
            ("LOGGER_LEVEL", "WARNING"),
            ("LOG_FORMAT", "json"),
        ]);
        assert_eq!(c.http.mode, HttpMode::Subdomain);
        assert_eq!(c.http.domain.as_deref(), Some("apps.example.com"));
        assert!(!c.auth.enabled && !c.auth.secure_cookie);
        assert_eq!(c.auth.cookie_name, "allegro_token");
        assert_eq!(c.auth.hmac_key, b"secret-key-for-tests-123456");
        assert_eq!(c.auth.algorithm, "HS512");
        assert_eq!(
            c.auth.login_url.as_deref(),
            Some("https://app.clear.ml/login")
        );
        assert!(c.nginx.managed);
        assert_eq!(c.nginx.binary, PathBuf::from("/usr/sbin/nginx"));
        assert_eq!(c.nginx.conf_dir, PathBuf::from("/tmp/conf.d"));
        assert_eq!(c.nginx.reload_cmd, "docker kill -s HUP proxy");
        assert_eq!(c.nginx.test_cmd, "true");
        assert_eq!(c.admin.addr, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(c.admin.allow.len(), 2);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/state"));
        assert_eq!(
            c.routes_file,
            Some(PathBuf::from("/etc/task-router/routes.toml"))
        );
        assert_eq!(c.extra_bash_command.as_deref(), Some("echo hi"));
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.log_format, crate::logging::LogFormat::Json);
    }

    #[test]
    fn bad_values_name_variable_value_and_expectation() {
        let cases: &[(&str, &str, &str)] = &[
            ("CLEARML_API_HOST", "clearml:8008", "http:// or https://"),
            ("SSL_VERIFY", "maybe", "true or false"),
            ("ROUTER_POLL_INTERVAL", "10ms", "between 100ms and 1h"),
            ("ROUTER_POLL_INTERVAL", "fast", "duration"),
            ("ROUTER_API_TIMEOUT", "-1", "duration"),
            ("ROUTER_NAME", "has space", "A-Z a-z 0-9"),
            ("ROUTER_URL", "ftp://x", "http://"),
            ("ROUTER_URL", "http://bad host/", "URL"),
            (
                "TCP_ROUTER_ADDRESS",
                "not_a host",
                "IP address or a host name",
            ),
            ("TCP_PORT_START", "0", "port 1-65535"),
            ("TCP_PORT_END", "70000", "port 1-65535"),
            ("ROUTER_ALLOWED_UPSTREAMS", "10.0.0.0/33", "IPv4 CIDRs"),
            ("ROUTER_PORT_GRACE", "2d", "duration"),
            (
                "ROUTER_MAX_ENDPOINTS_PER_TASK",
                "0",
                "number of routes between 1 and 65535",
            ),
            (
                "ROUTER_MAX_ENDPOINTS_PER_TASK",
                "70000",
                "number of routes between 1 and 65535",
            ),
            (
                "ROUTER_MAX_ENDPOINTS_PER_TASK",
                "many",
                "number of routes between 1 and 65535",
            ),
            (
                "ROUTER_DATAPATH",
                "dpdk",
                "auto, xdp, xdp-generic, tc or nginx",
            ),
            ("ROUTER_INTERFACES", "eth0:fast", "unknown mode"),
            (
                "ROUTER_INTERFACES",
                "averyveryverylongname",
                "interface name",
            ),
            ("ROUTER_BPFFS", "relative/dir", "absolute path"),
            ("ROUTER_MAX_CONNECTIONS", "10", "between 1024 and 16777216"),
            ("ROUTER_CONNTRACK_PRESSURE", "90", "two numbers"),
            (
                "ROUTER_CONNTRACK_PRESSURE",
                "80,90",
                "low 90 is not below high 80",
            ),
            ("ROUTER_CONNTRACK_PRESSURE", "90,90", "not below"),
            (
                "ROUTER_CONNTRACK_PRESSURE",
                "101,80",
                "\"101\" is not a percentage 1-100",
            ),
            ("ROUTER_CONNTRACK_PRESSURE", "90,0", "percentage 1-100"),
            ("ROUTER_CONNTRACK_MIN_IDLE", "100ms", "between 1s and 1h"),
            ("ROUTER_CONNTRACK_MIN_IDLE", "soon", "duration"),
            ("ROUTER_ADDRESSES", "10.0.0.300", "IPv4 addresses"),
            ("ROUTER_NAT_SOURCE_PORTS", "61000", "has no `-`"),
            (
                "ROUTER_NAT_SOURCE_PORTS",
                "80-2000",
                "not a port 1024-65535",
            ),
            (
                "ROUTER_NAT_SOURCE_PORTS",
                "62000-62010",
                "fewer than 64 ports",
            ),
            ("ROUTER__WEBSERVER__SERVER_PORT", "http", "port 1-65535"),
            ("ROUTER_HTTP_MODE", "host", "path or subdomain"),
            ("ROUTER_DOMAIN", "-bad-.example", "DNS domain"),
            ("AUTH_ENABLED", "2", "true or false"),
            ("AUTH_COOKIE_NAME", "a;b", "cookie name"),
            ("AUTH_SECURE_ENABLED", "sure", "true or false"),
            ("AUTH_JWT_ALGORITHM", "none", "HS256, HS384 or HS512"),
            ("AUTH_LOGIN_URL", "login", "http://"),
            ("NGINX_MANAGED", "y e s", "true or false"),
            ("ROUTER_ADMIN_ADDR", "localhost", "address:port"),
            ("ROUTER_ADMIN_ALLOW", "everyone", "IPv4 CIDRs"),
            ("ROUTER_STATE_DIR", "state", "absolute path"),
            ("LOGGER_LEVEL", "loud=[", "tracing filter"),
            ("LOG_FORMAT", "xml", "text or json"),
        ];
        for (var, value, expected) in cases {
            let e = err(&[(var, value)]);
            assert!(e.contains(var), "{var}: {e}");
            assert!(
                e.contains(&format!("{value:?}")) || e.contains(value),
                "{var}: value missing: {e}"
            );
            assert!(e.contains(expected), "{var}: expectation missing: {e}");
        }
    }

    #[test]
    fn max_endpoints_per_task_is_read_and_bounded() {
        let c = ok(&[("ROUTER_MAX_ENDPOINTS_PER_TASK", " 3 ")]);
        assert_eq!(c.router.max_endpoints_per_task, 3);
        assert_eq!(
            ok(&[("ROUTER_MAX_ENDPOINTS_PER_TASK", "65535")])
                .router
                .max_endpoints_per_task,
            65535
        );
        // An empty value is the default, as for every variable.
        assert_eq!(
            ok(&[("ROUTER_MAX_ENDPOINTS_PER_TASK", "")])
                .router
                .max_endpoints_per_task,
            DEFAULT_MAX_ENDPOINTS_PER_TASK
        );
        let e = err(&[("ROUTER_MAX_ENDPOINTS_PER_TASK", "-1")]);
        assert!(
            e.contains("ROUTER_MAX_ENDPOINTS_PER_TASK=\"-1\"")
                && e.contains("expected a number of routes between 1 and 65535"),
            "{e}"
        );
    }

    #[test]
    fn bad_secret_values_are_masked_in_errors() {
        let e = err(&[("AUTH_BASE64_JWKS_KEY", "%%%not-base64-secret%%%")]);
        assert!(e.contains("AUTH_BASE64_JWKS_KEY"), "{e}");
        assert!(!e.contains("not-base64-secret"), "{e}");
    }

    #[test]
    fn nat_source_ports_default_set_and_kept_out_of_the_tcp_range() {
        let c = ok(&[]);
        assert_eq!(c.datapath.nat_source_ports, (61000, 65535));
        let c = ok(&[("ROUTER_NAT_SOURCE_PORTS", "40000 - 40999")]);
        assert_eq!(c.datapath.nat_source_ports, (40000, 40999));
        let e = err(&[("ROUTER_NAT_SOURCE_PORTS", "30900-31100")]);
        assert!(
            e.contains("ROUTER_NAT_SOURCE_PORTS=30900-31100 overlaps the TCP range"),
            "{e}"
        );
    }

    #[test]
    fn cross_field_conflicts() {
        let e = err(&[("TCP_PORT_START", "31000"), ("TCP_PORT_END", "30000")]);
        assert!(
            e.contains("TCP_PORT_START=31000 is above TCP_PORT_END=30000"),
            "{e}"
        );
        let e = err(&[("ROUTER__WEBSERVER__SERVER_PORT", "30500")]);
        assert!(e.contains("inside the TCP range"), "{e}");
        let e = err(&[("ROUTER_HTTP_MODE", "subdomain")]);
        assert!(e.contains("ROUTER_DOMAIN is required"), "{e}");
        let e = err(&[("ROUTER_ADMIN_ADDR", "127.0.0.1:30001")]);
        assert!(
            e.contains("ROUTER_ADMIN_ADDR=127.0.0.1:30001 uses a port inside"),
            "{e}"
        );
        let e = err(&[("ROUTER_INTERFACES", "eth0,eth0:tc")]);
        assert!(e.contains("names eth0 twice"), "{e}");
    }

    #[test]
    fn several_errors_are_reported_together() {
        let e = err(&[
            ("TCP_PORT_START", "x"),
            ("SSL_VERIFY", "y"),
            ("LOG_FORMAT", "z"),
        ]);
        assert!(e.contains("3 problems"), "{e}");
    }

    #[test]
    fn env_file_format() {
        let text = "# comment\n\nCLEARML_API_HOST=http://a:8008\nexport ROUTER_NAME = r1 # trailing\n\
                    ROUTER_URL=\"https://x.example.com/#frag\"\nEXTRA_BASH_COMMAND='echo \"hi\" # not a comment'\n\
                    EMPTY=\n";
        let entries = parse_env_file(text).expect("parse");
        let map: BTreeMap<_, _> = entries.into_iter().map(|(_, k, v)| (k, v)).collect();
        assert_eq!(map["CLEARML_API_HOST"], "http://a:8008");
        assert_eq!(map["ROUTER_NAME"], "r1");
        assert_eq!(map["ROUTER_URL"], "https://x.example.com/#frag");
        assert_eq!(map["EXTRA_BASH_COMMAND"], "echo \"hi\" # not a comment");
        assert_eq!(map["EMPTY"], "");
        assert_eq!(parse_env_file("JUSTAKEY\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("A=1\nB=\"open\n").unwrap_err().0, 2);
        assert_eq!(parse_env_file("1A=x").unwrap_err().0, 1);
        let (line, reason) = parse_env_file("A=1\nB=\"x\" y\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(
            reason.contains("after the closing double quote of B"),
            "{reason}"
        );
        assert_eq!(parse_env_file("B='x'  # comment").unwrap()[0].2, "x");
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "ROUTER_NAME=from-file\nTCP_PORT_START=20000\nTCP_PORT_END=20100\nSOMETHING_ELSE=1\nLISTEN_QUEUE_NAME=gpu"
        )
        .expect("write");
        let s = Sources::new(
            vec![("ROUTER_NAME".into(), "from-flag".into())],
            vec![
                ("ROUTER_NAME".to_string(), "from-env".to_string()),
                ("TCP_PORT_START".to_string(), "20001".to_string()),
                ("LISTEN_QUEUE_NAME".to_string(), "".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ],
            Some(file.path()),
        )
        .expect("sources");
        let c = Config::from_sources(&s).expect("config");
        assert_eq!(c.router.name, "from-flag");
        assert_eq!(c.tcp.port_start, 20001);
        assert_eq!(c.tcp.port_end, 20100);
        // An empty environment variable is set: it wins over the file and means "all queues".
        assert!(c.clearml.listen_queues.is_empty());
        assert_eq!(s.origin("ROUTER_NAME"), Origin::Flag);
        assert_eq!(s.origin("TCP_PORT_START"), Origin::Env);
        assert!(matches!(
            s.origin("TCP_PORT_END"),
            Origin::File { line: 3, .. }
        ));
        assert_eq!(s.origin("SSL_VERIFY"), Origin::Default);
        assert!(s.warnings.iter().any(|w| w.contains("SOMETHING_ELSE")));
    }

    #[test]
    fn unknown_flag_variable_and_unreadable_file_are_errors() {
        let e = Sources::new(vec![("NOPE".into(), "1".into())], Vec::new(), None).unwrap_err();
        assert!(e.to_string().contains("NOPE is not a variable"), "{e}");
        let e =
            Sources::new(Vec::new(), Vec::new(), Some(Path::new("/nonexistent/env"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/env"), "{e}");
    }

    #[test]
    fn file_errors_name_the_line() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "A=1\nthis is not a line").expect("write");
        let e = Sources::new(Vec::new(), Vec::new(), Some(file.path())).unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
    }

    #[test]
    fn render_masks_secrets_and_shows_origins() {
        let s = sources(&with(&[]));
        let c = Config::from_sources(&s).expect("config");
        let text = c.render(&s);
        assert!(!text.contains("supersecretvalue"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(
            text.contains("CLEARML_API_SECRET_KEY=*** (16 chars)"),
            "{text}"
        );
        assert!(text.contains("# environment"), "{text}");
        assert!(text.contains("TCP_PORT_START=30000"), "{text}");
        assert_eq!(text.lines().count(), ENV_VARS.len());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://[::1]:8080/").as_deref(),
            Ok("http://[::1]:8080")
        );
        assert!(parse_http_url("http://user:pw@host").is_err());
        assert!(parse_http_url("http://host:0").is_err());
        assert!(parse_http_url("https://host/a b").is_err());
        assert_eq!(
            parse_http_url("https://r.example.com/prefix/").as_deref(),
            Ok("https://r.example.com/prefix")
        );
    }
}

#[cfg(test)]
mod fuzz;
