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

// ------------------------------------------------------------------------------------------
// Item 5: the names and certificates of real installs.

/// The `task-router` binary with a clean environment (only PATH and `extra`).
fn task_router(args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(router_tests::daemon_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .args(args);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("run task-router")
}

fn stdout_stderr(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A ClearML gateway compose file of router 2.14+ (clearml-docs `appgw_install_compose.md:75-87`)
/// names the port range, the external address and the cookie's `Secure` attribute
/// `ROUTER__STREAM__*` / `ROUTER__HTTP__AUTHORIZATION__COOKIE__SECURE`. They used to be
/// ignored (the range silently fell back to the default); they are read as aliases, a name and
/// its alias set differently are refused naming both, and a misspelt router variable is named
/// with the closest known one (an error under `--strict`).
#[test]
fn the_variable_names_of_current_clearml_installs_are_read() {
    let dir = temp_dir("names");
    let env_file = dir.path().join("runtime.env");
    std::fs::write(
        &env_file,
        "ROUTER__STREAM__PORT_RANGE__START=40000\nROUTER__STREAM__PORT_RANGE__END=40999\n\
         ROUTER__STREAM__EXTERNAL_URL=router.example.com\n\
         ROUTER__HTTP__AUTHORIZATION__COOKIE__SECURE=false\nAUTH_ENABLED=false\n",
    )
    .expect("write env file");
    let file = env_file.to_str().expect("utf-8");
    let out = task_router(&["check-config", "--env-file", file], &[]);
    let (stdout, stderr) = stdout_stderr(&out);
    assert!(out.status.success(), "{stderr}");
    for line in [
        "TCP_PORT_START=40000",
        "TCP_PORT_END=40999",
        "TCP_ROUTER_ADDRESS=router.example.com",
        "AUTH_SECURE_ENABLED=false",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    assert!(
        stdout.contains(&format!("{file}:1, as ROUTER__STREAM__PORT_RANGE__START")),
        "{stdout}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");

    let out = task_router(
        &["check-config", "--env-file", file],
        &[("TCP_PORT_START", "30000")],
    );
    let (_, stderr) = stdout_stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TCP_PORT_START=\"30000\" (from environment)")
            && stderr.contains("ROUTER__STREAM__PORT_RANGE__START=\"40000\""),
        "{stderr}"
    );

    std::fs::write(&env_file, "TCP_PORTS_START=20000\nAUTH_ENABLED=false\n")
        .expect("write env file");
    let env = [("ROUTER__STREAM__PORT_RANGE_END", "20999")];
    let out = task_router(&["check-config", "--env-file", file], &env);
    let (stdout, stderr) = stdout_stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: TCP_PORTS_START (from ")
            && stderr.contains("did you mean TCP_PORT_START?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean ROUTER__STREAM__PORT_RANGE__END (an alias of TCP_PORT_END)?"),
        "{stderr}"
    );
    assert!(stdout.contains("TCP_PORT_START=30000"), "{stdout}");
    let out = task_router(&["check-config", "--strict", "--env-file", file], &env);
    let (_, stderr) = stdout_stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(2 problems)"), "{stderr}");
}

/// The client configuration of a router for `server`, with `extra` variables.
fn clearml_config(
    server: &ClearmlServer,
    extra: &[(&str, &str)],
) -> router_userspace::config::ClearmlConfig {
    let creds = server.credentials();
    let mut env: Vec<(String, String)> = vec![
        ("CLEARML_API_HOST".into(), server.url()),
        ("CLEARML_API_ACCESS_KEY".into(), creds.access_key),
        ("CLEARML_API_SECRET_KEY".into(), creds.secret_key),
        ("TCP_ROUTER_ADDRESS".into(), ROUTER_ADDRESS.into()),
        ("AUTH_ENABLED".into(), "false".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let sources = Sources::new(Vec::new(), env, None).expect("sources");
    Config::from_sources(&sources)
        .unwrap_or_else(|e| panic!("{e}"))
        .clearml
}

/// An on-premise server with a private CA: trusted through `SSL_VERIFY=<bundle>` (as the SDK's
/// `verify_certificate`) or `CLEARML_API_CA_BUNDLE`, refused without it or with another CA's
/// bundle; a missing or empty bundle stops start-up naming the variable and the file.
#[tokio::test]
async fn a_private_ca_is_trusted_from_ssl_verify_or_its_own_variable() {
    use router_tests::clearml_server::tls::TestCa;
    use router_userspace::clearml::Client;
    let server =
        ClearmlServer::start_with(ServerOptions::default().https(&[])).expect("https server");
    let ca = server.ca_pem().expect("CA bundle");
    let ca = ca.to_str().expect("utf-8");
    for var in ["SSL_VERIFY", "CLEARML_API_CA_BUNDLE"] {
        let client = Client::new(&clearml_config(&server, &[(var, ca)])).expect("client");
        client
            .login()
            .await
            .unwrap_or_else(|e| panic!("{var}={ca}: {e}"));
    }
    let client = Client::new(&clearml_config(&server, &[])).expect("client");
    assert!(client.login().await.is_err(), "an unknown CA is trusted");
    let stranger = TestCa::generate(&["127.0.0.1".into()]).expect("another CA");
    let other = stranger.ca_pem();
    let other = other.to_str().expect("utf-8");
    let client = Client::new(&clearml_config(&server, &[("SSL_VERIFY", other)])).expect("client");
    assert!(
        client.login().await.is_err(),
        "another CA's bundle is trusted"
    );

    let dir = temp_dir("ca");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.path().join("missing.pem");
    for (var, path, why) in [
        (
            "SSL_VERIFY",
            missing.to_str().expect("utf-8"),
            "cannot be read",
        ),
        (
            "CLEARML_API_CA_BUNDLE",
            empty.to_str().expect("utf-8"),
            "holds no PEM certificate",
        ),
    ] {
        let e = Client::new(&clearml_config(&server, &[(var, path)]))
            .err()
            .unwrap_or_else(|| panic!("{var}={path} accepted"))
            .to_string();
        assert!(
            e.contains(&format!("{var}={path}")) && e.contains(why),
            "{e}"
        );
        // check-config says so too, before anything starts.
        let creds = server.credentials();
        let url = server.url();
        let out = task_router(
            &["check-config"],
            &[
                ("CLEARML_API_HOST", url.as_str()),
                ("CLEARML_API_ACCESS_KEY", &creds.access_key),
                ("CLEARML_API_SECRET_KEY", &creds.secret_key),
                ("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS),
                ("AUTH_ENABLED", "false"),
                (var, path),
            ],
        );
        let (_, stderr) = stdout_stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{var}={path}")), "{stderr}");
    }
}

/// The system store is trusted besides the built-in roots: a CA installed there (here through
/// `SSL_CERT_FILE`, which the system-store loader honours like OpenSSL) needs no variable of
/// the router's own.
#[test]
fn a_ca_in_the_system_store_is_trusted() {
    router_tests::require_root();
    let server =
        ClearmlServer::start_with(ServerOptions::default().https(&[])).expect("https server");
    let ca = server.ca_pem().expect("CA bundle");
    let admin = server.admin();
    admin.create_task(running("app", Value::Object(tcp_request("10.7.3.10", 22))));
    let dir = temp_dir("store");
    let creds = server.credentials();
    let mut cmd = std::process::Command::new(router_tests::daemon_binary());
    cmd.args([
        "run",
        "--mode",
        "nginx",
        "--admin-addr",
        "127.0.0.1:0",
        "--poll-interval",
        "200ms",
    ])
    .env("CLEARML_API_HOST", server.url())
    .env("CLEARML_API_ACCESS_KEY", creds.access_key)
    .env("CLEARML_API_SECRET_KEY", creds.secret_key)
    .env("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS)
    .env("TCP_PORT_START", "31000")
    .env("TCP_PORT_END", "31099")
    .env("AUTH_ENABLED", "false")
    .env("ROUTER_STATE_DIR", dir.path().join("state"))
    // The files go to a directory of the test's own, nginx is never run.
    .env("NGINX_CONF_DIR", dir.path().join("nginx"))
    .env("NGINX_TEST_CMD", "true")
    .env("NGINX_RELOAD_CMD", "true")
    .env("SSL_CERT_FILE", &ca);
    let mut daemon = router_tests::daemon::Daemon::spawn(cmd).expect("start daemon");
    // The task's route was planned: the listing went over TLS with the CA from the store. (No
    // nginx runs, so the route is never served and not written back: readiness means forwarding.)
    daemon.wait_for_log("ClearML API connected", std::time::Duration::from_secs(30));
    daemon.wait_for_log("route change=+ tcp", std::time::Duration::from_secs(30));
    assert!(!daemon.log().contains("certificate"), "{}", daemon.log());
}

// ------------------------------------------------------------------------------------------
// Item 6: queues on Kubernetes.

/// The open-source Kubernetes glue moves every task it runs to its own `k8s_scheduler` queue
/// (`execution.queue` overwritten), so `LISTEN_QUEUE_NAME=<the user's queue>` matched nothing
/// there; the user's queue survives as the user property `k8s-queue`, which the router
/// matches too. A task of another queue stays another router's; on Enterprise
/// `execution.queue` stays the user's queue and matches as before.
#[tokio::test]
async fn tasks_the_kubernetes_glue_moved_are_served_by_their_users_queue() {
    for options in [
        ServerOptions::default(),
        ServerOptions::default().advanced(),
    ] {
        let server = ClearmlServer::start_with(options).expect("server");
        let admin = server.admin();
        admin.create_queue("gpu");
        let mine = admin.create_task(
            TaskSpec::new("on k8s")
                .system_tags(&["external_service"])
                .runtime(Value::Object(tcp_request("10.7.4.10", 22))),
        );
        let other = admin.create_task(
            TaskSpec::new("another queue on k8s")
                .system_tags(&["external_service"])
                .runtime(Value::Object(tcp_request("10.7.4.11", 22))),
        );
        let glued = admin.k8s_glue_schedules(&mine, "gpu").expect("glue");
        admin.k8s_glue_schedules(&other, "cpu").expect("glue");
        for id in [&mine, &other] {
            admin.k8s_pod_runs(id).expect("pod starts");
        }
        let queue = admin.task(&mine).expect("task")["execution"]["queue"].clone();
        if admin.feature_set() == "basic" {
            assert_eq!(queue, json!(glued.pending_queue_id), "the glue moved it");
        }
        let mut r = Rig::start(&server, &[("LISTEN_QUEUE_NAME", "gpu")]).await;
        r.cycle().await;
        let routes = r.tcp.programmed();
        let owners: Vec<&str> = routes
            .values()
            .map(|route| route.owner.id.task_id.as_str())
            .collect();
        assert_eq!(owners, [mine.as_str()], "{}", admin.feature_set());
        assert_eq!(
            admin.runtime(&mine)["external_address"],
            json!(ROUTER_ADDRESS)
        );
        assert_eq!(
            admin.runtime(&other)["external_address"],
            json!("10.7.4.11"),
            "a task of another queue was served"
        );
        assert_eq!(r.status().clearml.tasks, 1);
    }
}
