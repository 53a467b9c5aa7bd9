//! The daemon's configuration: ClearML router names and meanings (`runtime.env`), plus
//! task-router's own `ROUTER_*` additions. Sections are plain structs each owner takes by
//! reference; parsing and validation (environment, `--env-file`, CLI flags) live here too.
//!
//! SKELETON: the section types are agreed between owners; the parsing is the control plane's
//! work (issue 4). Add fields where an owner needs them, with the variable named in its doc.

use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
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
    /// `ROUTER_STATE_DIR` (default `/var/lib/task-router`): the local cache of allocations.
    pub state_dir: PathBuf,
    /// `--routes-file`: static routes (TOML), for use without ClearML and for benchmarks.
    pub routes_file: Option<PathBuf>,
    /// `EXTRA_BASH_COMMAND`: run once before start; its failure stops start-up.
    pub extra_bash_command: Option<String>,
    /// `LOGGER_LEVEL` (default `info`).
    pub log_level: String,
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
}

/// This router's identity.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// `ROUTER_NAME` (default: the host name): written as `_ROUTER_NAME<sfx>` on claimed tasks.
    pub name: String,
    /// `ROUTER_URL`: external base URL HTTP endpoints are built on (`https://router.example.com`).
    pub url: String,
}

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
    /// Port reuse grace period after a route ends (default 60 s).
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

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// `ROUTER_DATAPATH` (`auto|xdp|tc|nginx`, default `auto`).
    pub kind: DatapathKind,
    /// `ROUTER_INTERFACES`: interfaces to attach to (`eth0,veth1:tc`).
    pub interfaces: Vec<(String, Option<AttachMode>)>,
    /// `ROUTER_BPFFS` (default `/sys/fs/bpf/task-router`): where maps and links are pinned.
    pub bpffs: PathBuf,
    /// `ROUTER_MAX_CONNECTIONS` (default 262144): connection-table size.
    pub max_connections: u32,
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
