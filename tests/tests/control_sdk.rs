//! The real `clearml` SDK (newest release and last 2.0.x) against the test server, served by
//! task-router's sync engine (recording route owners): `request_external_endpoint` for TCP and
//! HTTP, a named endpoint, the clearml-session way, and the route going when the task stops.

use router_tests::clearml_server::sdk::{SdkEnv, SdkTask, last_2_0, newest};
use router_tests::clearml_server::{ClearmlServer, ServerOptions};
use router_tests::engine::{EngineThread, clearml_config};
use serde_json::json;
use std::time::Duration;

const ROUTER_ADDRESS: &str = "203.0.113.7";
const ROUTER_URL: &str = "http://router.example.invalid:8010";
/// The address tasks report as their own (inside ROUTER_ALLOWED_UPSTREAMS).
const TASK_IP: &str = "10.20.0.20";
const WAIT: Duration = Duration::from_secs(30);

/// The sync loop in a thread of its own, its state in a directory of its own; stops on drop.
struct RouterLoop {
    engine: EngineThread,
    _state: tempfile::TempDir,
}

impl RouterLoop {
    fn start(server: &ClearmlServer) -> RouterLoop {
        let state = tempfile::Builder::new()
            .prefix("task-router-sdk-")
            .tempdir()
            .expect("state dir");
        let cfg = clearml_config(
            server,
            state.path(),
            &[
                ("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS),
                ("ROUTER_URL", ROUTER_URL),
                ("ROUTER_NAME", "task-router"),
                ("ROUTER_POLL_INTERVAL", "200ms"),
            ],
        );
        RouterLoop {
            engine: EngineThread::start(cfg),
            _state: state,
        }
    }
}

fn env(server: &ClearmlServer) -> SdkEnv {
    SdkEnv::on_host(server, TASK_IP)
}

fn the_sdk_gets_working_endpoints(version: &str) {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let router = RouterLoop::start(&server);
    let mut task = SdkTask::start(version, &env(&server), None, "endpoints").expect("SDK task");
    task.request(9000, "tcp", false, None).expect("request tcp");
    task.request(8080, "http", false, None)
        .expect("request http");

    let tcp = task
        .poll("tcp", None, &format!("{ROUTER_ADDRESS}:"), WAIT)
        .expect("the SDK sees the router's TCP endpoint");
    let endpoint = tcp["endpoint"].as_str().expect("endpoint").to_string();
    let port: u16 = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert!((30000..=30999).contains(&port), "{endpoint}");
    let route = router
        .engine
        .tcp
        .programmed()
        .get(&port)
        .cloned()
        .expect("the port the SDK sees is programmed");
    assert_eq!(
        route.upstream,
        format!("{TASK_IP}:9000").parse().expect("addr")
    );
    assert_eq!(route.owner.id.task_id, task.task_id);

    let url = format!("{ROUTER_URL}/service/{}/", task.task_id);
    let http = task
        .poll("http", None, &url, WAIT)
        .expect("the SDK sees the router's HTTP endpoint");
    assert_eq!(http["browser_endpoint"], json!(url));
    let served = router.engine.http.programmed();
    assert_eq!(
        served[&task.task_id].upstream,
        format!("{TASK_IP}:8080").parse().expect("addr")
    );
    let waited = task.wait("tcp", None, WAIT).expect("wait tcp");
    assert_eq!(waited["endpoint"], json!(endpoint));

    // Aborted: the routes go.
    let id = task.task_id.clone();
    task.stop().expect("stop");
    router_tests::wait::until("the stopped task's routes gone", WAIT, || {
        (router
            .engine
            .tcp
            .programmed()
            .values()
            .all(|r| r.owner.id.task_id != id)
            && router
                .engine
                .http
                .programmed()
                .values()
                .all(|r| r.owner.id.task_id != id))
        .then_some(())
    });
}

#[test]
fn sdk_newest_gets_tcp_and_http_endpoints_from_task_router() {
    the_sdk_gets_working_endpoints(newest());
}

#[test]
fn sdk_2_0_gets_tcp_and_http_endpoints_from_task_router() {
    // SDK 2.0 keeps one `_SERVICE` (the last request's): the keys tell both requests.
    the_sdk_gets_working_endpoints(last_2_0());
}

#[test]
fn sdk_newest_named_endpoints_each_get_their_own_route() {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let router = RouterLoop::start(&server);
    let mut task = SdkTask::start(newest(), &env(&server), None, "named").expect("SDK task");
    // The three requests back to back, while the router polls every 200 ms: the SDK and the
    // router both read-modify-write the task's whole runtime dict (no compare-and-set), so the
    // router reads twice before it writes and starts over when the runtime moved in between
    // (`Client::update_runtime`); none of the three requests may be lost.
    task.request(9000, "tcp", false, None).expect("default tcp");
    task.request(9001, "tcp", false, None)
        .expect("numbered tcp");
    task.request(7000, "http", false, Some("ui"))
        .expect("named http");
    let first = task
        .poll("tcp", None, &format!("{ROUTER_ADDRESS}:"), WAIT)
        .expect("default");
    let second = task
        .poll("tcp", Some("1"), &format!("{ROUTER_ADDRESS}:"), WAIT)
        .expect("__1");
    assert_ne!(first["endpoint"], second["endpoint"]);
    let ui = format!("{ROUTER_URL}/service/{}__ui/", task.task_id);
    task.poll("http", Some("ui"), &ui, WAIT).expect("__ui");
    let tcp = router.engine.tcp.programmed();
    assert_eq!(tcp.len(), 2);
    let upstreams: Vec<String> = tcp.values().map(|r| r.upstream.to_string()).collect();
    assert!(
        upstreams.contains(&format!("{TASK_IP}:9001")),
        "{upstreams:?}"
    );
    assert!(
        router
            .engine
            .http
            .programmed()
            .contains_key(&format!("{}__ui", task.task_id))
    );
}

#[test]
fn clearml_session_way_is_served() {
    let server = ClearmlServer::start().expect("server");
    let router = RouterLoop::start(&server);
    let mut task = SdkTask::start(newest(), &env(&server), None, "session").expect("SDK task");
    task.session_request(TASK_IP, 10022)
        .expect("session-style request");
    let rt = router_tests::wait::until(
        "the router's rewrite as the session client reads it",
        WAIT,
        || {
            let rt = task.runtime().ok()?;
            (rt["external_address"] == ROUTER_ADDRESS).then_some(rt)
        },
    );
    let port = rt["external_tcp_port"].as_u64().expect("port") as u16;
    assert_eq!(rt["upstream_task_address"], json!(TASK_IP));
    assert_eq!(rt["upstream_task_port"], json!(10022));
    assert_eq!(
        router.engine.tcp.programmed()[&port].upstream,
        format!("{TASK_IP}:10022").parse().expect("addr")
    );
}
