//! The real `clearml` SDK (newest release and last 2.0.x) against the test server, served by
//! task-router's sync engine (recording route owners): `request_external_endpoint` for TCP and
//! HTTP, a named endpoint, the clearml-session way, and the route going when the task stops.

use router_tests::clearml_server::sdk::{SdkEnv, SdkTask, sdk_versions};
use router_tests::clearml_server::{ClearmlServer, ServerOptions};
use router_tests::owners::{RecordingForwarder, RecordingRouter};
use router_userspace::config::{Config, Sources};
use router_userspace::daemon::{Engine, new_status};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const ROUTER_ADDRESS: &str = "203.0.113.7";
const ROUTER_URL: &str = "http://router.example.invalid:8010";
/// The address tasks report as their own (inside ROUTER_ALLOWED_UPSTREAMS).
const TASK_IP: &str = "10.20.0.20";
const WAIT: Duration = Duration::from_secs(30);

/// The sync loop in a thread of its own; stops on drop.
struct RouterLoop {
    tcp: RecordingForwarder,
    http: RecordingRouter,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: PathBuf,
}

impl RouterLoop {
    fn start(server: &ClearmlServer) -> RouterLoop {
        let state = std::env::temp_dir().join(format!(
            "task-router-sdk-{}",
            router_tests::netns::unique("s")
        ));
        let creds = server.credentials();
        let env: Vec<(String, String)> = [
            ("CLEARML_API_HOST", server.url()),
            ("CLEARML_API_ACCESS_KEY", creds.access_key),
            ("CLEARML_API_SECRET_KEY", creds.secret_key),
            ("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS.into()),
            ("ROUTER_URL", ROUTER_URL.into()),
            ("ROUTER_NAME", "task-router".into()),
            ("AUTH_ENABLED", "false".into()),
            ("ROUTER_STATE_DIR", state.display().to_string()),
            ("ROUTER_POLL_INTERVAL", "200ms".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let sources = Sources::new(Vec::new(), env, None).expect("sources");
        let cfg = Config::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
        let (tcp, http) = (RecordingForwarder::default(), RecordingRouter::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (t, h) = (tcp.clone(), http.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut engine =
                    Engine::new(cfg.clone(), Box::new(t), Box::new(h), new_status(&cfg))
                        .expect("engine");
                engine.connect_at_start().await.expect("connect");
                engine.run(stop_rx).await.expect("loop");
            });
        });
        RouterLoop {
            tcp,
            http,
            stop: Some(stop),
            thread: Some(thread),
            state,
        }
    }
}

impl Drop for RouterLoop {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn env(server: &ClearmlServer) -> SdkEnv {
    SdkEnv {
        host_ip: Some(TASK_IP.into()),
        ..SdkEnv::for_server(server)
    }
}

fn newest() -> &'static str {
    sdk_versions()[0]
}

fn last_2_0() -> &'static str {
    sdk_versions()
        .into_iter()
        .find(|v| v.starts_with("2.0."))
        .expect("a 2.0.x release in tests/python/sdk-versions.txt")
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
    let served = router.http.programmed();
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
            .tcp
            .programmed()
            .values()
            .all(|r| r.owner.id.task_id != id)
            && router
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
    let tcp = router.tcp.programmed();
    assert_eq!(tcp.len(), 2);
    let upstreams: Vec<String> = tcp.values().map(|r| r.upstream.to_string()).collect();
    assert!(
        upstreams.contains(&format!("{TASK_IP}:9001")),
        "{upstreams:?}"
    );
    assert!(
        router
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
        router.tcp.programmed()[&port].upstream,
        format!("{TASK_IP}:10022").parse().expect("addr")
    );
}
