//! Which clients may connect (`ROUTER_TCP_CLIENT_ALLOW`, a routes-file route's `allow`, a
//! task's `_ROUTER_CLIENT_ALLOW<sfx>` key): the daemon in namespaces admits a listed client,
//! drops the SYN of one the list leaves out (counted, shown in `status`), applies a change to
//! the next connection while an open one keeps flowing; through the ClearML test server a task
//! narrows its own endpoint's list and a key that would widen it is refused for that endpoint
//! alone.

use router_tests::clearml_server::{ClearmlServer, TaskSpec};
use router_tests::engine::{RecordingEngine, clearml_config};
use router_tests::metrics::{sample, scrape};
use router_tests::require_root;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_tests::{http_client, wait};
use router_userspace::daemon::CycleOutcome;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

const PORT: u16 = 20000;
const BACKEND_PORT: u16 = 8080;
const ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));
const MIB: usize = 1 << 20;
const REFUSED_SERIES: &str =
    "task_router_verdict_packets_total{hook=\"tc\",reason=\"drop_client_not_allowed\"}";

/// The routes file: [`PORT`] to the backend, narrowed to `allow` if given.
fn routes_file(backend: Ipv4Addr, allow: Option<&str>) -> String {
    let allow = allow
        .map(|a| format!("allow = \"{a}\"\n"))
        .unwrap_or_default();
    format!("[[tcp]]\nport = {PORT}\nupstream = \"{backend}:{BACKEND_PORT}\"\n{allow}")
}

/// The route's client allow-list as `/status` shows it, once it is `want`.
fn wait_for_status_allow(t: &Topology, want: &str) {
    wait::until(
        &format!("status shows the route admitting {want}"),
        Duration::from_secs(20),
        || {
            let reply = http_client::get_in(&t.router, ADMIN, "/status", &[]).ok()?;
            let status: Value = serde_json::from_str(&reply.text()).ok()?;
            let shown = status["routes"].get(0)?["client_allow"]
                .as_str()?
                .to_string();
            (shown == want).then_some(())
        },
    );
}

fn refused_syns(t: &Topology) -> f64 {
    sample(&scrape(&t.router, ADMIN.port()), REFUSED_SERIES).unwrap_or(0.0)
}

#[test]
fn only_listed_clients_connect_and_a_change_holds_for_new_connections_at_once() {
    require_root();
    let t = Topology::new().expect("topology");
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server");
    let client = t.client_end.addr;
    let operator = format!("{client}/32,192.0.2.0/24");
    let setup = DaemonSetup::tc_on(&t)
        .set("ROUTER_TCP_CLIENT_ALLOW", &operator)
        .set("ROUTER_POLL_INTERVAL", "200ms")
        .routes(&routes_file(t.backend_end.addr, None))
        .admin(ADMIN)
        .tcp_ports(PORT, PORT)
        .no_auth();
    let routes_path = setup.routes_path();
    let daemon = setup.start(Duration::from_secs(20));
    let to = SocketAddrV4::new(t.router_addr(), PORT);
    wait_for_status_allow(&t, &operator);

    // On the operator's list: the client connects.
    let mut open = Client::connect(&t.client, to).expect("a listed client connects");
    open.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");

    // The route narrows to a range without the client: its next SYN is dropped (nothing
    // answers, so the connect times out), counted; the open connection keeps flowing.
    std::fs::write(
        &routes_path,
        routes_file(t.backend_end.addr, Some("192.0.2.0/24")),
    )
    .expect("rewrite the routes file");
    wait_for_status_allow(&t, "192.0.2.0/24");
    let before = refused_syns(&t);
    let refused = Client::connect(&t.client, to);
    assert!(refused.is_err(), "a client off the list must not connect");
    assert!(refused_syns(&t) > before, "the refused SYN is counted");
    open.echo_random(2 * MIB, 64 * 1024, |_| {})
        .expect("the connection opened before the change keeps flowing");

    // The list names the client again: the next connection gets through at once.
    std::fs::write(
        &routes_path,
        routes_file(t.backend_end.addr, Some(&format!("{client}"))),
    )
    .expect("rewrite the routes file");
    wait_for_status_allow(&t, &format!("{client}/32"));
    let mut again = Client::connect(&t.client, to).expect("the client connects again");
    again.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");
    again.finish().expect("close");
    open.finish().expect("close");
    assert_eq!(
        server.accepted(),
        2,
        "the refused SYN never reached the task"
    );
    daemon.terminate();
}

fn tcp_task(name: &str, addr: &str, allow: Option<&str>) -> TaskSpec {
    let mut runtime = json!({"_SERVICE": "EXTERNAL_TCP", "external_address": addr,
                             "external_tcp_port": 22, "upstream_task_port": 22});
    if let Some(allow) = allow {
        runtime["_ROUTER_CLIENT_ALLOW"] = json!(allow);
    }
    TaskSpec::new(name)
        .status("in_progress")
        .system_tags(&["external_service"])
        .runtime(runtime)
}

/// The client allow-list of `task`'s route, as programmed.
fn allow_of(r: &RecordingEngine, task: &str) -> Option<String> {
    r.tcp
        .programmed()
        .values()
        .find(|route| route.owner.id.task_id == task)
        .map(|route| route.allow.to_string())
}

#[tokio::test]
async fn a_task_narrows_its_own_endpoint_and_a_widening_key_is_refused_alone() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let narrow = admin.create_task(tcp_task("narrow", "10.5.0.10", Some("10.8.0.0/16")));
    let plain = admin.create_task(tcp_task("plain", "10.5.0.11", None));
    let wide = admin.create_task(tcp_task("wide", "10.5.0.12", Some("10.8.0.0/16 0.0.0.0/1")));
    let state = tempfile::tempdir().expect("temp dir");
    let cfg = clearml_config(
        &server,
        Path::new(state.path()),
        &[
            ("TCP_ROUTER_ADDRESS", "203.0.113.7"),
            ("TCP_PORT_START", "30000"),
            ("TCP_PORT_END", "30099"),
            ("ROUTER_API_TIMEOUT", "3s"),
            ("ROUTER_TCP_CLIENT_ALLOW", "10.0.0.0/8"),
        ],
    );
    let mut r = RecordingEngine::start(cfg).await;
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    assert_eq!(allow_of(&r, &narrow).as_deref(), Some("10.8.0.0/16"));
    assert_eq!(allow_of(&r, &plain).as_deref(), Some("10.0.0.0/8"));
    assert_eq!(allow_of(&r, &wide), None, "a widening key is not served");
    let status = r.status();
    let refusal = status
        .refused
        .iter()
        .find(|f| f.owner.id.task_id == wide)
        .expect("the widening request is refused");
    assert!(
        refusal
            .reason
            .contains("_ROUTER_CLIENT_ALLOW may only narrow who connects: 0.0.0.0/1 is outside"),
        "{}",
        refusal.reason
    );
    // The task shows why, in the key the web app lists.
    assert_eq!(
        admin.runtime(&wide)["router_endpoint_error"],
        json!(refusal.reason)
    );
    let shown: Vec<_> = status
        .routes
        .iter()
        .filter_map(|row| row.client_allow.clone())
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");

    // The task narrows further, then fixes its key: both take effect on the next sync.
    admin.update_task(&narrow, json!({"runtime._ROUTER_CLIENT_ALLOW": "10.8.1.7"}));
    admin.update_task(
        &wide,
        json!({"runtime._ROUTER_CLIENT_ALLOW": "10.9.0.0/16"}),
    );
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    assert_eq!(allow_of(&r, &narrow).as_deref(), Some("10.8.1.7/32"));
    assert_eq!(allow_of(&r, &wide).as_deref(), Some("10.9.0.0/16"));
    assert!(r.status().refused.is_empty());
    // Served now: the endpoint's write took the reason away.
    assert!(
        admin.runtime(&wide).get("router_endpoint_error").is_none(),
        "{:?}",
        admin.runtime(&wide)
    );
}
