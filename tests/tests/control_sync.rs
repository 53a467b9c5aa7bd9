//! The control plane against the ClearML test server: requests written by the SDK and by
//! clearml-session appear as routes, are written back as the SDK expects, and go when the task
//! ends; API faults (500s, timeouts, malformed answers, expired tokens) change nothing that was
//! forwarding; paging, listened queues and several routers on one server.
//!
//! The sync engine runs in-process with recording route owners (what the kernel datapath and
//! nginx are asked to serve); the last tests run the real daemon binary.

use router_tests::clearml_server::{ClearmlServer, FaultKind, TaskSpec};
use router_tests::engine::{RecordingEngine, clearml_config};
use router_tests::http_client;
use router_tests::netns::Netns;
use router_tests::scenario::{DaemonSetup, clearml_server_in};
use router_tests::topology::ClientRouter;
use router_tests::{daemon_binary, require_root};
use router_userspace::config::Config;
use router_userspace::daemon::CycleOutcome;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const ROUTER_ADDRESS: &str = "203.0.113.7";

/// A temporary directory of the test's own, removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("task-router-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

fn config(server: &ClearmlServer, state: &Path, extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS),
        ("TCP_PORT_START", "30000"),
        ("TCP_PORT_END", "30099"),
        ("ROUTER_NAME", "edge-a"),
        ("ROUTER_URL", "https://router.example.com"),
        // Generous: the whole suite runs in parallel on two shared cores.
        ("ROUTER_API_TIMEOUT", "3s"),
        ("ROUTER_POLL_INTERVAL", "200ms"),
    ];
    vars.extend_from_slice(extra);
    clearml_config(server, state, &vars)
}

/// The engine synced with `server`, its state in `state`, `extra` variables on top.
async fn engine(
    server: &ClearmlServer,
    state: &tempfile::TempDir,
    extra: &[(&str, &str)],
) -> RecordingEngine {
    RecordingEngine::start(config(server, state.path(), extra)).await
}

fn running(name: &str, runtime: Value) -> TaskSpec {
    TaskSpec::new(name)
        .status("in_progress")
        .system_tags(&["external_service"])
        .runtime(runtime)
}

fn tcp_request(addr: &str, port: u16) -> Value {
    // What `Task.request_external_endpoint(port, protocol="tcp")` writes (SDK 2.1).
    json!({"_SERVICE": "EXTERNAL_TCP", "external_address": addr, "external_tcp_port": port,
           "upstream_task_port": port, "CLEARML VERSION": "2.1.12"})
}

#[tokio::test]
async fn requests_are_served_written_back_and_removed_when_the_task_ends() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let gpu = admin.create_queue("gpu");
    let cpu = admin.create_queue("cpu");
    let sdk = admin.create_task(running("sdk tcp", tcp_request("10.5.0.10", 22)).queue(&gpu));
    // clearml-session: a string port, no upstream_task_port, session bookkeeping keys.
    let session = admin.create_task(
        TaskSpec::new("interactive session")
            .status("in_progress")
            .system_tags(&["external_service", "interactive"])
            .queue(&gpu)
            .runtime(
                json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.5.0.11",
                            "external_tcp_port": "10022", "_ssh_password": "pw",
                            "internal_ssh_port": 10022}),
            ),
    );
    // A hidden app with a default and a named HTTP endpoint.
    let app = admin.create_task(
        TaskSpec::new("gradio app")
            .status("in_progress")
            .system_tags(&["external_service", "hidden"])
            .queue(&gpu)
            .runtime(
                json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.5.0.12", "_PORT": 7860,
                            "_SERVICE__api": "EXTERNAL", "_ADDRESS__api": "10.5.0.12",
                            "_PORT__api": "8000", "progress": "10"}),
            ),
    );
    let other_queue =
        admin.create_task(running("cpu task", tcp_request("10.5.0.13", 22)).queue(&cpu));
    let untagged = admin.create_task(
        TaskSpec::new("untagged")
            .status("in_progress")
            .queue(&gpu)
            .runtime(tcp_request("10.5.0.14", 22)),
    );
    let foreign = admin.create_task(
        running(
            "other router's",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.5.0.15", "_PORT": 80,
                   "_ROUTER_NAME": "edge-b", "endpoint": "https://b.example.com/service/x/"}),
        )
        .queue(&gpu),
    );
    let evil = admin.create_task(running("evil", tcp_request("127.0.0.1", 22)).queue(&gpu));

    let state = temp_dir("sync");
    let mut r = engine(&server, &state, &[("LISTEN_QUEUE_NAME", "gpu")]).await;
    assert_eq!(r.cycle().await, CycleOutcome::Synced);

    // TCP: routes programmed, then written back as the SDK waits for them.
    let tcp = r.tcp.programmed();
    assert_eq!(tcp.len(), 2, "{tcp:?}");
    let port_of = |task: &str| {
        *tcp.iter()
            .find(|(_, route)| route.owner.id.task_id == task)
            .unwrap_or_else(|| panic!("no route for {task}: {tcp:?}"))
            .0
    };
    let (sdk_port, session_port) = (port_of(&sdk), port_of(&session));
    assert_eq!(
        tcp[&sdk_port].upstream,
        "10.5.0.10:22".parse().expect("addr")
    );
    assert_eq!(
        tcp[&session_port].upstream,
        "10.5.0.11:10022".parse().expect("addr")
    );
    let rt = admin.runtime(&sdk);
    assert_eq!(rt["external_address"], json!(ROUTER_ADDRESS));
    assert_eq!(rt["external_tcp_port"], json!(sdk_port));
    assert_eq!(rt["upstream_task_port"], json!(22));
    assert_eq!(rt["upstream_task_address"], json!("10.5.0.10"));
    assert_eq!(rt["_ROUTER_NAME"], json!("edge-a"));
    assert_eq!(
        rt["CLEARML VERSION"],
        json!("2.1.12"),
        "the task's keys are kept"
    );
    let rt = admin.runtime(&session);
    assert_eq!(rt["external_address"], json!(ROUTER_ADDRESS));
    assert_eq!(rt["external_tcp_port"], json!(session_port));
    assert_eq!(rt["_ssh_password"], json!("pw"));

    // HTTP: both endpoints of the hidden app, with the agreed URLs.
    let http = r.http.programmed();
    assert_eq!(http.len(), 2, "{http:?}");
    assert_eq!(http[&app].upstream, "10.5.0.12:7860".parse().expect("addr"));
    assert_eq!(
        http[&format!("{app}__api")].upstream,
        "10.5.0.12:8000".parse().expect("addr")
    );
    let rt = admin.runtime(&app);
    let url = format!("https://router.example.com/service/{app}/");
    assert_eq!(rt["endpoint"], json!(url));
    assert_eq!(rt["browser_endpoint"], json!(url));
    assert_eq!(
        rt["endpoint__api"],
        json!(format!("https://router.example.com/service/{app}__api/"))
    );
    assert_eq!(rt["_ROUTER_NAME__api"], json!("edge-a"));
    assert_eq!(rt["progress"], json!("10"));

    // Left alone: another queue, no tag, another router's claim. Refused with a reason: loopback.
    for id in [&other_queue, &untagged] {
        assert!(
            admin.runtime(id).get("_ROUTER_NAME").is_none(),
            "{id} touched"
        );
    }
    assert_eq!(admin.runtime(&foreign)["_ROUTER_NAME"], json!("edge-b"));
    assert_eq!(
        admin.runtime(&foreign)["endpoint"],
        json!("https://b.example.com/service/x/")
    );
    let status = r.status();
    assert!(status.ready, "{}", status.ready_reason);
    assert_eq!(status.clearml.foreign, 1);
    let refusal = status
        .refused
        .iter()
        .find(|f| f.owner.id.task_id == evil)
        .expect("the loopback request is refused");
    assert!(refusal.reason.contains("loopback"), "{}", refusal.reason);
    assert!(admin.runtime(&evil).get("_ROUTER_NAME").is_none());

    // Steady state: nothing is written again.
    let edits = admin.calls("tasks.edit");
    r.cycle().await;
    assert_eq!(admin.calls("tasks.edit"), edits);

    // The task stops (aborted): its route goes, its port rests.
    assert!(admin.set_status(&sdk, "stopped"));
    r.cycle().await;
    assert!(!r.tcp.programmed().contains_key(&sdk_port));
    assert_eq!(r.status().ports.resting, 1);
    // tasks.reset: runtime cleared, tag kept: no request, route gone. One of the two routed
    // tasks is half of them: the mass-removal guard wants a second answer that agrees.
    assert!(admin.update_task(&session, json!({"runtime": {}})));
    r.cycle().await;
    assert_eq!(r.tcp.programmed().len(), 1, "held for one cycle");
    assert_eq!(r.status().clearml.held_removals, 1);
    r.cycle().await;
    assert!(r.tcp.programmed().is_empty());
    // Archived, then deleted: the HTTP routes go (the only routed task: two answers).
    assert!(admin.update_task(
        &app,
        json!({"system_tags": ["external_service", "hidden", "archived"]})
    ));
    r.cycle().await;
    r.cycle().await;
    assert!(r.http.programmed().is_empty());
    assert!(admin.update_task(&app, json!({"system_tags": ["external_service", "hidden"]})));
    r.cycle().await;
    assert_eq!(r.http.programmed().len(), 2, "unarchived: served again");
    assert!(admin.delete_task(&app));
    r.cycle().await;
    assert_eq!(r.http.programmed().len(), 2, "held for one cycle");
    r.cycle().await;
    assert!(r.http.programmed().is_empty());
}

#[tokio::test]
async fn api_faults_change_nothing_that_forwards() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            admin.create_task(running(
                &format!("t{i}"),
                tcp_request(&format!("10.6.0.{}", 10 + i), 22),
            ))
        })
        .collect();
    let state = temp_dir("fault");
    let mut r = engine(&server, &state, &[]).await;
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    let before = r.tcp.programmed();
    assert_eq!(before.len(), 3);
    let applies = r.tcp.applies();

    let faults = [
        (
            "HTTP 500",
            FaultKind::Error {
                code: 500,
                subcode: 102,
                msg: "database unavailable".into(),
            },
        ),
        ("a timeout", FaultKind::Delay(Duration::from_secs(5))),
        ("a malformed answer", FaultKind::Malformed),
        (
            "HTTP 503",
            FaultKind::Error {
                code: 503,
                subcode: 0,
                msg: "maintenance".into(),
            },
        ),
    ];
    for (what, fault) in faults {
        admin.inject(fault, 1, Some("tasks.get_all"));
        assert_eq!(r.cycle().await, CycleOutcome::ApiFailed, "{what}");
        assert_eq!(r.tcp.programmed(), before, "{what} changed the routes");
        assert_eq!(r.tcp.applies(), applies, "{what} made the owner apply");
        let s = r.status();
        assert_eq!(s.clearml.state, "error", "{what}");
        assert!(s.clearml.error.is_some());
        assert!(s.ready, "forwarding continues: still ready");
        assert_eq!(s.routes.len(), 3);
    }
    // The whole listing fails on its second page: still nothing changes.
    admin.inject(FaultKind::Malformed, 5, None);
    assert_eq!(r.cycle().await, CycleOutcome::ApiFailed);
    assert_eq!(r.tcp.programmed(), before);
    admin.clear_faults();

    // An expired token: the client logs in again within the cycle (one 401, one login).
    let logins = admin.calls("auth.login");
    admin.expire_tokens();
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    assert_eq!(admin.calls("auth.login"), logins + 1);
    assert_eq!(r.tcp.programmed(), before);
    assert_eq!(r.status().clearml.state, "ok");

    // A write-back that fails is retried on the next cycle; the route stays programmed.
    let late = admin.create_task(running("late", tcp_request("10.6.0.20", 22)));
    admin.inject(
        FaultKind::Error {
            code: 500,
            subcode: 0,
            msg: "injected".into(),
        },
        1,
        Some("tasks.edit"),
    );
    r.cycle().await;
    let port = *r
        .tcp
        .programmed()
        .iter()
        .find(|(_, route)| route.owner.id.task_id == late)
        .expect("route programmed before the write-back")
        .0;
    let s = r.status();
    let row = s
        .routes
        .iter()
        .find(|row| row.owner.id.task_id == late)
        .expect("row");
    assert!(row.state.contains("write-back failed"), "{}", row.state);
    r.cycle().await;
    assert_eq!(admin.runtime(&late)["external_tcp_port"], json!(port));
    assert!(r.status().routes.iter().all(|row| row.state == "active"));
    for id in &ids {
        assert_eq!(admin.runtime(id)["_ROUTER_NAME"], json!("edge-a"));
    }
}

#[tokio::test]
async fn a_task_writing_its_runtime_at_the_same_moment_loses_nothing() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let t = admin.create_task(running("busy", tcp_request("10.6.1.10", 22)));
    // The task's own read-modify-write lands right after ours, from the dict it read before:
    // our keys vanish, its new key appears.
    let stale = admin.runtime(&t);
    let mut once = Some(stale.clone());
    admin.after_edit(move |_, runtime| {
        if let Some(mut theirs) = once.take() {
            theirs.insert("progress".into(), json!("50"));
            *runtime = theirs;
        }
    });
    let state = temp_dir("race");
    let mut r = engine(&server, &state, &[]).await;
    let edits = admin.calls("tasks.edit");
    r.cycle().await;
    assert_eq!(
        admin.calls("tasks.edit"),
        edits + 2,
        "lost once, written again"
    );
    let rt = admin.runtime(&t);
    let port = *r.tcp.programmed().keys().next().expect("route");
    assert_eq!(rt["external_tcp_port"], json!(port));
    assert_eq!(rt["external_address"], json!(ROUTER_ADDRESS));
    assert_eq!(
        rt["progress"],
        json!("50"),
        "the task's concurrent write is kept"
    );

    // A writer that always wins: bounded attempts, the route stays, the state says why, and the
    // next cycle tries again.
    let u = admin.create_task(running("stubborn", tcp_request("10.6.1.11", 22)));
    let original = admin.runtime(&u);
    let target = u.clone();
    admin.after_edit(move |id, runtime| {
        if id == target {
            *runtime = original.clone();
        }
    });
    r.cycle().await;
    let s = r.status();
    let row = s
        .routes
        .iter()
        .find(|row| row.owner.id.task_id == u)
        .expect("route of u");
    assert!(row.state.contains("overwritten 3 times"), "{}", row.state);
    admin.clear_after_edit();
    r.cycle().await;
    assert_eq!(admin.runtime(&u)["_ROUTER_NAME"], json!("edge-a"));
    assert!(r.status().routes.iter().all(|row| row.state == "active"));
}

/// The lost update the other way round: the task's own read-modify-write lands between the
/// router's read of the task and the router's write (a second endpoint request, written as the
/// SDK writes it). A write built from the older read would drop the request; the router reads
/// the task again right before writing, sees the runtime moved, and starts over from the newer
/// dict, so the request is kept and served on the next cycle.
#[tokio::test]
async fn a_task_writing_between_the_routers_read_and_write_keeps_its_keys() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let t = admin.create_task(running("sdk", tcp_request("10.6.2.10", 22)));
    let mut once = true;
    admin.after_read(move |_, runtime| {
        if std::mem::take(&mut once) {
            runtime.insert("_SERVICE__ui".into(), json!("EXTERNAL"));
            runtime.insert("_ADDRESS__ui".into(), json!("10.6.2.10"));
            runtime.insert("_PORT__ui".into(), json!(7000));
        }
    });
    let state = temp_dir("lost");
    let mut r = engine(&server, &state, &[]).await;
    let edits = admin.calls("tasks.edit");
    r.cycle().await;
    let rt = admin.runtime(&t);
    let port = *r.tcp.programmed().keys().next().expect("route");
    assert_eq!(rt["external_tcp_port"], json!(port), "{rt:?}");
    assert_eq!(
        rt["_PORT__ui"],
        json!(7000),
        "the task's request was dropped: {rt:?}"
    );
    assert_eq!(
        admin.calls("tasks.edit"),
        edits + 1,
        "one write, from the newer dict"
    );
    assert!(r.status().clearml.concurrent_writes >= 1);
    // The kept request is served on the next cycle.
    r.cycle().await;
    assert_eq!(
        admin.runtime(&t)["endpoint__ui"],
        json!(format!("https://router.example.com/service/{t}__ui/"))
    );
    assert!(r.http.programmed().contains_key(&format!("{t}__ui")));

    // A task that writes between every read and write (a counter bumped on each of our reads):
    // the router gives up for this cycle without writing, so not one of its writes is lost;
    // the next cycle, once it is quiet, writes.
    let u = admin.create_task(running("busy", tcp_request("10.6.2.11", 22)));
    let target = u.clone();
    let bumps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = bumps.clone();
    admin.after_read(move |id, runtime| {
        if id == target {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            runtime.insert("progress".into(), json!(n));
        }
    });
    r.cycle().await;
    let n = bumps.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= 2, "the hook ran {n} times");
    let rt = admin.runtime(&u);
    assert_eq!(
        rt["progress"],
        json!(n),
        "a write of the task was lost: {rt:?}"
    );
    let s = r.status();
    let row = s
        .routes
        .iter()
        .find(|row| row.owner.id.task_id == u)
        .expect("row");
    assert!(row.state.contains("keeps changing"), "{}", row.state);
    admin.clear_after_read();
    r.cycle().await;
    let rt = admin.runtime(&u);
    assert_eq!(rt["_ROUTER_NAME"], json!("edge-a"));
    assert_eq!(rt["progress"], json!(n));
}

/// The SDK 2.0 e2e flow (TCP task routed, then an HTTP request): the moment the router's
/// `tasks.edit` stores the HTTP endpoint, the task may read it, use it and an operator may run
/// `task-router status`; the status must already list that route and count its task (it used
/// to be published only after the write-back and the state files, so `status` could still
/// say "1 tasks" with the endpoint in use).
#[tokio::test]
async fn an_endpoint_the_task_can_read_is_already_in_the_status() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let tcp_task = admin.create_task(running("tcp echo", tcp_request("10.6.3.10", 9000)));
    let state = temp_dir("published");
    let mut r = engine(&server, &state, &[]).await;
    r.cycle().await;
    assert_eq!(r.status().clearml.tasks, 1);

    // What SDK 2.0.x's request_external_endpoint(8080, "http") leaves on its task.
    let http_task = admin.create_task(running(
        "web app",
        json!({"CLEARML VERSION": "2.0.2", "CLI": "endpoint_task.py", "progress": "0",
               "_SERVICE": "EXTERNAL", "_ADDRESS": "10.6.3.11", "_PORT": 8080}),
    ));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen_in_hook, status) = (seen.clone(), r.status.clone());
    let target = http_task.clone();
    admin.after_edit(move |id, runtime| {
        if id == target && runtime.contains_key("endpoint") {
            let s = status.read().expect("status").clone();
            seen_in_hook.lock().expect("seen").push(s);
        }
    });
    r.cycle().await;
    admin.clear_after_edit();
    assert_eq!(
        admin.runtime(&http_task)["endpoint"],
        json!(format!("https://router.example.com/service/{http_task}/"))
    );
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "one write-back of the HTTP endpoint");
    let at_write = &seen[0];
    let rows: Vec<(&str, &str)> = at_write
        .routes
        .iter()
        .map(|row| (row.owner.id.task_id.as_str(), row.kind.as_str()))
        .collect();
    assert_eq!(
        at_write.clearml.tasks, 2,
        "both tasks counted when the endpoint landed: {rows:?}"
    );
    assert!(
        rows.contains(&(tcp_task.as_str(), "tcp")) && rows.contains(&(http_task.as_str(), "http")),
        "both routes listed when the endpoint landed: {rows:?}"
    );
    let row = at_write
        .routes
        .iter()
        .find(|row| row.owner.id.task_id == http_task)
        .expect("row");
    assert_eq!(row.state, "writing back");
    assert!(r.status().routes.iter().all(|row| row.state == "active"));
}

#[tokio::test]
async fn paging_reads_every_task_in_few_calls() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    for i in 0..1203u32 {
        admin.create_task(running(
            &format!("t{i}"),
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": format!("10.7.{}.{}", i / 250, i % 250 + 1),
                   "_PORT": 8080}),
        ));
    }
    let state = temp_dir("page");
    let mut r = engine(&server, &state, &[]).await;
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    assert_eq!(r.http.programmed().len(), 1203);
    admin.reset_call_counts();
    r.cycle().await;
    assert_eq!(admin.calls("tasks.get_all"), 3, "pages of 500, 500 and 203");
    assert_eq!(admin.calls("tasks.edit"), 0);
}

#[tokio::test]
async fn several_routers_share_one_server_without_touching_each_others_tasks() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let (qa, qb) = (admin.create_queue("queue-a"), admin.create_queue("queue-b"));
    let ta = admin.create_task(running("a", tcp_request("10.8.0.10", 22)).queue(&qa));
    let tb = admin.create_task(running("b", tcp_request("10.8.0.11", 22)).queue(&qb));
    let (sa, sb) = (temp_dir("ra"), temp_dir("rb"));
    let mut a = engine(
        &server,
        &sa,
        &[("ROUTER_NAME", "edge-a"), ("LISTEN_QUEUE_NAME", "queue-a")],
    )
    .await;
    let mut b = engine(
        &server,
        &sb,
        &[
            ("ROUTER_NAME", "edge-b"),
            ("LISTEN_QUEUE_NAME", "queue-b"),
            ("TCP_ROUTER_ADDRESS", "203.0.113.8"),
        ],
    )
    .await;
    a.cycle().await;
    b.cycle().await;
    assert_eq!(admin.runtime(&ta)["_ROUTER_NAME"], json!("edge-a"));
    assert_eq!(admin.runtime(&tb)["_ROUTER_NAME"], json!("edge-b"));
    assert_eq!(admin.runtime(&tb)["external_address"], json!("203.0.113.8"));
    assert_eq!(a.tcp.programmed().len(), 1);
    assert_eq!(b.tcp.programmed().len(), 1);

    // A third router listening to every queue leaves both claimed tasks alone.
    let sc = temp_dir("rc");
    let mut c = engine(&server, &sc, &[("ROUTER_NAME", "edge-c")]).await;
    let edits = admin.calls("tasks.edit");
    c.cycle().await;
    assert!(c.tcp.programmed().is_empty());
    assert_eq!(c.status().clearml.foreign, 2);
    assert_eq!(admin.calls("tasks.edit"), edits);
    a.cycle().await;
    b.cycle().await;
    assert_eq!(a.tcp.programmed().len() + b.tcp.programmed().len(), 2);
}

#[tokio::test]
async fn a_restarted_router_keeps_every_port() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    for i in 0..5 {
        admin.create_task(running(
            &format!("t{i}"),
            tcp_request(&format!("10.9.0.{}", 10 + i), 22),
        ));
    }
    let state = temp_dir("restart");
    let cfg = config(&server, state.path(), &[]);
    let mut r = RecordingEngine::start(cfg.clone()).await;
    r.cycle().await;
    let before = r.tcp.programmed();
    assert_eq!(before.len(), 5);
    drop(r);

    // Restarted while the API fails: the last routes are re-applied at once, unchanged.
    admin.inject(
        FaultKind::Error {
            code: 500,
            subcode: 0,
            msg: "down".into(),
        },
        1000,
        None,
    );
    let mut r = RecordingEngine::start(cfg.clone()).await;
    assert_eq!(r.cycle().await, CycleOutcome::ApiFailed);
    assert_eq!(r.tcp.programmed(), before);
    assert!(r.status().ready_reason.contains("first ClearML sync"));
    admin.clear_faults();
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    assert_eq!(r.tcp.programmed(), before);
    drop(r);

    // Restarted with the local state gone: the ports written on the tasks win.
    std::fs::remove_dir_all(state.path()).expect("wipe state");
    let mut r = RecordingEngine::start(cfg).await;
    r.cycle().await;
    assert_eq!(r.tcp.programmed(), before);
}

/// A task asking for TCP endpoints `names` ("" = the default one), each to `addr`.
fn tcp_requests(addr: &str, names: &[&str]) -> Value {
    let mut rt = serde_json::Map::new();
    for name in names {
        let sfx = if name.is_empty() {
            String::new()
        } else {
            format!("__{name}")
        };
        rt.insert(format!("_SERVICE{sfx}"), json!("EXTERNAL_TCP"));
        rt.insert(format!("external_address{sfx}"), json!(addr));
        rt.insert(format!("external_tcp_port{sfx}"), json!(22));
    }
    Value::Object(rt)
}

#[tokio::test]
async fn a_task_over_the_endpoint_limit_gets_the_limit_and_the_rest_are_refused() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    // Five requests, limit two.
    let greedy = admin.create_task(running(
        "greedy",
        tcp_requests("10.9.1.10", &["", "a", "b", "c", "d"]),
    ));
    let modest = admin.create_task(running("modest", tcp_request("10.9.1.11", 22)));
    let state = temp_dir("limit");
    let mut r = engine(&server, &state, &[("ROUTER_MAX_ENDPOINTS_PER_TASK", "2")]).await;
    assert_eq!(r.cycle().await, CycleOutcome::Synced);

    let tcp = r.tcp.programmed();
    let endpoints_of = |task: &str| {
        let mut v: Vec<String> = tcp
            .values()
            .filter(|route| route.owner.id.task_id == task)
            .map(|route| route.owner.id.endpoint.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(endpoints_of(&greedy), ["", "a"], "{tcp:?}");
    assert_eq!(endpoints_of(&modest), [""], "the other task gets its port");
    assert_eq!(tcp.len(), 3);

    // The server shows the limit written back, the rest untouched.
    let rt = admin.runtime(&greedy);
    for sfx in ["", "__a"] {
        assert_eq!(rt[&format!("external_address{sfx}")], json!(ROUTER_ADDRESS));
        assert_eq!(rt[&format!("_ROUTER_NAME{sfx}")], json!("edge-a"));
    }
    for sfx in ["__b", "__c", "__d"] {
        assert_eq!(rt[&format!("external_address{sfx}")], json!("10.9.1.10"));
        assert_eq!(rt[&format!("external_tcp_port{sfx}")], json!(22));
        assert!(rt.get(&format!("_ROUTER_NAME{sfx}")).is_none(), "{sfx}");
    }
    assert_eq!(
        admin.runtime(&modest)["external_address"],
        json!(ROUTER_ADDRESS)
    );

    // Status (what the admin endpoint and `task-router status` show) lists the refusals.
    let status = r.status();
    let mut refused: Vec<&str> = status
        .refused
        .iter()
        .filter(|f| f.owner.id.task_id == greedy)
        .map(|f| f.owner.id.endpoint.as_str())
        .collect();
    refused.sort();
    assert_eq!(refused, ["b", "c", "d"], "{:?}", status.refused);
    assert_eq!(status.refused.len(), 3);
    let table = router_userspace::admin::render(&status);
    for name in ["b", "c", "d"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{greedy}__{name}")))
            .unwrap_or_else(|| panic!("refusal of {name} not shown:\n{table}"));
        assert!(
            row.contains(&format!("task {greedy} asks for more than"))
                && row.contains("ROUTER_MAX_ENDPOINTS_PER_TASK=2"),
            "{row}"
        );
    }

    // Steady: the same choice next cycle, nothing written again.
    let edits = admin.calls("tasks.edit");
    r.cycle().await;
    assert_eq!(r.tcp.programmed(), tcp);
    assert_eq!(admin.calls("tasks.edit"), edits);
    assert_eq!(r.status().refused, status.refused);
    drop(r);

    // Restarted with a lower limit: the routes in force stay, nothing is torn down or written.
    let mut r = engine(&server, &state, &[("ROUTER_MAX_ENDPOINTS_PER_TASK", "1")]).await;
    assert_eq!(r.cycle().await, CycleOutcome::Synced);
    assert_eq!(r.tcp.programmed(), tcp);
    assert_eq!(admin.calls("tasks.edit"), edits);
    assert!(
        r.status()
            .refused
            .iter()
            .all(|f| f.reason.contains("ROUTER_MAX_ENDPOINTS_PER_TASK=1")),
        "{:?}",
        r.status().refused
    );
}

// ------------------------------------------------------------------------------------------
// The daemon binary.

/// `task-router run` in `ns` on `iface`, synced with `server`.
fn daemon_setup<'a>(ns: &'a Netns, server: &ClearmlServer, iface: &str) -> DaemonSetup<'a> {
    DaemonSetup::new(ns)
        .interface(iface)
        .args(["--poll-interval", "200ms"])
        .clearml(server)
        .env("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS)
        .env("ROUTER_NAME", "edge-bin")
        .env("AUTH_ENABLED", "false")
        .env("ROUTER_API_TIMEOUT", "3s")
}

/// `GET /readyz` from inside `ns`: the status code and the body.
fn readyz(ns: &Netns) -> (u16, String) {
    let admin: SocketAddr = "127.0.0.1:9180".parse().expect("addr");
    let r = http_client::get_in(ns, admin, "/readyz", &[]).expect("readyz");
    (r.status, r.text())
}

#[test]
fn the_daemon_waits_for_the_first_sync_and_shows_refusals_in_status() {
    require_root();
    let net = ClientRouter::new(&[206]).expect("client and router namespaces");
    let (router, r) = (&net.router, net.router_end(0));
    let server = clearml_server_in(router);
    let admin = server.admin();
    let evil = admin.create_task(running("evil", tcp_request("169.254.169.254", 80)));
    // Six failed listings: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of back-off, then it heals by itself.
    admin.inject(
        FaultKind::Error {
            code: 500,
            subcode: 0,
            msg: "down".into(),
        },
        6,
        Some("tasks.get_all"),
    );
    let mut daemon = daemon_setup(router, &server, &r.dev).spawn();
    daemon.wait_for_log("admin endpoint listening", Duration::from_secs(20));
    daemon.wait_for_log("ClearML API unavailable", Duration::from_secs(20));
    // The failure is logged inside the cycle and the status is published at its end, so the
    // first read may still see the initial "starting".
    let (code, body) = router_tests::wait::until(
        "the status of the first failed sync",
        Duration::from_secs(20),
        || {
            let (code, body) = readyz(router);
            (!body.contains("starting")).then_some((code, body))
        },
    );
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the first ClearML sync"),
        "{body}"
    );

    daemon.wait_for_log("ClearML API reachable again", Duration::from_secs(30));
    daemon.wait_for_log("ready", Duration::from_secs(10));
    let (code, _) = readyz(router);
    assert_eq!(code, 200);
    let line = daemon.wait_for_log("endpoint request refused", Duration::from_secs(20));
    assert!(
        line.contains(&evil) && line.contains("link-local"),
        "{line}"
    );
    let out = router
        .command(daemon_binary().to_str().expect("utf-8"))
        .args(["status"])
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("clearml: ok"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&evil))
        .unwrap_or_else(|| panic!("refusal not shown:\n{table}"));
    assert!(
        row.contains("address 169.254.169.254 is link-local"),
        "{row}"
    );
    daemon.terminate();
}

#[test]
fn an_unknown_queue_or_bad_credentials_stop_start_up() {
    require_root();
    let net = ClientRouter::new(&[207]).expect("client and router namespaces");
    let (router, r) = (&net.router, net.router_end(0));
    let server = clearml_server_in(router);
    // Run to completion here, not through `Daemon`: the pins need a bpffs of this test's own.
    let pins = router_tests::pins::PinRoot::new("trsq");
    let out = daemon_setup(router, &server, &r.dev)
        .env("ROUTER_BPFFS", pins.path())
        .env("LISTEN_QUEUE_NAME", "gpu-queue")
        .run_to_end();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("queue \"gpu-queue\""), "{stderr}");
    assert!(!stderr.contains("admin endpoint listening"), "{stderr}");

    let out = daemon_setup(router, &server, &r.dev)
        .env("ROUTER_BPFFS", pins.path())
        .env("CLEARML_API_SECRET_KEY", "wrong")
        .run_to_end();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("credentials refused"), "{stderr}");
}
