use super::*;
use crate::clearml::mock::{Fault, MockServer};
use crate::daemon::report::new_status;
use crate::routes::{ApplyReport, HttpRoute, RouteCounters, RouteRef, ServeCheck, TcpRoute};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP forwarder that records what it was given; `fail` makes it refuse routes, `unserved`
/// is what it answers when asked whether it serves them.
#[derive(Clone, Default)]
struct Recorder {
    programmed: Arc<Mutex<BTreeMap<u16, TcpRoute>>>,
    applies: Arc<Mutex<usize>>,
    fail: Arc<Mutex<Option<String>>>,
    unserved: Arc<Mutex<ServeCheck>>,
}

impl TcpForwarder for Recorder {
    fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> Result<ApplyReport> {
        *self.applies.lock().unwrap() += 1;
        if let Some(reason) = self.fail.lock().unwrap().clone() {
            return Ok(ApplyReport {
                failed: wanted
                    .keys()
                    .map(|p| (RouteRef::Tcp(*p), reason.clone()))
                    .collect(),
                ..ApplyReport::default()
            });
        }
        *self.programmed.lock().unwrap() = wanted.clone();
        Ok(ApplyReport::default())
    }

    fn counters(&self) -> BTreeMap<u16, RouteCounters> {
        self.programmed
            .lock()
            .unwrap()
            .keys()
            .map(|p| {
                (
                    *p,
                    RouteCounters {
                        connections: 1,
                        bytes: u64::from(*p),
                    },
                )
            })
            .collect()
    }

    fn check_serving(&self) -> ServeCheck {
        self.unserved.lock().unwrap().clone()
    }
}

#[derive(Clone, Default)]
struct HttpRecorder {
    programmed: Arc<Mutex<BTreeMap<String, HttpRoute>>>,
}

impl HttpRouter for HttpRecorder {
    fn apply(&mut self, wanted: &BTreeMap<String, HttpRoute>) -> Result<ApplyReport> {
        *self.programmed.lock().unwrap() = wanted.clone();
        Ok(ApplyReport::default())
    }
}

fn config(api: &str, state: &Path) -> Config {
    let env = [
        ("CLEARML_API_HOST", api.to_string()),
        ("CLEARML_API_ACCESS_KEY", "ak".into()),
        ("CLEARML_API_SECRET_KEY", "sk".into()),
        ("TCP_ROUTER_ADDRESS", "203.0.113.7".into()),
        ("TCP_PORT_START", "31000".into()),
        ("TCP_PORT_END", "31009".into()),
        ("ROUTER_NAME", "r1".into()),
        ("ROUTER_URL", "https://router.example.com".into()),
        ("AUTH_ENABLED", "false".into()),
        ("ROUTER_STATE_DIR", state.display().to_string()),
        ("ROUTER_API_TIMEOUT", "1s".into()),
        ("ROUTER_PORT_GRACE", "0s".into()),
    ];
    let sources = crate::config::Sources::new(
        Vec::new(),
        env.iter().map(|(k, v)| (k.to_string(), v.clone())),
        None,
    )
    .unwrap();
    Config::from_sources(&sources).unwrap()
}

fn engine(cfg: &Config, tcp: &Recorder, http: &HttpRecorder) -> (Engine, SharedStatus) {
    let status = new_status(cfg);
    let e = Engine::new(
        cfg.clone(),
        Box::new(tcp.clone()),
        Box::new(http.clone()),
        status.clone(),
    )
    .unwrap();
    (e, status)
}

/// The set-up every test starts from: a mock ClearML server (no tasks yet), a state directory,
/// recording owners and an engine over them, not yet connected.
struct Harness {
    api: MockServer,
    state: tempfile::TempDir,
    cfg: Config,
    tcp: Recorder,
    http: HttpRecorder,
    engine: Engine,
    status: SharedStatus,
}

impl Harness {
    async fn new() -> Harness {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        let cfg = config(&api.url, state.path());
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let (engine, status) = engine(&cfg, &tcp, &http);
        Harness {
            api,
            state,
            cfg,
            tcp,
            http,
            engine,
            status,
        }
    }
}

fn ssh_request(addr: &str) -> serde_json::Value {
    json!({"_SERVICE": "EXTERNAL_TCP", "external_address": addr, "external_tcp_port": 22,
           "upstream_task_port": 22, "progress": "1"})
}

#[tokio::test]
async fn requests_are_served_written_back_and_removed() {
    let mut h = Harness::new().await;
    let (api, tcp, http, status, e) = (&h.api, &h.tcp, &h.http, &h.status, &mut h.engine);
    api.add_task("t1", ssh_request("10.1.0.5"));
    api.add_task(
        "h1",
        json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.1.0.6", "_PORT": 7860}),
    );
    e.connect_at_start().await.unwrap();
    assert_eq!(e.cycle().await, CycleOutcome::Synced);

    let programmed = tcp.programmed.lock().unwrap().clone();
    assert_eq!(programmed.len(), 1);
    assert_eq!(programmed[&31000].upstream, "10.1.0.5:22".parse().unwrap());
    let rt = api.task("t1")["runtime"].clone();
    assert_eq!(rt["external_address"], json!("203.0.113.7"));
    assert_eq!(rt["external_tcp_port"], json!(31000));
    assert_eq!(rt["upstream_task_address"], json!("10.1.0.5"));
    assert_eq!(rt["_ROUTER_NAME"], json!("r1"));
    assert_eq!(rt["progress"], json!("1"), "other keys kept");
    assert_eq!(
        http.programmed.lock().unwrap()["h1"].upstream,
        "10.1.0.6:7860".parse().unwrap()
    );
    assert_eq!(
        api.task("h1")["runtime"]["endpoint"],
        json!("https://router.example.com/service/h1/")
    );
    {
        let s = status.read().unwrap();
        assert!(s.ready, "{}", s.ready_reason);
        assert_eq!(s.clearml.state, "ok");
        assert_eq!(s.routes.len(), 2);
        assert!(
            s.routes.iter().all(|r| r.state == "active"),
            "{:?}",
            s.routes
        );
        let tcp_row = s.routes.iter().find(|r| r.kind == "tcp").unwrap();
        assert_eq!((tcp_row.connections, tcp_row.bytes), (Some(1), Some(31000)));
    }

    // Steady state: no write, no re-apply.
    let (edits, applies) = (api.calls("tasks.edit"), *tcp.applies.lock().unwrap());
    e.cycle().await;
    assert_eq!(api.calls("tasks.edit"), edits);
    assert_eq!(*tcp.applies.lock().unwrap(), applies);

    // The task stops: its route goes once a second answer agrees (one of two routed tasks
    // is half of them: the mass-removal guard holds the first answer).
    api.set("t1", "status", json!("stopped"));
    e.cycle().await;
    assert_eq!(tcp.programmed.lock().unwrap().len(), 1, "held");
    e.cycle().await;
    assert!(tcp.programmed.lock().unwrap().is_empty());
    assert_eq!(status.read().unwrap().ports.resting, 1);
    // Deleted: gone too.
    api.state.lock().unwrap().tasks.retain(|t| t["id"] != "h1");
    e.cycle().await;
    e.cycle().await;
    assert!(http.programmed.lock().unwrap().is_empty());
}

/// The e2e flake (`clearml_e2e::e2e_sdk_2_0_tcp_and_http_through_the_router`): the SDK saw
/// its HTTP endpoint, the test used it and ran `task-router status` before the cycle that
/// wrote it had published, so the table still said "1 tasks". When the endpoint lands on
/// the task, the status must already list its route and count its task.
#[tokio::test]
async fn the_status_lists_a_route_before_its_endpoint_reaches_the_task() {
    let mut h = Harness::new().await;
    let (api, status, e) = (&h.api, &h.status, &mut h.engine);
    api.add_task("t1", ssh_request("10.1.0.5"));
    e.connect_at_start().await.unwrap();
    assert_eq!(e.cycle().await, CycleOutcome::Synced);
    assert_eq!(status.read().unwrap().clearml.tasks, 1);

    api.add_task(
        "h1",
        json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.1.0.6", "_PORT": 7860}),
    );
    // What `status` showed at the moment each write-back carrying `endpoint` was stored.
    type Seen = (usize, Vec<(String, String, String)>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (seen_in_hook, status_in_hook) = (seen.clone(), status.clone());
    api.state.lock().unwrap().after_edit = Some(Box::new(move |rt| {
        if rt.contains_key("endpoint") {
            let s = status_in_hook.read().unwrap();
            let rows = s
                .routes
                .iter()
                .map(|r| (r.owner.id.task_id.clone(), r.kind.clone(), r.state.clone()))
                .collect();
            seen_in_hook.lock().unwrap().push((s.clearml.tasks, rows));
        }
    }));
    assert_eq!(e.cycle().await, CycleOutcome::Synced);
    assert_eq!(
        api.task("h1")["runtime"]["endpoint"],
        json!("https://router.example.com/service/h1/")
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one write-back of h1: {seen:?}");
    let (tasks, rows) = &seen[0];
    assert_eq!(
        *tasks, 2,
        "both tasks counted when h1's endpoint landed: {rows:?}"
    );
    assert!(
        rows.contains(&("h1".into(), "http".into(), "writing back".into())),
        "h1's route listed (being written back) when its endpoint landed: {rows:?}"
    );
    assert!(
        rows.contains(&("t1".into(), "tcp".into(), "active".into())),
        "{rows:?}"
    );
    // Once written, the end of the cycle shows it active.
    let s = status.read().unwrap();
    assert_eq!(s.clearml.tasks, 2);
    assert!(
        s.routes.iter().all(|r| r.state == "active"),
        "{:?}",
        s.routes
    );
}

#[tokio::test]
async fn api_faults_change_nothing_that_forwards() {
    let mut h = Harness::new().await;
    let (api, tcp, status, e) = (&h.api, &h.tcp, &h.status, &mut h.engine);
    api.add_task("t1", ssh_request("10.1.0.5"));
    e.connect_at_start().await.unwrap();
    e.cycle().await;
    let before = tcp.programmed.lock().unwrap().clone();
    assert_eq!(before.len(), 1);
    let applies = *tcp.applies.lock().unwrap();

    for fault in [
        Fault::Status500,
        Fault::Garbage,
        Fault::Hang(Duration::from_secs(3)),
    ] {
        api.fault(fault.clone());
        assert_eq!(e.cycle().await, CycleOutcome::ApiFailed, "{fault:?}");
        assert_eq!(*tcp.programmed.lock().unwrap(), before, "{fault:?}");
        assert_eq!(*tcp.applies.lock().unwrap(), applies, "{fault:?}");
        let s = status.read().unwrap();
        assert_eq!(s.clearml.state, "error");
        assert!(s.ready, "still ready: forwarding continues");
        assert_eq!(s.routes.len(), 1);
    }
    // The task vanishes from the listing and the by-id confirmation fails: kept.
    let hidden = api.task("t1");
    api.state.lock().unwrap().tasks.retain(|t| t["id"] != "t1");
    api.fault(Fault::Pass);
    api.fault(Fault::Status500);
    assert_eq!(e.cycle().await, CycleOutcome::ApiFailed);
    assert_eq!(*tcp.programmed.lock().unwrap(), before);
    // An expired token is refreshed within the cycle; the confirmation now says the task
    // is gone, so its route goes.
    api.fault(Fault::Expired);
    assert_eq!(e.cycle().await, CycleOutcome::Synced);
    assert_eq!(*tcp.programmed.lock().unwrap(), before, "held: one answer");
    assert_eq!(e.cycle().await, CycleOutcome::Synced);
    assert!(tcp.programmed.lock().unwrap().is_empty());
    // Back: routed again, on its old port (it is written on the task).
    api.state.lock().unwrap().tasks.push(hidden);
    assert_eq!(e.cycle().await, CycleOutcome::Synced);
    assert_eq!(*tcp.programmed.lock().unwrap(), before);
    assert_eq!(status.read().unwrap().clearml.state, "ok");
}

/// Task `t1` has its endpoint (router port 31000) and no longer the reason it had none.
fn assert_endpoint_written_and_reason_gone(api: &MockServer) {
    let rt = api.task("t1")["runtime"].clone();
    assert_eq!(rt["external_tcp_port"], json!(31000));
    assert!(
        rt.get(crate::reconcile::ENDPOINT_ERROR_KEY).is_none(),
        "{rt}"
    );
}

#[tokio::test]
async fn routes_not_programmed_get_the_reason_instead_of_the_endpoint() {
    let mut h = Harness::new().await;
    let (api, tcp, status, e) = (&h.api, &h.tcp, &h.status, &mut h.engine);
    api.add_task("t1", ssh_request("10.1.0.5"));
    *tcp.fail.lock().unwrap() = Some("map full".into());
    e.cycle().await;
    let rt = api.task("t1")["runtime"].clone();
    assert_eq!(rt["external_address"], json!("10.1.0.5"), "no endpoint");
    assert_eq!(rt[crate::reconcile::ENDPOINT_ERROR_KEY], json!("map full"));
    assert!(status.read().unwrap().routes[0].state.contains("map full"));
    // The same reason is not written (nor the task read) again.
    let calls = api.calls("tasks.get_by_id") + api.calls("tasks.edit");
    e.cycle().await;
    assert_eq!(
        api.calls("tasks.get_by_id") + api.calls("tasks.edit"),
        calls
    );
    // Fixed: programmed on the next cycle (the failed apply is retried), then written, and
    // the reason goes.
    *tcp.fail.lock().unwrap() = None;
    e.cycle().await;
    assert_endpoint_written_and_reason_gone(api);
}

/// Readiness means forwarding: a route the forwarder cannot serve (an external nginx that is
/// not running) makes the daemon not ready; its endpoint is not written; after the grace its
/// task gets the reason; once served the endpoint is written and the reason goes.
#[tokio::test]
async fn routes_the_forwarder_cannot_serve_are_not_ready_and_not_written_back() {
    let mut h = Harness::new().await;
    let (api, tcp, status, e) = (&h.api, &h.tcp, &h.status, &mut h.engine);
    api.add_task("t1", ssh_request("10.1.0.5"));
    let why = "nothing listens on port 31000";
    tcp.unserved.lock().unwrap().ports = BTreeMap::from([(31000, why.to_string())]);
    e.cycle().await;
    {
        let s = status.read().unwrap();
        assert!(!s.ready);
        assert!(s.ready_reason.contains(why), "{}", s.ready_reason);
        assert!(
            s.routes[0].state.starts_with("waiting to be served"),
            "{:?}",
            s.routes
        );
    }
    assert_eq!(
        api.calls("tasks.edit"),
        0,
        "nothing written during the grace"
    );

    e.owners.set_serve_grace(Duration::ZERO);
    e.cycle().await;
    let rt = api.task("t1")["runtime"].clone();
    assert_eq!(rt["external_address"], json!("10.1.0.5"), "no endpoint");
    assert_eq!(rt[crate::reconcile::ENDPOINT_ERROR_KEY], json!(why));
    assert!(
        status.read().unwrap().routes[0]
            .state
            .starts_with("not served")
    );

    *tcp.unserved.lock().unwrap() = ServeCheck::default();
    e.cycle().await;
    assert_endpoint_written_and_reason_gone(api);
    let s = status.read().unwrap();
    assert!(s.ready, "{}", s.ready_reason);
    assert_eq!(s.routes[0].state, "active");
}

#[tokio::test]
async fn a_restart_keeps_ports_and_forwards_while_the_api_is_down() {
    let Harness {
        api,
        state,
        cfg,
        tcp,
        engine: mut e,
        ..
    } = Harness::new().await;
    for i in 0..3 {
        api.add_task(&format!("t{i}"), ssh_request(&format!("10.1.0.{}", 10 + i)));
    }
    e.cycle().await;
    let before = tcp.programmed.lock().unwrap().clone();
    assert_eq!(before.len(), 3);
    drop(e);

    // Restart against an unreachable API: the last routes are applied at once.
    let down = config("http://127.0.0.1:1", state.path());
    let (tcp2, http2) = (Recorder::default(), HttpRecorder::default());
    let (mut e, status) = engine(&down, &tcp2, &http2);
    e.connect_at_start().await.unwrap();
    assert_eq!(e.cycle().await, CycleOutcome::ApiFailed);
    assert_eq!(*tcp2.programmed.lock().unwrap(), before);
    assert!(!status.read().unwrap().ready);
    assert!(
        status
            .read()
            .unwrap()
            .ready_reason
            .contains("first ClearML sync")
    );
    drop(e);

    // Restart with the API up and the local state lost: the ports written on the tasks win.
    std::fs::remove_file(state.path().join("ports.json")).unwrap();
    let (tcp3, http3) = (Recorder::default(), HttpRecorder::default());
    let (mut e, _) = engine(&cfg, &tcp3, &http3);
    e.cycle().await;
    assert_eq!(*tcp3.programmed.lock().unwrap(), before);
}

#[tokio::test]
async fn unknown_queue_and_bad_credentials_stop_the_start() {
    let h = Harness::new().await;
    let api = &h.api;
    let mut cfg = h.cfg.clone();
    cfg.clearml.listen_queues = vec!["gpu".into()];
    let (mut e, _) = engine(&cfg, &h.tcp, &h.http);
    let err = format!("{:#}", e.connect_at_start().await.unwrap_err());
    assert!(err.contains("queue \"gpu\""), "{err}");
    api.state.lock().unwrap().queues = vec![("qid".into(), "gpu".into())];
    let (mut e, _) = engine(&cfg, &h.tcp, &h.http);
    e.connect_at_start().await.unwrap();
    assert_eq!(e.clearml.settings().queue_ids, ["qid"]);
    cfg.clearml.secret_key = "wrong".into();
    let (mut e, _) = engine(&cfg, &h.tcp, &h.http);
    let err = format!("{:#}", e.connect_at_start().await.unwrap_err());
    assert!(err.contains("credentials refused"), "{err}");
}

#[tokio::test]
async fn an_answer_that_drops_every_task_is_held_until_confirmed() {
    let mut h = Harness::new().await;
    let (api, tcp, status, e) = (&h.api, &h.tcp, &h.status, &mut h.engine);
    for i in 0..4 {
        api.add_task(&format!("t{i}"), ssh_request(&format!("10.1.0.{}", 10 + i)));
    }
    e.connect_at_start().await.unwrap();
    e.cycle().await;
    let before = tcp.programmed.lock().unwrap().clone();
    assert_eq!(before.len(), 4);

    // The server loses every task (an empty database behind it): the listing and the
    // by-id confirmation both say so. One answer: held, and every surface says why.
    let saved = std::mem::take(&mut api.state.lock().unwrap().tasks);
    assert_eq!(e.cycle().await, CycleOutcome::Synced);
    assert_eq!(*tcp.programmed.lock().unwrap(), before);
    {
        let s = status.read().unwrap();
        assert!(s.ready);
        assert_eq!(s.clearml.held_removals, 4);
        assert_eq!(s.clearml.held_cycles, 1);
        assert!(
            s.degraded
                .iter()
                .any(|d| d.contains("drops 4 routed tasks")),
            "{:?}",
            s.degraded
        );
    }
    // The tasks come back: nothing was lost, nothing rewritten.
    api.state.lock().unwrap().tasks = saved.clone();
    let edits = api.calls("tasks.edit");
    e.cycle().await;
    assert_eq!(*tcp.programmed.lock().unwrap(), before);
    assert_eq!(api.calls("tasks.edit"), edits);
    assert_eq!(status.read().unwrap().clearml.held_removals, 0);
    assert!(status.read().unwrap().degraded.is_empty());

    // Gone for real: two agreeing answers remove every route.
    api.state.lock().unwrap().tasks.clear();
    e.cycle().await;
    assert_eq!(*tcp.programmed.lock().unwrap(), before);
    e.cycle().await;
    assert!(tcp.programmed.lock().unwrap().is_empty());
    assert_eq!(status.read().unwrap().clearml.held_cycles, 2);
}
