use super::*;
use crate::datapath::options::{AttachMode, NatSourcePorts, Pressure};
use crate::host_ephemeral::PortRange;
use crate::routes::HttpMode;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

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
    assert_eq!(c.datapath.conntrack_pressure, Pressure::default());
    assert_eq!(c.http.server_port, 8010);
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
fn typed_defaults_outside_config_are_the_declared_ones() {
    // The datapath and the route planner have typed defaults for callers that read no
    // variables (tests, benchmarks); they must be what the declarations say.
    let c = Config::default();
    // `auto` both; the configuration adds its TCP range as the router ports to avoid.
    assert_eq!(
        crate::datapath::options::DEFAULT_NAT_SOURCE_PORTS,
        NatSourcePorts::Auto { router_ports: None }
    );
    assert_eq!(
        c.datapath.nat_source_ports,
        NatSourcePorts::Auto {
            router_ports: Some((c.tcp.port_start, c.tcp.port_end))
        }
    );
    assert_eq!(c.datapath.conntrack_pressure, Pressure::default());
    assert_eq!(
        c.router.max_endpoints_per_task,
        DEFAULT_MAX_ENDPOINTS_PER_TASK
    );
    // Each section's Default is its part of the documented defaults.
    assert_eq!(TcpConfig::default().port_start, c.tcp.port_start);
    assert_eq!(AdminConfig::default().addr, c.admin.addr);
}

#[test]
fn every_default_is_shown_as_declared() {
    // What check-config shows for an unset variable is its declared default, so the help,
    // the docs table and check-config agree (the computed and empty ones excepted).
    let c = ok(&[]);
    for ((name, shown), var) in c.effective().into_iter().zip(ENV_VARS) {
        if !var.default.is_empty() {
            assert_eq!(shown, var.default, "{name}");
        }
    }
}

#[test]
fn secret_values_are_never_shown() {
    let key = "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2";
    let c = ok(&with(&[]));
    for var in ENV_VARS.iter().filter(|v| v.secret) {
        let (_, shown) = c
            .effective()
            .into_iter()
            .find(|(n, _)| *n == var.name)
            .expect("shown");
        assert!(shown.starts_with("*** ("), "{}: {shown}", var.name);
        assert!(!shown.contains(key) && !shown.contains("supersecret"));
    }
}

#[test]
fn refused_values_come_before_what_variables_require_of_each_other() {
    let e = err(&[
        ("CLEARML_API_HOST", "http://clearml:8008"),
        ("ROUTER__WEBSERVER__SERVER_PORT", "x"),
    ]);
    let refused = e.find("ROUTER__WEBSERVER__SERVER_PORT=\"x\"").expect(&e);
    let missing = e.find("CLEARML_API_ACCESS_KEY is required").expect(&e);
    assert!(refused < missing, "{e}");
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
fn a_routes_file_without_clearml_needs_no_auth_key_until_it_holds_http_routes() {
    // The README's first example: `run --interface eth0 --routes-file routes.toml`, no ClearML.
    let c = ok(&[("ROUTER_ROUTES_FILE", "/etc/task-router/routes.toml")]);
    let rules = c.routes_file_rules();
    assert!(
        rules.auth_key_missing,
        "auth is on by default and no key is set"
    );
    let with_key = ok(&[
        ("ROUTER_ROUTES_FILE", "/etc/task-router/routes.toml"),
        (
            "AUTH_BASE64_JWKS_KEY",
            "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2",
        ),
    ]);
    assert!(!with_key.routes_file_rules().auth_key_missing);
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
        Pressure {
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
    assert_eq!(c.auth.hmac_key, b"c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2");
    assert_eq!(
        c.auth.hmac_keys(),
        [
            (
                KeyForm::AsWritten,
                b"c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2".to_vec()
            ),
            (KeyForm::JwksK, b"secret-key-for-tests-123456".to_vec())
        ]
    );
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
        (
            "SSL_VERIFY",
            "maybe",
            "true, false or the absolute path of a CA bundle",
        ),
        ("CLEARML_API_CA_BUNDLE", "ca.pem", "absolute path"),
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
        (
            "ROUTER_TCP_CLIENT_ALLOW",
            "10.8.0.0/16,10.9.0.300",
            "\"10.9.0.300\" is not an IPv4 CIDR",
        ),
        (
            "ROUTER_TCP_CLIENT_ALLOW",
            "10.8.1.0/16",
            "did you mean 10.8.0.0/16 or 10.8.1.0/32",
        ),
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
        (
            "ROUTER_NAT_SOURCE_PORTS",
            "61000",
            "is not `auto` and has no `-`",
        ),
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
fn the_tcp_client_allow_list_defaults_to_everyone_and_shows_as_given() {
    let c = ok(&[]);
    assert_eq!(c.tcp.client_allow, crate::client_allow::ClientAllow::Any);
    let c = ok(&[("ROUTER_TCP_CLIENT_ALLOW", "192.0.2.7 10.8.0.0/16")]);
    assert_eq!(c.tcp.client_allow.to_string(), "10.8.0.0/16,192.0.2.7/32");
    assert!(
        c.effective()
            .contains(&("ROUTER_TCP_CLIENT_ALLOW", "10.8.0.0/16,192.0.2.7/32".into()))
    );
}

#[test]
fn a_ca_bundle_comes_from_ssl_verify_as_in_the_sdk_or_its_own_variable() {
    let c = ok(&[("SSL_VERIFY", "/etc/clearml/ca.pem")]);
    assert!(c.clearml.ssl_verify);
    assert_eq!(
        c.clearml.ca_bundles(),
        [("SSL_VERIFY", Path::new("/etc/clearml/ca.pem"))]
    );
    assert!(
        c.effective()
            .contains(&("SSL_VERIFY", "/etc/clearml/ca.pem".into()))
    );
    let c = ok(&[
        ("CLEARML_API_CA_BUNDLE", "/etc/ssl/private-ca"),
        ("SSL_VERIFY", "true"),
    ]);
    assert_eq!(
        c.clearml.ca_bundles(),
        [("CLEARML_API_CA_BUNDLE", Path::new("/etc/ssl/private-ca"))]
    );
    let e = err(&[
        ("CLEARML_API_CA_BUNDLE", "/etc/ssl/private-ca"),
        ("SSL_VERIFY", "false"),
    ]);
    assert!(
        e.contains("SSL_VERIFY=false turns certificate checks off"),
        "{e}"
    );
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
    let e = err(&[("AUTH_BASE64_JWKS_KEY", "short%secret")]);
    assert!(e.contains("AUTH_BASE64_JWKS_KEY"), "{e}");
    assert!(!e.contains("short%secret"), "{e}");
}

/// ClearML documents the token secret itself for `AUTH_BASE64_JWKS_KEY`; a JWKS `k` is its
/// base64url form. Both are tried, and check-config says which it made of the value.
#[test]
fn the_token_secret_is_taken_as_written_and_as_a_jwks_k() {
    let secret = "Rq8FW84sSqVgq7WvBB_4EzNl9y8z8IGiDXX3C345_a5AZfcwZcwCIA";
    let c = ok(&[("AUTH_BASE64_JWKS_KEY", secret)]);
    let keys = c.auth.hmac_keys();
    assert_eq!(keys[0], (KeyForm::AsWritten, secret.as_bytes().to_vec()));
    assert_eq!(keys[1].0, KeyForm::JwksK);
    let shown = c.effective();
    let (_, shown) = shown
        .iter()
        .find(|(name, _)| *name == "AUTH_BASE64_JWKS_KEY")
        .unwrap();
    assert_eq!(
        shown,
        "*** (54 chars as written; also tried base64url-decoded: 40 bytes)"
    );
    let c = ok(&[("AUTH_BASE64_JWKS_KEY", "not base64 at all, a phrase")]);
    assert_eq!(c.auth.hmac_keys().len(), 1);
    assert!(
        c.effective()
            .iter()
            .any(|(_, v)| v == "*** (27 chars as written; not base64url)")
    );
}

#[test]
fn several_cookie_names_are_read() {
    let c = ok(&[("AUTH_COOKIE_NAME", "clearml_token_basic, clearml-token-k8s")]);
    assert_eq!(c.auth.cookie_name, "clearml_token_basic,clearml-token-k8s");
    assert_eq!(
        c.auth.cookie_names(),
        ["clearml_token_basic", "clearml-token-k8s"]
    );
    let e = err(&[("AUTH_COOKIE_NAME", "good,b;d")]);
    assert!(e.contains("\"b;d\" is not a cookie name"), "{e}");
}

#[test]
fn nat_source_ports_default_set_and_kept_out_of_the_tcp_range() {
    let c = ok(&[]);
    assert_eq!(
        c.datapath.nat_source_ports,
        NatSourcePorts::Auto {
            router_ports: Some((30000, 30999))
        }
    );
    let c = ok(&[("TCP_PORT_START", "20000"), ("TCP_PORT_END", "20099")]);
    assert_eq!(
        c.datapath.nat_source_ports,
        NatSourcePorts::Auto {
            router_ports: Some((20000, 20099))
        }
    );
    assert_eq!(c.datapath.nat_source_ports.to_string(), "auto");
    let c = ok(&[("ROUTER_NAT_SOURCE_PORTS", "40000 - 40999")]);
    assert_eq!(
        c.datapath.nat_source_ports,
        NatSourcePorts::Range(40000, 40999)
    );
    let e = err(&[("ROUTER_NAT_SOURCE_PORTS", "30900-31100")]);
    assert!(
        e.contains("ROUTER_NAT_SOURCE_PORTS=30900-31100 overlaps the TCP range"),
        "{e}"
    );
}

#[test]
fn nat_source_ports_inside_the_host_ephemeral_range_are_refused_naming_both() {
    let linux = || {
        Ok(PortRange {
            first: 32768,
            last: 60999,
        })
    };
    let c = ok(&[("ROUTER_NAT_SOURCE_PORTS", "60000-61999")]);
    let e = c.check_host_ephemeral(linux()).unwrap_err().to_string();
    assert!(
        e.contains("ROUTER_NAT_SOURCE_PORTS=60000-61999 overlaps the router host's ephemeral port range 32768-60999 (sysctl net.ipv4.ip_local_port_range)"),
        "{e}"
    );
    // Outside it, `auto`, the nginx datapath (nothing translated) and an unreadable sysctl
    // (the datapath names that failure when it opens) pass.
    let passing = [
        ok(&[("ROUTER_NAT_SOURCE_PORTS", "61000-65535")]),
        ok(&[]),
        ok(&[
            ("ROUTER_NAT_SOURCE_PORTS", "60000-61999"),
            ("ROUTER_DATAPATH", "nginx"),
        ]),
    ];
    for c in passing {
        c.check_host_ephemeral(linux()).expect("no conflict");
    }
    let unreadable = crate::host_ephemeral::read_from(std::path::Path::new("/nonexistent"));
    c.check_host_ephemeral(unreadable).expect("not checked");
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
    let e = Sources::new(Vec::new(), Vec::new(), Some(Path::new("/nonexistent/env"))).unwrap_err();
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
