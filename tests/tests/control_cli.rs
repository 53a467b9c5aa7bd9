//! The control plane as an operator meets it: `check-config`, start-up refusals, the admin
//! endpoint (`/healthz`, `/readyz`, `/status`, its loopback guard), `task-router status`, and a
//! routes file reloaded on change. No ClearML server involved.

use router_tests::http_client;
use router_tests::netns::Netns;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::ClientRouter;
use router_tests::{daemon_binary, require_root};
use std::net::SocketAddr;

use std::process::{Command, Output};
use std::time::Duration;

/// A temporary directory of the test's own, removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("task-router-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// The daemon binary with a clean environment (only PATH), so the caller's variables never
/// leak into what is being tested.
fn task_router(args: &[&str]) -> Command {
    let mut cmd = Command::new(daemon_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .args(args);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_shows_effective_values_masked_with_their_origin() {
    let dir = temp_dir("cc");
    let env_file = dir.path().join("runtime.env");
    std::fs::write(
        &env_file,
        "# ClearML router settings\n\
         CLEARML_API_HOST=http://clearml.example:8008\n\
         CLEARML_API_ACCESS_KEY=ACCESS123\n\
         CLEARML_API_SECRET_KEY=very-secret-value\n\
         TCP_ROUTER_ADDRESS=203.0.113.9\n\
         TCP_PORT_START=40000\n\
         TCP_PORT_END=40100\n\
         LISTEN_QUEUE_NAME=gpu cpu\n\
         AUTH_BASE64_JWKS_KEY=c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2\n\
         ROUTER_NAME=from-file\n",
    )
    .expect("write env file");
    let out = task_router(&[
        "check-config",
        "--env-file",
        env_file.to_str().expect("utf-8"),
        "--poll-interval",
        "750ms",
    ])
    .env("ROUTER_NAME", "from-env")
    .env("TCP_PORT_START", "40001")
    .output()
    .expect("run check-config");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing:\n{stdout}"))
            .to_string()
    };
    assert!(line("ROUTER_NAME").contains("from-env"));
    assert!(line("ROUTER_NAME").contains("# environment"));
    assert!(line("TCP_PORT_START").starts_with("TCP_PORT_START=40001"));
    assert!(line("TCP_PORT_END").starts_with("TCP_PORT_END=40100"));
    assert!(line("TCP_PORT_END").contains("runtime.env:7"));
    assert!(line("ROUTER_POLL_INTERVAL").starts_with("ROUTER_POLL_INTERVAL=750ms"));
    assert!(line("ROUTER_POLL_INTERVAL").contains("# command line"));
    assert!(line("LISTEN_QUEUE_NAME").starts_with("LISTEN_QUEUE_NAME=gpu,cpu"));
    assert!(line("ROUTER_URL").starts_with("ROUTER_URL=http://203.0.113.9:8010"));
    assert!(line("SSL_VERIFY").contains("# default"));
    assert!(
        !stdout.contains("very-secret-value"),
        "secret shown:\n{stdout}"
    );
    assert!(!stdout.contains("c2VjcmV0"), "key shown:\n{stdout}");
    assert!(line("CLEARML_API_SECRET_KEY").contains("***"));
    assert!(line("AUTH_BASE64_JWKS_KEY").contains("***"));
}

#[test]
fn bad_values_are_refused_naming_variable_value_and_expectation() {
    let out = task_router(&["check-config"])
        .env("TCP_PORT_END", "70000")
        .env("ROUTER_DATAPATH", "dpdk")
        .env("ROUTER_ALLOWED_UPSTREAMS", "10.0.0.0/8,not-a-cidr")
        .output()
        .expect("run check-config");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "3 problems",
        "TCP_PORT_END=\"70000\" (from environment) is invalid: expected a port 1-65535",
        "ROUTER_DATAPATH=\"dpdk\"",
        "auto, xdp, xdp-generic, tc or nginx",
        "\"not-a-cidr\" is not an IPv4 CIDR",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing:\n{stderr}");
    }
    // `run` refuses the same way, before touching anything.
    let out = task_router(&["run", "--interface", "lo"])
        .env("SSL_VERIFY", "perhaps")
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SSL_VERIFY=\"perhaps\""), "{stderr}");
}

#[test]
fn nat_source_ports_the_host_may_pick_are_refused_naming_both_ranges() {
    // The top 64 ports of this host's ephemeral range (the daemon reads the same sysctl).
    let host = router_userspace::host_ephemeral::read().expect("the host's ephemeral range");
    assert!(
        host.last - host.first >= 63,
        "{host} is too small to test with"
    );
    let nat = format!("{}-{}", host.last - 63, host.last);
    for args in [&["check-config"][..], &["run", "--interface", "lo"][..]] {
        let out = task_router(args)
            .env("ROUTER_NAT_SOURCE_PORTS", &nat)
            .output()
            .expect("run task-router");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let needle = format!(
            "ROUTER_NAT_SOURCE_PORTS={nat} overlaps the router host's ephemeral port range \
             {host} (sysctl net.ipv4.ip_local_port_range)"
        );
        assert!(
            stderr.contains(&needle),
            "{args:?}: {needle:?} missing:\n{stderr}"
        );
    }
}

#[test]
fn help_explains_every_variable() {
    let out = task_router(&["check-config", "--help"])
        .output()
        .expect("help");
    let (stdout, _) = text(&out);
    for v in router_userspace::config::ENV_VARS {
        assert!(stdout.contains(v.name), "{} missing from --help", v.name);
        assert!(stdout.contains(v.help), "help of {} missing", v.name);
    }
    let out = task_router(&["run", "--help"]).output().expect("help");
    let (stdout, _) = text(&out);
    for flag in [
        "--env-file",
        "--interface",
        "--mode",
        "--routes-file",
        "--state-dir",
        "--admin-addr",
        "--poll-interval",
        "--set",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from run --help");
    }
}

#[test]
fn a_failing_extra_bash_command_stops_start_up_with_its_output() {
    require_root();
    let router = Netns::new("trxc").expect("router ns");
    // Its own state directory (the instance lock), so no other daemon on the machine matters.
    let out = DaemonSetup::new(&router)
        .interface("lo")
        .env(
            "EXTRA_BASH_COMMAND",
            "echo preparing-things; echo broken-step >&2; exit 3",
        )
        .run_to_end();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("EXTRA_BASH_COMMAND failed"), "{stderr}");
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    assert!(stderr.contains("preparing-things"), "{stderr}");
    assert!(stderr.contains("broken-step"), "{stderr}");
    assert!(
        !stderr.contains("attached"),
        "nothing may start after the command failed:\n{stderr}"
    );
}

/// `GET path` from inside `ns`: the status code and the body.
fn get_in(ns: &Netns, addr: SocketAddr, path: &str) -> (u16, String) {
    let r =
        http_client::get_in(ns, addr, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    (r.status, r.text())
}

#[test]
fn admin_endpoint_status_command_and_routes_file_reload() {
    require_root();
    let net = ClientRouter::new(&[204, 205]).expect("client and router namespaces");
    let (client, router) = (&net.client, &net.router);
    let (r1, r2) = (net.router_end(0), net.router_end(1));
    let setup = DaemonSetup::new(router)
        .interface(&r1.dev)
        .routes(
            "[[tcp]]\nport = 30001\nupstream = \"10.204.0.1:8888\"\nname = \"echo\"\n\
             [[http]]\nname = \"grafana\"\nupstream = \"10.204.0.1:3000\"\n",
        )
        .admin("0.0.0.0:9180")
        .args(["--poll-interval", "200ms"])
        .env("ROUTER_ADMIN_ALLOW", "10.205.0.0/24")
        .env("AUTH_ENABLED", "false");
    let (routes, nginx) = (setup.routes_path(), setup.dir().join("nginx"));
    // The HTTP route goes to a config dir of the test's own, never the host's nginx; this test
    // is about the admin endpoint, so installing is enough (nginx itself: tests/tests/http_*).
    let mut daemon = setup
        .env("NGINX_CONF_DIR", nginx)
        .env("NGINX_TEST_CMD", "true")
        .env("NGINX_RELOAD_CMD", "true")
        .spawn();
    daemon.wait_for_log("admin endpoint listening", Duration::from_secs(20));
    daemon.wait_for_log("ready", Duration::from_secs(20));
    let binary = daemon_binary();
    let binary = binary.to_str().expect("utf-8");

    // Loopback inside the router namespace is served.
    let admin: SocketAddr = "127.0.0.1:9180".parse().expect("addr");
    let (code, body) = get_in(router, admin, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = get_in(router, admin, "/readyz");
    assert_eq!((code, body.trim()), (200, "ready"));
    // From another host: refused unless inside ROUTER_ADMIN_ALLOW.
    let not_allowed = SocketAddr::from((r1.addr, 9180));
    let (code, _) = get_in(client, not_allowed, "/status");
    assert_eq!(code, 403, "a caller outside ROUTER_ADMIN_ALLOW is refused");
    let allowed = SocketAddr::from((r2.addr, 9180));
    let (code, body) = get_in(client, allowed, "/status");
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(json["ready"], true);
    assert_eq!(json["clearml"]["state"], "disabled");
    assert_eq!(json["routes"].as_array().map(Vec::len), Some(2), "{json}");

    // `task-router status` renders the table from the same endpoint.
    let status = |json: bool| {
        let mut args = vec!["status", "--admin-addr", "127.0.0.1:9180"];
        if json {
            args.push("--json");
        }
        let out = router.command(binary).args(&args).output().expect("status");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stdout
    };
    let table = status(false);
    let header = table
        .lines()
        .find(|l| l.starts_with("TASK"))
        .unwrap_or_else(|| panic!("no table:\n{table}"));
    for column in [
        "NAME", "KIND", "ROUTER", "UPSTREAM", "STATE", "CONNS", "BYTES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("file:echo"))
        .unwrap_or_else(|| panic!("no echo row:\n{table}"));
    assert!(row.contains("tcp") && row.contains("30001") && row.contains("10.204.0.1:8888"));
    let row = table
        .lines()
        .find(|l| l.starts_with("file:grafana"))
        .unwrap_or_else(|| panic!("no grafana row:\n{table}"));
    assert!(
        row.contains("http") && row.contains("/service/grafana/"),
        "{row}"
    );
    let raw: serde_json::Value = serde_json::from_str(&status(true)).expect("--json is JSON");
    assert_eq!(raw["router_name"], json["router_name"]);

    // The file changes: the new route appears, the removed one goes.
    std::fs::write(
        &routes,
        "[[tcp]]\nport = 30002\nupstream = \"10.204.0.1:9999\"\n",
    )
    .expect("rewrite routes");
    router_tests::wait::until(
        "the reloaded route in status",
        Duration::from_secs(10),
        || {
            let t = status(false);
            (t.contains("30002") && !t.contains("30001") && !t.contains("grafana")).then_some(())
        },
    );
    // A broken file keeps the last good routes and says so.
    std::fs::write(
        &routes,
        "[[tcp]]\nport = 30003\nupstream = \"127.0.0.1:22\"\n",
    )
    .expect("break routes");
    let t = router_tests::wait::until(
        "the reload error in status",
        Duration::from_secs(10),
        || {
            let t = status(false);
            t.contains("last reload failed").then_some(t)
        },
    );
    assert!(t.contains("loopback"), "{t}");
    assert!(t.contains("30002") && !t.contains("30003"), "{t}");

    daemon.terminate();
}

#[test]
fn status_without_a_daemon_says_what_is_wrong() {
    require_root();
    let ns = Netns::new("trsn").expect("ns");
    let out = ns
        .command(daemon_binary().to_str().expect("utf-8"))
        .args(["status", "--admin-addr", "127.0.0.1:9180"])
        .output()
        .expect("status");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the daemon"), "{stderr}");
}

/// The README's first example, a routes file with TCP routes only and no ClearML, needs no JWT
/// key; an `[[http]]` entry without one is refused naming the fix. `uninstall` on such a router
/// leaves nginx alone: it wrote no nginx file, so it neither tests nor reloads nginx (here the
/// reload command would fail).
#[test]
fn a_tcp_only_router_needs_no_jwt_key_and_its_uninstall_leaves_nginx_alone() {
    require_root();
    let dir = temp_dir("tcp-only");
    let routes = dir.path().join("routes.toml");
    let tcp = "[[tcp]]\nport = 30001\nupstream = \"10.0.0.5:22\"\n";
    std::fs::write(&routes, tcp).expect("write routes file");
    let routes_arg = routes.to_str().expect("utf-8 path");
    let out = task_router(&["check-config", "--routes-file", routes_arg])
        .output()
        .expect("check-config");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");

    std::fs::write(
        &routes,
        format!("{tcp}[[http]]\nname = \"web\"\nupstream = \"10.0.0.6:80\"\n"),
    )
    .expect("write routes file");
    let out = task_router(&["check-config", "--routes-file", routes_arg])
        .output()
        .expect("check-config");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("[[http]] #1") && stderr.contains("AUTH_BASE64_JWKS_KEY"),
        "{stderr}"
    );

    std::fs::write(&routes, tcp).expect("write routes file");
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir(&nginx_dir).expect("nginx dir");
    std::fs::write(nginx_dir.join("someone-else.conf"), "# not ours\n").expect("other file");
    let out = task_router(&["uninstall", "--routes-file", routes_arg])
        .env("ROUTER_STATE_DIR", dir.path().join("state"))
        .env("ROUTER_BPFFS", dir.path().join("no-pins"))
        .env("NGINX_CONF_DIR", &nginx_dir)
        .env("NGINX_RELOAD_CMD", "false")
        .env("NGINX_TEST_CMD", "false")
        .output()
        .expect("uninstall");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("no nginx files of task-router"), "{stdout}");
    assert!(nginx_dir.join("someone-else.conf").exists());
}
