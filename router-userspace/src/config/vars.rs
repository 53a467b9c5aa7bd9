//! Every variable task-router reads, declared once: name, default, help, documentation section,
//! parser and the field it fills. The reader, `--help`, `check-config` and the documentation
//! table are all made from this list; adding a variable is one entry here plus its field.

use std::time::Duration;

use super::parse::{self, empty_or, unless_empty};
use super::sections::{DEFAULT_ALLOWED_UPSTREAMS, RouterConfig};
use super::show::{self, Shown};
use super::spec::Section::{Admin, Auth, Clearml, Daemon, Datapath, Http, Nginx, Router, Tcp};
use super::spec::{EnvVar, Field, field};
use crate::client_allow::ClientAllow;

const MS_100: Duration = Duration::from_millis(100);
const SECOND: Duration = Duration::from_secs(1);
const MINUTES_5: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

/// Every variable `task-router` reads, in the order `check-config` shows them.
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        section: Clearml,
        name: "CLEARML_API_HOST",
        default: "",
        help: "ClearML API server URL (http://host:8008); unset = no ClearML, routes file only",
        secret: false,
        alias: None,
        expected: "an http:// or https:// URL",
        field: field!(clearml.api_host, |s| unless_empty(s, parse::parse_http_url)),
    },
    EnvVar {
        section: Clearml,
        name: "CLEARML_API_ACCESS_KEY",
        default: "",
        help: "API access key (required with CLEARML_API_HOST)",
        secret: false,
        alias: None,
        expected: "",
        field: field!(clearml.access_key, parse::text),
    },
    EnvVar {
        section: Clearml,
        name: "CLEARML_API_SECRET_KEY",
        default: "",
        help: "API secret key (required with CLEARML_API_HOST)",
        secret: true,
        alias: None,
        expected: "",
        field: field!(clearml.secret_key, parse::text, |key: &String| show::mask(
            key
        )),
    },
    EnvVar {
        section: Clearml,
        name: "SSL_VERIFY",
        default: "true",
        help: "verify the API server's TLS certificate (against the system store and built-in \
               roots); a path = also trust that CA bundle, as the SDK's verify_certificate",
        secret: false,
        alias: None,
        expected: "true, false or the absolute path of a CA bundle (PEM file or directory)",
        field: Field {
            read: |cfg, s| {
                (cfg.clearml.ssl_verify, cfg.clearml.ssl_verify_bundle) = parse::tls_verify(s)?;
                Ok(())
            },
            show: |cfg| match &cfg.clearml.ssl_verify_bundle {
                Some(path) => path.shown(),
                None => cfg.clearml.ssl_verify.shown(),
            },
        },
    },
    EnvVar {
        section: Clearml,
        name: "CLEARML_API_CA_BUNDLE",
        default: "",
        help: "a CA bundle (PEM file or directory) to trust besides the system store and built-in \
               roots, for a server with a private CA",
        secret: false,
        alias: None,
        expected: "the absolute path of a CA bundle (PEM file or directory)",
        field: field!(clearml.ca_bundle, |s| unless_empty(s, parse::absolute_path)),
    },
    EnvVar {
        section: Clearml,
        name: "LISTEN_QUEUE_NAME",
        default: "",
        help: "queues whose tasks to serve, separated by commas or spaces (a task the open-source \
               Kubernetes glue moved to k8s_scheduler counts as its user's queue); empty or \
               `none` = all",
        secret: false,
        alias: None,
        expected: "",
        field: field!(clearml.listen_queues, parse::queue_names),
    },
    EnvVar {
        section: Clearml,
        name: "ROUTER_POLL_INTERVAL",
        default: "2s",
        help: "how often tasks are synced (`2s`, `500ms`, `1m`)",
        secret: false,
        alias: None,
        expected: "a duration between 100ms and 1h (`2s`, `500ms`)",
        field: field!(clearml.poll_interval, |s| {
            parse::duration_between(s, MS_100, HOUR)
        }),
    },
    EnvVar {
        section: Clearml,
        name: "ROUTER_API_TIMEOUT",
        default: "10s",
        help: "deadline of one ClearML API call",
        secret: false,
        alias: None,
        expected: "a duration between 100ms and 5m",
        field: field!(clearml.request_timeout, |s| {
            parse::duration_between(s, MS_100, MINUTES_5)
        }),
    },
    EnvVar {
        section: Router,
        name: "ROUTER_NAME",
        default: "",
        help: "this router's unique name, written on tasks it serves (default: the host name)",
        secret: false,
        alias: None,
        expected: "1-64 characters of A-Z a-z 0-9 . _ -",
        field: field!(router.name, |s: &str| if s.is_empty() {
            Ok(RouterConfig::default_name())
        } else {
            parse::router_name(s)
        }),
    },
    EnvVar {
        section: Router,
        name: "ROUTER_URL",
        default: "",
        help: "external base URL of HTTP endpoints (default http://TCP_ROUTER_ADDRESS:SERVER_PORT)",
        secret: false,
        alias: None,
        expected: "an http:// or https:// URL (https://router.example.com)",
        // Empty until the reader computes the default from TCP_ROUTER_ADDRESS and the port.
        field: field!(router.url, |s| empty_or(s, parse::parse_http_url)),
    },
    EnvVar {
        section: Tcp,
        name: "TCP_ROUTER_ADDRESS",
        default: "",
        help: "address written back as a TCP endpoint's external_address (required with ClearML)",
        secret: false,
        alias: Some("ROUTER__STREAM__EXTERNAL_URL"),
        expected: "an IP address or a host name",
        field: field!(tcp.router_address, |s| empty_or(s, parse::host)),
    },
    EnvVar {
        section: Tcp,
        name: "TCP_PORT_START",
        default: "30000",
        help: "first port of the TCP range",
        secret: false,
        alias: Some("ROUTER__STREAM__PORT_RANGE__START"),
        expected: "a port 1-65535",
        field: field!(tcp.port_start, parse::port),
    },
    EnvVar {
        section: Tcp,
        name: "TCP_PORT_END",
        default: "30999",
        help: "last port of the TCP range",
        secret: false,
        alias: Some("ROUTER__STREAM__PORT_RANGE__END"),
        expected: "a port 1-65535",
        field: field!(tcp.port_end, parse::port),
    },
    EnvVar {
        section: Tcp,
        name: "ROUTER_ALLOWED_UPSTREAMS",
        default: DEFAULT_ALLOWED_UPSTREAMS,
        help: "CIDRs tasks may be forwarded to (loopback, link-local, multicast never are)",
        secret: false,
        alias: None,
        expected: "IPv4 CIDRs separated by commas or spaces (10.0.0.0/8,192.168.0.0/16)",
        field: field!(tcp.allowed_upstreams, parse::cidrs),
    },
    EnvVar {
        section: Tcp,
        name: "ROUTER_TCP_CLIENT_ALLOW",
        default: "",
        help: "CIDRs of the clients that may connect to TCP routes (every port of the range); a \
               routes-file entry's `allow` or a task's `_ROUTER_CLIENT_ALLOW` key may narrow it \
               for one route; empty = all",
        secret: false,
        alias: None,
        expected: "IPv4 CIDRs or addresses separated by commas or spaces, without host bits \
                   (10.8.0.0/16,192.0.2.7)",
        field: field!(tcp.client_allow, ClientAllow::parse),
    },
    EnvVar {
        section: Tcp,
        name: "ROUTER_PORT_GRACE",
        default: "60s",
        help: "how long a released TCP port rests before it is handed out again",
        secret: false,
        alias: None,
        expected: "a duration up to 1 day (`60s`, `5m`)",
        field: field!(tcp.port_grace, |s| {
            parse::duration_between(s, Duration::ZERO, DAY)
        }),
    },
    EnvVar {
        section: Tcp,
        name: "ROUTER_PRESERVE_CLIENT_IP",
        default: "off",
        help: "whether tasks see the client's address (destination-only NAT): off, auto (where \
               the task's replies come back through the router: a backend directly on a local \
               veth or bridge) or on (everywhere, warning where unsafe); routes-file entries may \
               set their own `preserve_client_ip`",
        secret: false,
        alias: None,
        expected: "off, auto or on",
        field: field!(tcp.preserve_client_ip, parse::preserve_client_ip),
    },
    EnvVar {
        section: Router,
        name: "ROUTER_MAX_ENDPOINTS_PER_TASK",
        default: "16",
        help: "routes one task may hold, TCP and HTTP counted together; its further requests are refused",
        secret: false,
        alias: None,
        expected: "a number of routes between 1 and 65535",
        field: field!(router.max_endpoints_per_task, |s| parse::number_in(
            s,
            1..=65535
        )),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_DATAPATH",
        default: "auto",
        help: "TCP datapath: auto, xdp, xdp-generic, tc (eBPF) or nginx (stream fallback)",
        secret: false,
        alias: None,
        expected: "auto, xdp, xdp-generic, tc or nginx",
        field: field!(datapath.kind, parse::datapath),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_INTERFACES",
        default: "",
        help: "interfaces to attach to, optionally with a mode: `eth0,veth1:tc`",
        secret: false,
        alias: None,
        expected: "interface names, each optionally with :auto, :xdp, :xdp-generic or :tc, separated by commas",
        field: field!(datapath.interfaces, parse::interfaces),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_BPFFS",
        default: "/sys/fs/bpf/task-router",
        help: "bpffs directory where maps and links are pinned",
        secret: false,
        alias: None,
        expected: "an absolute path under a bpffs mount",
        field: field!(datapath.bpffs, parse::absolute_path),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_DETACH_ON_EXIT",
        default: "false",
        help: "on exit, detach the programs and unpin everything (default: keep forwarding)",
        secret: false,
        alias: None,
        expected: "true or false",
        field: field!(detach_on_exit, parse::boolean),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_MAX_CONNECTIONS",
        default: "262144",
        help: "size of the connection table",
        secret: false,
        alias: None,
        expected: "a number between 1024 and 16777216",
        field: field!(datapath.max_connections, |s| parse::number_in(
            s,
            1024..=16_777_216
        )),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_CONNTRACK_PRESSURE",
        default: "90,80",
        help: "`high,low` percent of the connection table: from high, idle connections are evicted \
               (longest idle first) down to low",
        secret: false,
        alias: None,
        expected: "`high,low` percent of the connection table, both 1-100, low below high",
        field: Field {
            read: |cfg, s| {
                let pressure = &mut cfg.datapath.conntrack_pressure;
                (pressure.high_percent, pressure.low_percent) = parse::pressure(s)?;
                Ok(())
            },
            show: |cfg| {
                let pressure = &cfg.datapath.conntrack_pressure;
                show::pair(pressure.high_percent, pressure.low_percent)
            },
        },
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_CONNTRACK_MIN_IDLE",
        default: "30s",
        help: "an established connection idle for less than this is never evicted under pressure",
        secret: false,
        alias: None,
        expected: "a duration between 1s and 1h",
        field: field!(datapath.conntrack_pressure.min_idle, |s| {
            parse::duration_between(s, SECOND, HOUR)
        }),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_ADDRESSES",
        default: "",
        help: "the router's own IPv4 addresses (NAT source, never an upstream); empty = discovered",
        secret: false,
        alias: None,
        expected: "IPv4 addresses separated by commas or spaces",
        field: field!(datapath.router_addresses, parse::ipv4_addresses),
    },
    EnvVar {
        section: Datapath,
        name: "ROUTER_NAT_SOURCE_PORTS",
        default: "auto",
        help: "source ports toward tasks when a client's own port is taken or inside the host's \
               ephemeral range (net.ipv4.ip_local_port_range); `auto` = every port from 1024 \
               outside that range and the TCP range; a range must lie outside both",
        secret: false,
        alias: None,
        expected: "`auto`, or a port range `first-last` of at least 64 ports, 1024-65535",
        field: field!(datapath.nat_source_ports, parse::nat_ports),
    },
    EnvVar {
        section: Http,
        name: "ROUTER__WEBSERVER__SERVER_PORT",
        default: "8010",
        help: "port nginx listens on for HTTP routes (8010, ClearML's router example: 8080, \
               8008 and 8081 are the open-source server's own on the same host)",
        secret: false,
        alias: None,
        expected: "a port 1-65535",
        field: field!(http.server_port, parse::port),
    },
    EnvVar {
        section: Http,
        name: "ROUTER_HTTP_MODE",
        default: "path",
        help: "HTTP routes as /service/<task>/ paths (`path`) or <task>.ROUTER_DOMAIN (`subdomain`)",
        secret: false,
        alias: None,
        expected: "path or subdomain",
        field: field!(http.mode, parse::http_mode),
    },
    EnvVar {
        section: Http,
        name: "ROUTER_DOMAIN",
        default: "",
        help: "domain of subdomain-mode routes (required for ROUTER_HTTP_MODE=subdomain)",
        secret: false,
        alias: None,
        expected: "a DNS domain (router.example.com)",
        field: field!(http.domain, |s| unless_empty(s, parse::domain)),
    },
    EnvVar {
        section: Auth,
        name: "AUTH_ENABLED",
        default: "true",
        help: "require a valid ClearML token (cookie or Bearer) on routed HTTP requests",
        secret: false,
        alias: None,
        expected: "true or false",
        field: field!(auth.enabled, parse::boolean),
    },
    EnvVar {
        section: Auth,
        name: "AUTH_COOKIE_NAME",
        default: "clearml_token_basic",
        help: "the ClearML auth cookie: compose clearml_token_basic, Helm clearml-token-k8s; \
               several separated by commas are all read (the first is the one set)",
        secret: false,
        alias: None,
        expected: "cookie names (letters, digits, - _ .) separated by commas",
        field: field!(auth.cookie_name, parse::cookie_names),
    },
    EnvVar {
        section: Auth,
        name: "AUTH_SECURE_ENABLED",
        default: "true",
        help: "set the Secure attribute on cookies the router sets",
        secret: false,
        alias: Some("ROUTER__HTTP__AUTHORIZATION__COOKIE__SECURE"),
        expected: "true or false",
        field: field!(auth.secure_cookie, parse::boolean),
    },
    EnvVar {
        section: Auth,
        name: "AUTH_BASE64_JWKS_KEY",
        default: "",
        help: "the API server's token secret (CLEARML__secure__auth__token_secret) as written, \
               or its JWKS `k` (base64url): both forms are tried",
        secret: true,
        alias: None,
        expected: "the token secret or its JWKS `k`, at least 16 characters",
        field: field!(
            auth.hmac_key,
            |s| empty_or(s, parse::token_secret),
            |key: &Vec<u8>| show::masked_key_forms(key)
        ),
    },
    EnvVar {
        section: Auth,
        name: "AUTH_JWT_ALGORITHM",
        default: "HS256",
        help: "token signature algorithm: HS256, HS384 or HS512",
        secret: false,
        alias: None,
        expected: "HS256, HS384 or HS512",
        field: field!(auth.algorithm, parse::jwt_algorithm),
    },
    EnvVar {
        section: Auth,
        name: "AUTH_LOGIN_URL",
        default: "",
        help: "where unauthenticated browsers are redirected; empty = plain 401",
        secret: false,
        alias: None,
        expected: "an http:// or https:// URL",
        field: field!(auth.login_url, |s| unless_empty(s, parse::parse_http_url)),
    },
    EnvVar {
        section: Nginx,
        name: "NGINX_MANAGED",
        default: "false",
        help: "start and supervise nginx with a generated main config",
        secret: false,
        alias: None,
        expected: "true or false",
        field: field!(nginx.managed, parse::boolean),
    },
    EnvVar {
        section: Nginx,
        name: "NGINX_BINARY",
        default: "nginx",
        help: "the nginx executable",
        secret: false,
        alias: None,
        expected: "",
        field: field!(nginx.binary, parse::path),
    },
    EnvVar {
        section: Nginx,
        name: "NGINX_CONF_DIR",
        default: "/etc/nginx/conf.d",
        help: "directory the generated nginx files go to",
        secret: false,
        alias: None,
        expected: "",
        field: field!(nginx.conf_dir, parse::path),
    },
    EnvVar {
        section: Nginx,
        name: "NGINX_RELOAD_CMD",
        default: "nginx -s reload",
        help: "command (sh -c) that reloads nginx",
        secret: false,
        alias: None,
        expected: "",
        field: field!(nginx.reload_cmd, parse::text),
    },
    EnvVar {
        section: Nginx,
        name: "NGINX_TEST_CMD",
        default: "nginx -t",
        help: "command (sh -c) that checks the nginx config before it is installed",
        secret: false,
        alias: None,
        expected: "",
        field: field!(nginx.test_cmd, parse::text),
    },
    EnvVar {
        section: Admin,
        name: "ROUTER_ADMIN_ADDR",
        default: "127.0.0.1:9180",
        help: "address of the admin endpoint (health, status, metrics, auth check)",
        secret: false,
        alias: None,
        expected: "an address:port (127.0.0.1:9180)",
        field: field!(admin.addr, parse::socket_addr),
    },
    EnvVar {
        section: Admin,
        name: "ROUTER_ADMIN_ALLOW",
        default: "",
        help: "non-loopback CIDRs allowed to call the admin endpoint",
        secret: false,
        alias: None,
        expected: "IPv4 CIDRs separated by commas or spaces",
        field: field!(admin.allow, parse::cidrs),
    },
    EnvVar {
        section: Daemon,
        name: "ROUTER_STATE_DIR",
        default: "/var/lib/task-router",
        help: "where port allocations, the last route set and the instance lock (one daemon per directory) are kept",
        secret: false,
        alias: None,
        expected: "an absolute path",
        field: field!(state_dir, parse::absolute_path),
    },
    EnvVar {
        section: Daemon,
        name: "ROUTER_ROUTES_FILE",
        default: "",
        help: "static routes file (TOML), reloaded on change",
        secret: false,
        alias: None,
        expected: "",
        field: field!(routes_file, |s| unless_empty(s, parse::path)),
    },
    EnvVar {
        section: Daemon,
        name: "EXTRA_BASH_COMMAND",
        default: "",
        help: "command (bash -c) run once before start; its failure stops start-up",
        secret: false,
        alias: None,
        expected: "",
        field: field!(extra_bash_command, |s| unless_empty(s, parse::text)),
    },
    EnvVar {
        section: Daemon,
        name: "LOGGER_LEVEL",
        default: "info",
        help: "log level (debug, info, warning, error) or a tracing filter; RUST_LOG wins",
        secret: false,
        alias: None,
        expected: "debug, info, warning, error or a tracing filter",
        field: field!(log_level, parse::log_level),
    },
    EnvVar {
        section: Daemon,
        name: "LOG_FORMAT",
        default: "text",
        help: "log format: text or json",
        secret: false,
        alias: None,
        expected: "text or json",
        field: field!(log_format, parse::log_format),
    },
];

/// The [`EnvVar`] named `name`, by its name or its alias.
pub fn env_var(name: &str) -> Option<&'static EnvVar> {
    ENV_VARS
        .iter()
        .find(|v| v.name == name || v.alias == Some(name))
}
