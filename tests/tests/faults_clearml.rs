//! ClearML faults against the real daemon in namespaces (client — router — backend), with the
//! kernel datapath forwarding real TCP to an echo backend while the ClearML test server
//! misbehaves. Each fault is injected for many poll cycles (poll 100 ms; a production outage of
//! minutes is many cycles too), then lifted.
//!
//! Expected behaviour, every fault:
//! - the routes in force and the endpoints written on the tasks stay exactly as they were: an
//!   open connection keeps echoing, new connections are forwarded, no `tasks.edit` is sent;
//! - the daemon stays ready (it forwards) and says why it is degraded: `/readyz` answers 200
//!   `ready (degraded)` with the reason, `/status` has `clearml.state = "error"` and the error,
//!   `/metrics` has `task_router_clearml_state{state="error"} 1` and counts failed cycles;
//! - once the server answers again the daemon heals without a restart: state `ok`, nothing
//!   degraded, and a task that asked for a route during the outage is routed.

use router_tests::clearml_server::{ClearmlServer, FaultKind, TaskSpec};
use router_tests::http_client;
use router_tests::scenario::{DaemonSetup, clearml_server_in};
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_tests::wait;
use router_tests::{daemon::Daemon, require_root};
use serde_json::{Value, json};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

const BACKEND_PORT: u16 = 8080;
const PORT_START: u16 = 20100;
const PORT_END: u16 = 20109;
/// Inside the router namespace the test created, so no other test can hold it.
const ADMIN_PORT: u16 = 9111;
const KIB: usize = 1 << 10;
/// Generous: the suite shares two cores.
const WAIT: Duration = Duration::from_secs(30);

fn admin_get(t: &Topology, path: &'static str) -> http_client::Response {
    let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    http_client::get_in(&t.router, addr, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

fn status(t: &Topology) -> Value {
    let r = admin_get(t, "/status");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("status is JSON")
}

/// The value of the sample whose name and labels are exactly `series`.
use router_tests::metrics::sample;

fn metric(t: &Topology, series: &str) -> f64 {
    let text = admin_get(t, "/metrics").text();
    sample(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

fn running(name: &str, runtime: Value) -> TaskSpec {
    TaskSpec::new(name)
        .status("in_progress")
        .system_tags(&["external_service"])
        .runtime(runtime)
}

fn tcp_request(addr: std::net::Ipv4Addr, port: u16) -> Value {
    json!({"_SERVICE": "EXTERNAL_TCP", "external_address": addr.to_string(),
           "external_tcp_port": port, "upstream_task_port": port})
}

struct Rig {
    t: Topology,
    server: ClearmlServer,
    /// The server's port inside the router namespace (it comes back on the same one).
    server_addr: SocketAddr,
    _echo: EchoServer,
    daemon: Daemon,
}

/// What holds before a fault (see [`Rig::start`]).
struct Baseline {
    /// The tasks that asked for a route.
    ids: Vec<String>,
    /// The router port written on each.
    ports: Vec<u16>,
    runtimes: Vec<(String, serde_json::Map<String, Value>)>,
    long: Client,
    edits: u64,
}

impl Rig {
    /// The daemon routing `tasks` tasks, and what holds before a fault: their written ports
    /// and runtimes, an open connection through the route of task `long_on` (echoed once),
    /// the writes so far.
    fn start(tasks: usize, long_on: usize) -> (Rig, Baseline) {
        let t = Topology::new().expect("topology");
        let echo = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend")
            .expect("echo server");
        let server = clearml_server_in(&t.router);
        let admin = server.admin();
        let ids: Vec<String> = (0..tasks)
            .map(|i| {
                admin.create_task(running(
                    &format!("app{i}"),
                    tcp_request(t.backend_end.addr, BACKEND_PORT),
                ))
            })
            .collect();
        let daemon = DaemonSetup::tc_on(&t)
            .args(["--poll-interval", "100ms"])
            .admin_port(ADMIN_PORT)
            .clearml(&server)
            .env("TCP_ROUTER_ADDRESS", t.router_addr().to_string())
            .env("TCP_PORT_START", PORT_START.to_string())
            .env("TCP_PORT_END", PORT_END.to_string())
            .env("ROUTER_NAME", "edge-faults")
            .env("AUTH_ENABLED", "false")
            .env("ROUTER_API_TIMEOUT", "1s")
            .start(WAIT);
        let server_addr = server.addr();
        let rig = Rig {
            t,
            server,
            server_addr,
            _echo: echo,
            daemon,
        };
        let baseline = rig.baseline(ids, long_on);
        (rig, baseline)
    }

    fn baseline(&self, ids: Vec<String>, long_on: usize) -> Baseline {
        let ports: Vec<u16> = ids.iter().map(|id| self.written_port(id)).collect();
        let admin = self.server.admin();
        let runtimes = ids
            .iter()
            .map(|id| (id.clone(), admin.runtime(id)))
            .collect();
        let mut long = self.connect(ports[long_on]);
        long.echo_random(64 * KIB, 16 * KIB, |_| {})
            .expect("echo before the fault");
        Baseline {
            ids,
            ports,
            runtimes,
            long,
            edits: admin.calls("tasks.edit"),
        }
    }

    /// The router port written on `task`, once written.
    fn written_port(&self, task: &str) -> u16 {
        let admin = self.server.admin();
        let router = self.t.router_addr().to_string();
        wait::until("the endpoint written back", WAIT, || {
            let rt = admin.runtime(task);
            (rt.get("external_address") == Some(&json!(router)))
                .then(|| rt.get("external_tcp_port")?.as_u64())
                .flatten()
                .map(|p| p as u16)
        })
    }

    fn connect(&self, port: u16) -> Client {
        let c = Client::connect(
            &self.t.client,
            SocketAddrV4::new(self.t.router_addr(), port),
        )
        .unwrap_or_else(|e| panic!("connect through router port {port}: {e:#}"));
        assert_eq!(c.banner, "backend");
        c
    }

    /// Waits until `/status` satisfies `check`; fails with the status and the log.
    fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let timeout = WAIT;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = status(&self.t);
            if check(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; status:\n{s:#}\nlog:\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `clearml` part of the status, the failed-cycle count.
fn failed_cycles(s: &Value) -> u64 {
    s["clearml"]["failed_cycles"].as_u64().unwrap_or(0)
}

/// Everything that must hold while a fault lasts (see the module comment).
fn assert_forwarding_and_degraded(rig: &Rig, baseline: &mut Baseline, reason: &str) {
    let (ports, runtimes, edits) = (&baseline.ports, &baseline.runtimes, baseline.edits);
    let long = &mut baseline.long;
    long.echo_random(64 * KIB, 16 * KIB, |_| {})
        .unwrap_or_else(|e| panic!("{reason}: the open connection broke: {e:#}"));
    for port in ports {
        rig.connect(*port)
            .finish()
            .unwrap_or_else(|e| panic!("{reason}: new connection on {port}: {e:#}"));
    }
    let s = status(&rig.t);
    assert_eq!(s["ready"], json!(true), "{reason}: {s:#}");
    let routes = s["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), ports.len(), "{reason}: {s:#}");
    assert!(
        routes.iter().all(|r| r["state"] == "active"),
        "{reason}: {s:#}"
    );
    let ready = admin_get(&rig.t, "/readyz");
    let body = ready.text();
    assert_eq!(ready.status, 200, "{reason}: {body}");
    assert!(body.starts_with("ready (degraded)"), "{reason}: {body}");
    assert!(body.contains("ClearML API failing"), "{reason}: {body}");
    assert_eq!(
        metric(&rig.t, "task_router_clearml_state{state=\"error\"}"),
        1.0,
        "{reason}"
    );
    assert!(metric(&rig.t, "task_router_degraded") >= 1.0, "{reason}");
    let admin = rig.server.admin();
    for (id, before) in runtimes {
        assert_eq!(
            &admin.runtime(id),
            before,
            "{reason}: written endpoint changed"
        );
    }
    assert_eq!(
        admin.calls("tasks.edit"),
        edits,
        "{reason}: a write was sent"
    );
}

fn wait_healed(rig: &Rig, what: &str) {
    rig.wait_status(&format!("the daemon to heal after {what}"), |s| {
        s["clearml"]["state"] == "ok" && s["degraded"].as_array().is_some_and(Vec::is_empty)
    });
    let ready = admin_get(&rig.t, "/readyz");
    assert_eq!((ready.status, ready.text()), (200, "ready\n".to_string()));
}

#[test]
fn clearml_faults_keep_every_route_and_heal_without_a_restart() {
    require_root();
    let (mut rig, mut baseline) = Rig::start(2, 0);
    let admin = rig.server.admin();

    // Expected for each: the listing fails for at least 6 cycles; everything above holds; then
    // it heals by itself once the fault is lifted.
    let faults: [(&str, FaultKind, &str); 3] = [
        (
            "HTTP 500 from every listing",
            FaultKind::Error {
                code: 500,
                subcode: 102,
                msg: "database unavailable".into(),
            },
            "500",
        ),
        (
            "answers slower than ROUTER_API_TIMEOUT (1 s)",
            FaultKind::Delay(Duration::from_millis(2500)),
            "",
        ),
        ("bodies that are not JSON", FaultKind::Malformed, "not JSON"),
    ];
    for (what, fault, in_error) in faults {
        let before = failed_cycles(&status(&rig.t));
        admin.inject(fault, 1_000_000, Some("tasks.get_all"));
        let s = rig.wait_status(&format!("6 failed cycles under {what}"), |s| {
            failed_cycles(s) >= before + 6
        });
        assert_eq!(s["clearml"]["state"], "error", "{what}: {s:#}");
        let error = s["clearml"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(in_error), "{what}: error {error:?}");
        assert_forwarding_and_degraded(&rig, &mut baseline, what);
        admin.clear_faults();
        wait_healed(&rig, what);
    }

    // An expired token: refused with 401/30, the daemon logs in again within the cycle; never
    // an error state, never a route touched.
    let logins = admin.calls("auth.login");
    let failed = failed_cycles(&status(&rig.t));
    admin.expire_tokens();
    wait::until("a new login after the token expired", WAIT, || {
        (admin.calls("auth.login") > logins).then_some(())
    });
    let s = rig.wait_status("a sync after the new login", |s| {
        s["clearml"]["state"] == "ok" && s["clearml"]["cycles"].as_u64() > Some(0)
    });
    assert_eq!(
        failed_cycles(&s),
        failed,
        "the expired token failed a cycle"
    );
    assert_eq!(admin.calls("tasks.edit"), baseline.edits);

    // The server gone (connection refused) for many cycles.
    let before = failed_cycles(&status(&rig.t));
    rig.server.go_down();
    let s = rig.wait_status("6 failed cycles with the server down", |s| {
        failed_cycles(s) >= before + 6
    });
    let error = s["clearml"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.to_lowercase().contains("connect"),
        "server down: error {error:?}"
    );
    // A task asks for a route while the server is unreachable (written straight into the
    // server's store: the API is down).
    let late = admin.create_task(running(
        "asked during the outage",
        tcp_request(rig.t.backend_end.addr, BACKEND_PORT),
    ));
    assert_forwarding_and_degraded(&rig, &mut baseline, "the server down");
    let listener = rig
        .t
        .router
        .enter({
            let addr = rig.server_addr;
            move || std::net::TcpListener::bind(addr)
        })
        .expect("enter")
        .expect("bind the API server's old address again");
    rig.server.come_back(Some(listener)).expect("server back");
    wait_healed(&rig, "the server came back");
    let late_port = rig.written_port(&late);
    rig.connect(late_port)
        .finish()
        .expect("the late task's route");

    baseline
        .long
        .echo_random(64 * KIB, 16 * KIB, |_| {})
        .expect("the open connection outlived every fault");
    baseline.long.finish().expect("close");
    let log = rig.daemon.log();
    assert!(log.contains("ClearML API reachable again"), "{log}");
    rig.daemon.terminate();
}

/// A task list that suddenly lacks every task (the listing and the by-id confirmation both
/// answer "no such tasks", as a server with an empty database would).
///
/// Expected: the mass-removal guard holds that answer — every route keeps forwarding, the
/// endpoints stay written, the log says `keeping them until the next answer agrees`,
/// `/readyz` says `ready (degraded)` while held and `/metrics` counts the held cycle; when the
/// next answer has the tasks again nothing was lost. When the tasks really stop, two agreeing
/// answers remove their routes.
#[test]
fn a_task_list_that_suddenly_lacks_every_task_tears_nothing_down() {
    require_root();
    let (mut rig, mut baseline) = Rig::start(3, 1);
    let admin = rig.server.admin();

    // One cycle's answers (the listing, then the by-id confirmation) say there are no tasks.
    admin.inject(FaultKind::Empty, 2, Some("tasks.get_all"));
    rig.daemon
        .wait_for_log("keeping them until the next answer agrees", WAIT);
    rig.wait_status("the held answer to be confirmed false", |s| {
        s["clearml"]["held_cycles"].as_u64() == Some(1)
            && s["clearml"]["held_removals"].as_u64() == Some(0)
    });
    assert_eq!(metric(&rig.t, "task_router_clearml_held_cycles_total"), 1.0);
    baseline
        .long
        .echo_random(64 * KIB, 16 * KIB, |_| {})
        .expect("the open connection survived the empty answer");
    for port in &baseline.ports {
        rig.connect(*port).finish().expect("new connection");
    }
    for (id, runtime) in &baseline.runtimes {
        assert_eq!(&admin.runtime(id), runtime, "written endpoint changed");
    }
    assert_eq!(admin.calls("tasks.edit"), baseline.edits);
    let s = status(&rig.t);
    assert_eq!(s["routes"].as_array().map(Vec::len), Some(3), "{s:#}");

    // While a held answer keeps coming, the routes stay and /readyz says why.
    admin.inject(FaultKind::Empty, 1_000_000, Some("tasks.get_all"));
    // Two agreeing empty answers are believed: here that is what an operator asked for by
    // leaving the fault on, so first check the held state, then that the routes go.
    let s = rig.wait_status("the routes to go after two agreeing answers", |s| {
        s["routes"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(s["clearml"]["held_cycles"].as_u64() >= Some(2), "{s:#}");
    admin.clear_faults();
    // The tasks are still running: routed again, on the ports written on them.
    rig.wait_status("the routes back", |s| {
        s["routes"].as_array().map(Vec::len) == Some(3)
    });
    for (id, port) in baseline.ids.iter().zip(&baseline.ports) {
        assert_eq!(rig.written_port(id), *port, "a task lost its port");
    }
    let _ = baseline.long.finish();
    rig.daemon.terminate();
}
