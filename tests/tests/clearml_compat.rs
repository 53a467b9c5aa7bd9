//! What real ClearML installs do that the router must follow (issue 17, research in
//! `docs/clearml-compat-notes.md`), each against the test server posing as the real thing:
//! the atomic `tasks.edit_runtime` of server 2.3.0 and the read-merge-write of older releases,
//! endpoint names of any shape, the names and certificates of real installs, and tasks the
//! open-source Kubernetes glue moved to its own queue.
//!
//! The sync engine runs in-process with recording route owners (what the datapath and nginx
//! are asked to serve); the configuration tests run the `task-router` binary.

use router_tests::clearml_server::{ClearmlServer, ServerOptions, ServerRelease, TaskSpec};
use router_tests::owners::{RecordingForwarder, RecordingRouter};
use router_userspace::admin::{SharedStatus, Status};
use router_userspace::config::{Config, Sources};
use router_userspace::daemon::{Engine, new_status};
use serde_json::{Map, Value, json};

const ROUTER_ADDRESS: &str = "203.0.113.9";
const ROUTER_URL: &str = "https://router.example.com";

fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("task-router-compat-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// The engine of a router named `edge-a`, with recording owners, against `server`.
struct Rig {
    engine: Engine,
    tcp: RecordingForwarder,
    http: RecordingRouter,
    status: SharedStatus,
    _state: tempfile::TempDir,
}

impl Rig {
    async fn start(server: &ClearmlServer, extra: &[(&str, &str)]) -> Rig {
        let state = temp_dir("state");
        let creds = server.credentials();
        let mut env: Vec<(String, String)> = vec![
            ("CLEARML_API_HOST".into(), server.url()),
            ("CLEARML_API_ACCESS_KEY".into(), creds.access_key),
            ("CLEARML_API_SECRET_KEY".into(), creds.secret_key),
            ("TCP_ROUTER_ADDRESS".into(), ROUTER_ADDRESS.into()),
            ("TCP_PORT_START".into(), "31000".into()),
            ("TCP_PORT_END".into(), "31099".into()),
            ("ROUTER_NAME".into(), "edge-a".into()),
            ("ROUTER_URL".into(), ROUTER_URL.into()),
            ("AUTH_ENABLED".into(), "false".into()),
            (
                "ROUTER_STATE_DIR".into(),
                state.path().display().to_string(),
            ),
            // Generous: the suite runs in parallel on shared cores.
            ("ROUTER_API_TIMEOUT".into(), "3s".into()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let sources = Sources::new(Vec::new(), env, None).expect("sources");
        let cfg = Config::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
        let (tcp, http) = (RecordingForwarder::default(), RecordingRouter::default());
        let status = new_status(&cfg);
        let mut engine = Engine::new(
            cfg,
            Box::new(tcp.clone()),
            Box::new(http.clone()),
            status.clone(),
        )
        .expect("engine");
        engine.connect_at_start().await.expect("connect");
        Rig {
            engine,
            tcp,
            http,
            status,
            _state: state,
        }
    }

    async fn cycle(&mut self) {
        self.engine.cycle().await;
    }

    fn status(&self) -> Status {
        self.status.read().expect("status").clone()
    }
}

fn running(name: &str, runtime: Value) -> TaskSpec {
    TaskSpec::new(name)
        .status("in_progress")
        .system_tags(&["external_service"])
        .runtime(runtime)
}

/// What the SDK's `request_external_endpoint(port, protocol="tcp")` writes.
fn tcp_request(addr: &str, port: u16) -> Map<String, Value> {
    let request = json!({"_SERVICE": "EXTERNAL_TCP", "external_address": addr,
                         "external_tcp_port": port, "upstream_task_port": port});
    request.as_object().cloned().unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// Item 3: writing back without losing the task's own writes.

/// A task whose default TCP endpoint this router claimed before (a request the task made again
/// after its service restarted), and which writes a second request, the SDK's way, right after
/// the router read it: the moment a read-merge-write would drop it.
fn reclaimed_task_writing_between_read_and_write(server: &ClearmlServer) -> String {
    let admin = server.admin();
    let mut runtime = tcp_request("10.7.0.10", 22);
    runtime.insert("_ROUTER_NAME".into(), json!("edge-a"));
    let id = admin.create_task(running("sdk", Value::Object(runtime)));
    let mut once = true;
    admin.after_read(move |_, runtime| {
        if std::mem::take(&mut once) {
            runtime.insert("_SERVICE__ui".into(), json!("EXTERNAL"));
            runtime.insert("_ADDRESS__ui".into(), json!("10.7.0.10"));
            runtime.insert("_PORT__ui".into(), json!(7000));
        }
    });
    id
}

/// Server 2.3.0 (API 2.34, the test server's default): the router's unsuffixed keys go through
/// `tasks.edit_runtime`, which sets them and nothing else, so the request the task wrote between
/// the router's read and its write stays, with no settle round and no `tasks.edit`; keys the
/// server would escape (`__name`, `_ROUTER_NAME`) still go through `tasks.edit` and are stored
/// under the names the SDK reads.
#[tokio::test]
async fn server_2_3_writes_the_routers_keys_atomically() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let id = reclaimed_task_writing_between_read_and_write(&server);
    let mut r = Rig::start(&server, &[]).await;
    r.cycle().await;
    let port = *r.tcp.programmed().keys().next().expect("tcp route");
    let rt = admin.runtime(&id);
    assert_eq!(rt["external_tcp_port"], json!(port), "{rt:?}");
    assert_eq!(rt["external_address"], json!(ROUTER_ADDRESS));
    assert_eq!(rt["upstream_task_address"], json!("10.7.0.10"));
    assert_eq!(
        rt["_PORT__ui"],
        json!(7000),
        "the task's write was lost: {rt:?}"
    );
    assert_eq!(admin.calls("tasks.edit_runtime"), 1);
    assert_eq!(admin.calls("tasks.edit"), 0, "no read-merge-write");
    assert_eq!(
        r.status().clearml.concurrent_writes,
        0,
        "nothing to settle or repair"
    );
    admin.clear_after_read();

    // The task's request is served next; its keys hold `__`, so `tasks.edit` writes them,
    // literally (the SDK reads `endpoint__ui`, never `endpoint%_%_ui`).
    r.cycle().await;
    let rt = admin.runtime(&id);
    assert_eq!(
        rt["endpoint__ui"],
        json!(format!("{ROUTER_URL}/service/{id}__ui/"))
    );
    assert_eq!(rt["_ROUTER_NAME__ui"], json!("edge-a"));
    assert!(rt.keys().all(|k| !k.contains('%')), "{rt:?}");
    assert_eq!(admin.calls("tasks.edit"), 1);
    assert!(r.http.programmed().contains_key(&format!("{id}__ui")));

    // The task's own read-merge-write (the SDK's `_set_runtime_properties`) lands right after
    // the router's write, from the dict it read before: our keys vanish, its key appears. The
    // router puts its keys back, atomically again, on top of what the task wrote.
    let t = admin.create_task(running(
        "busy",
        Value::Object({
            let mut rt = tcp_request("10.7.0.11", 22);
            rt.insert("_ROUTER_NAME".into(), json!("edge-a"));
            rt
        }),
    ));
    let stale = admin.runtime(&t);
    let mut once = Some(stale);
    let target = t.clone();
    admin.after_edit(move |task, runtime| {
        if task == target
            && let Some(mut theirs) = once.take()
        {
            theirs.insert("progress".into(), json!("50"));
            *runtime = theirs;
        }
    });
    let (atomic, edits) = (admin.calls("tasks.edit_runtime"), admin.calls("tasks.edit"));
    r.cycle().await;
    let rt = admin.runtime(&t);
    assert_eq!(rt["external_address"], json!(ROUTER_ADDRESS), "{rt:?}");
    assert_eq!(
        rt["progress"],
        json!("50"),
        "the task's write was lost: {rt:?}"
    );
    assert_eq!(
        admin.calls("tasks.edit_runtime"),
        atomic + 2,
        "written, repaired"
    );
    assert_eq!(admin.calls("tasks.edit"), edits);
}

/// Server 2.2.0 (API 2.33) has no `tasks.edit_runtime`: its token says so, the router never
/// asks for it and writes with read-merge-write, whose second read before the write sees the
/// task's request and keeps it.
#[tokio::test]
async fn server_2_2_is_written_with_read_merge_write() {
    let server = ClearmlServer::start_with(ServerOptions::default().release(ServerRelease::V2_2))
        .expect("server");
    let admin = server.admin();
    let id = reclaimed_task_writing_between_read_and_write(&server);
    let mut r = Rig::start(&server, &[]).await;
    r.cycle().await;
    let port = *r.tcp.programmed().keys().next().expect("tcp route");
    let rt = admin.runtime(&id);
    assert_eq!(rt["external_tcp_port"], json!(port), "{rt:?}");
    assert_eq!(
        rt["_PORT__ui"],
        json!(7000),
        "the task's write was lost: {rt:?}"
    );
    assert_eq!(
        admin.calls("tasks.edit_runtime"),
        0,
        "not asked: the token says 2.33"
    );
    assert_eq!(admin.calls("tasks.edit"), 1);
    assert!(
        r.status().clearml.concurrent_writes >= 1,
        "the settle read saw the task's write"
    );
}

// ------------------------------------------------------------------------------------------
// Item 4: what the SDK accepts, the router accepts.

/// The SDK takes any endpoint name (`str(endpoint_name)`) and writes `<key>__<name>`; names
/// outside `[A-Za-z0-9_-]` used to be refused, so the user's `wait_for_external_endpoint` timed
/// out. They are routed: the URL and nginx use a key derived from the name (readable part and
/// a hash), while the runtime keys, the status and the refusals keep the name as written.
#[tokio::test]
async fn endpoint_names_of_any_shape_are_routed_and_keep_their_name() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let ui = "My App (v2.0)";
    let ssh = "ssh tunnel.1";
    let id = admin.create_task(running(
        "names",
        json!({
            format!("_SERVICE__{ui}"): "EXTERNAL", format!("_ADDRESS__{ui}"): "10.7.2.10",
            format!("_PORT__{ui}"): 8080,
            format!("_SERVICE__{ssh}"): "EXTERNAL_TCP",
            format!("external_address__{ssh}"): "10.7.2.10",
            format!("external_tcp_port__{ssh}"): 22,
            // Only what cannot be shown as it is stays refused.
            "_SERVICE__bad\u{7}name": "EXTERNAL",
        }),
    ));
    let mut r = Rig::start(&server, &[]).await;
    r.cycle().await;
    let rt = admin.runtime(&id);
    let url = rt[&format!("endpoint__{ui}")]
        .as_str()
        .unwrap_or_else(|| panic!("no endpoint__{ui}: {rt:?}"))
        .to_string();
    let key = url
        .strip_prefix(&format!("{ROUTER_URL}/service/"))
        .and_then(|k| k.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{url}"));
    assert!(key.starts_with(&format!("{id}__my-app-v2-0-")), "{key}");
    assert!(r.http.programmed().contains_key(key));
    assert_eq!(rt[&format!("_ROUTER_NAME__{ui}")], json!("edge-a"));
    let port = *r.tcp.programmed().keys().next().expect("tcp route");
    assert_eq!(rt[&format!("external_tcp_port__{ssh}")], json!(port));
    assert_eq!(
        rt[&format!("external_address__{ssh}")],
        json!(ROUTER_ADDRESS)
    );

    let status = r.status();
    let names: Vec<&str> = status
        .routes
        .iter()
        .map(|row| row.owner.id.endpoint.as_str())
        .collect();
    assert!(names.contains(&ui) && names.contains(&ssh), "{names:?}");
    let row = status
        .routes
        .iter()
        .find(|row| row.owner.id.endpoint == ui)
        .expect("row");
    assert_eq!(row.router, url);
    assert_eq!(status.refused.len(), 1, "{:?}", status.refused);
    assert!(
        status.refused[0].reason.contains("control characters"),
        "{:?}",
        status.refused
    );
}
