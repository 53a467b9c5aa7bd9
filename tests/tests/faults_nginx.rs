//! nginx killed under the real daemon (managed nginx, `NGINX_MANAGED=true`, in the e2e testbed).
//!
//! Expected: TCP routes never notice (they are the kernel's); the daemon's supervisor sees the
//! master gone and starts nginx again with the configuration in force, so the HTTP route is
//! served again without anyone touching the daemon, and `task_router_nginx_restarts_total`
//! counts it.

use router_tests::clearml_server::TaskSpec;
use router_tests::e2e::{
    ADMIN, HOST1, ROUTER_PUBLIC, ServerThread, Testbed, TestbedOptions, echo_through,
};
use router_tests::http_client::{get_in, get_url_in};
use router_tests::{require_root, wait};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_killed_nginx_is_started_again_and_http_routes_come_back() {
    require_root();
    let bed =
        Testbed::up(&TestbedOptions::default(), &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    let _web = ServerThread::web(&bed.host1, (HOST1, 7860).into(), "ui").expect("web app");
    let _tcp = ServerThread::banner_echo(&bed.host1, (HOST1, 9000).into(), "T\n").expect("tcp");
    let admin = bed.server.admin();
    let running = |name: &str, runtime| {
        TaskSpec::new(name)
            .status("in_progress")
            .system_tags(&["external_service"])
            .runtime(runtime)
    };
    let web = admin.create_task(running(
        "web",
        json!({"_SERVICE": "EXTERNAL", "_ADDRESS": HOST1.to_string(), "_PORT": 7860}),
    ));
    let tcp = admin.create_task(running(
        "tcp",
        json!({"_SERVICE": "EXTERNAL_TCP", "external_address": HOST1.to_string(),
               "external_tcp_port": 9000}),
    ));
    let url = wait::until("the HTTP endpoint written", WAIT, || {
        admin
            .runtime(&web)
            .get("endpoint")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    let port = wait::until("the TCP endpoint written", WAIT, || {
        let rt = admin.runtime(&tcp);
        (rt.get("external_address") == Some(&json!(ROUTER_PUBLIC.to_string())))
            .then(|| rt.get("external_tcp_port")?.as_u64())
            .flatten()
    });
    let tcp_addr = SocketAddr::from((ROUTER_PUBLIC, port as u16));
    let cookie = bed.auth_cookie();
    let served = || {
        get_url_in(&bed.client, &url, &[("Cookie", &cookie)])
            .ok()
            .filter(|r| r.status == 200 && r.text().starts_with("app ui"))
    };
    wait::until("the HTTP route served", WAIT, served);

    let pid = bed.nginx_pid().expect("the managed nginx runs");
    // Kill the master the daemon started (a descendant of the test's daemon), as an OOM kill.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill nginx");
    // TCP routes are the kernel's: served while nginx is down or restarting.
    assert_eq!(
        echo_through(&bed.client, tcp_addr, b"x").expect("TCP"),
        b"T\nx"
    );
    wait::until("a new nginx master", WAIT, || {
        bed.nginx_pid().filter(|p| *p != pid)
    });
    wait::until("the HTTP route served again", WAIT, served);
    let metrics = get_in(&bed.router, ADMIN, "/metrics", &[]).expect("metrics");
    let restarts = metrics
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("task_router_nginx_restarts_total ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no restart counter:\n{}", metrics.text()));
    assert!(restarts >= 1.0, "restarts {restarts}");
    assert_eq!(
        echo_through(&bed.client, tcp_addr, b"y").expect("TCP"),
        b"T\ny"
    );
    let log = bed.daemon_log();
    assert!(!log.contains("panicked"), "{log}");
}
