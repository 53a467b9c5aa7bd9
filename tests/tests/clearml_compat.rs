//! What real ClearML installs do that the router must follow (issue 17, research in
//! `docs/clearml-compat-notes.md`), each against the test server posing as the real thing:
//! the atomic `tasks.edit_runtime` of server 2.3.0 and the read-merge-write of older releases,
//! endpoint names of any shape, the names and certificates of real installs, and tasks the
//! open-source Kubernetes glue moved to its own queue.
//!
//! The sync engine runs in-process with recording route owners (what the datapath and nginx
//! are asked to serve); the configuration tests run the `task-router` binary.

use router_tests::clearml_server::{ClearmlServer, ServerOptions, ServerRelease, TaskSpec};
use router_tests::engine::{RecordingEngine, clearml_config};
use serde_json::{Map, Value, json};

const ROUTER_ADDRESS: &str = "203.0.113.9";
const ROUTER_URL: &str = "https://router.example.com";

fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("task-router-compat-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// The engine of a router named `edge-a`, with recording owners, against `server`; its state
/// directory lives as long as it does.
struct Rig {
    engine: RecordingEngine,
    _state: tempfile::TempDir,
}

impl std::ops::Deref for Rig {
    type Target = RecordingEngine;
    fn deref(&self) -> &RecordingEngine {
        &self.engine
    }
}

impl Rig {
    async fn start(server: &ClearmlServer, extra: &[(&str, &str)]) -> Rig {
        let state = temp_dir("state");
        let mut vars = vec![
            ("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS),
            ("TCP_PORT_START", "31000"),
            ("TCP_PORT_END", "31099"),
            ("ROUTER_NAME", "edge-a"),
            ("ROUTER_URL", ROUTER_URL),
            // Generous: the suite runs in parallel on shared cores.
            ("ROUTER_API_TIMEOUT", "3s"),
        ];
        vars.extend_from_slice(extra);
        let cfg = clearml_config(server, state.path(), &vars);
        Rig {
            engine: RecordingEngine::start(cfg).await,
            _state: state,
        }
    }

    async fn cycle(&mut self) {
        self.engine.cycle().await;
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

/// What `tcp_request` leaves once this router claimed the endpoint (its `_ROUTER_NAME`): a
/// request the task made again after its service restarted.
fn reclaimed_tcp_request(addr: &str) -> Value {
    let mut runtime = tcp_request(addr, 22);
    runtime.insert("_ROUTER_NAME".into(), json!("edge-a"));
    Value::Object(runtime)
}

/// On `server`, a task with a [`reclaimed_tcp_request`] writes a second request, the SDK's
/// way, right after the router read it: the moment a read-merge-write would drop it. One
/// cycle later the router's endpoint is written and the task's request kept, whichever way
/// the server lets it be written; returns the router and the task.
async fn a_task_writes_between_the_routers_read_and_write(server: &ClearmlServer) -> (Rig, String) {
    let admin = server.admin();
    let id = admin.create_task(running("sdk", reclaimed_tcp_request("10.7.0.10")));
    let mut once = true;
    admin.after_read(move |_, runtime| {
        if std::mem::take(&mut once) {
            runtime.insert("_SERVICE__ui".into(), json!("EXTERNAL"));
            runtime.insert("_ADDRESS__ui".into(), json!("10.7.0.10"));
            runtime.insert("_PORT__ui".into(), json!(7000));
        }
    });
    let mut r = Rig::start(server, &[]).await;
    r.cycle().await;
    admin.clear_after_read();
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
    (r, id)
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
    let (mut r, id) = a_task_writes_between_the_routers_read_and_write(&server).await;
    assert_eq!(admin.calls("tasks.edit_runtime"), 1);
    assert_eq!(admin.calls("tasks.edit"), 0, "no read-merge-write");
    assert_eq!(
        r.status().clearml.concurrent_writes,
        0,
        "nothing to settle or repair"
    );

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
    let t = admin.create_task(running("busy", reclaimed_tcp_request("10.7.0.11")));
    let mut once = Some(admin.runtime(&t));
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
    let (r, _) = a_task_writes_between_the_routers_read_and_write(&server).await;
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

/// `task-router check-config` of a router of `server`, with `extra` variables.
fn check_config_for(server: &ClearmlServer, extra: &[(&str, &str)]) -> std::process::Output {
    let (url, creds) = (server.url(), server.credentials());
    let mut vars = vec![
        ("CLEARML_API_HOST", url.as_str()),
        ("CLEARML_API_ACCESS_KEY", creds.access_key.as_str()),
        ("CLEARML_API_SECRET_KEY", creds.secret_key.as_str()),
        ("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS),
    ];
    vars.extend_from_slice(extra);
    task_router(&["check-config"], &vars)
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

/// The ClearML client configuration of a router for `server`, with `extra` variables.
fn client_config(
    server: &ClearmlServer,
    extra: &[(&str, &str)],
) -> router_userspace::config::ClearmlConfig {
    let state = temp_dir("client");
    let mut vars = vec![("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS)];
    vars.extend_from_slice(extra);
    clearml_config(server, state.path(), &vars).clearml
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
        let client = Client::new(&client_config(&server, &[(var, ca)])).expect("client");
        client
            .login()
            .await
            .unwrap_or_else(|e| panic!("{var}={ca}: {e}"));
    }
    let client = Client::new(&client_config(&server, &[])).expect("client");
    assert!(client.login().await.is_err(), "an unknown CA is trusted");
    let stranger = TestCa::generate(&["127.0.0.1".into()]).expect("another CA");
    let other = stranger.ca_pem();
    let other = other.to_str().expect("utf-8");
    let client = Client::new(&client_config(&server, &[("SSL_VERIFY", other)])).expect("client");
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
        let e = Client::new(&client_config(&server, &[(var, path)]))
            .err()
            .unwrap_or_else(|| panic!("{var}={path} accepted"))
            .to_string();
        assert!(
            e.contains(&format!("{var}={path}")) && e.contains(why),
            "{e}"
        );
        // check-config says so too, before anything starts.
        let out = check_config_for(&server, &[("AUTH_ENABLED", "false"), (var, path)]);
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
    let ca = ca.to_str().expect("utf-8");
    let admin = server.admin();
    let dir = temp_dir("store");
    // No task, so nothing to serve.
    let mut cmd = nginx_mode_daemon(&server, dir.path(), &[("AUTH_ENABLED", "false")]);
    cmd.args(["--poll-interval", "200ms"])
        .env("SSL_CERT_FILE", ca);
    let mut daemon = router_tests::daemon::Daemon::spawn(cmd).expect("start daemon");
    // Ready after the first sync, which logged in and listed the tasks over HTTPS.
    daemon.wait_for_log("ready", std::time::Duration::from_secs(30));
    assert!(admin.calls("tasks.get_all") >= 1, "{}", daemon.log());
    assert!(!daemon.log().contains("UnknownIssuer"), "{}", daemon.log());
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

// ------------------------------------------------------------------------------------------
// Item 1: cookie authentication with ClearML's documented key.

/// `task-router run` with the nginx datapath in this namespace, against `server`, with `extra`
/// variables; the nginx files go to `dir` and nginx itself is never run unless managed.
fn nginx_mode_daemon(
    server: &ClearmlServer,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> std::process::Command {
    let creds = server.credentials();
    let mut cmd = std::process::Command::new(router_tests::daemon_binary());
    cmd.args(["run", "--mode", "nginx", "--admin-addr", "127.0.0.1:0"])
        .env("CLEARML_API_HOST", server.url())
        .env("CLEARML_API_ACCESS_KEY", creds.access_key)
        .env("CLEARML_API_SECRET_KEY", creds.secret_key)
        .env("TCP_ROUTER_ADDRESS", ROUTER_ADDRESS)
        .env("TCP_PORT_START", "31000")
        .env("TCP_PORT_END", "31099")
        .env("ROUTER_STATE_DIR", dir.join("state"))
        .env("NGINX_CONF_DIR", dir.join("nginx"))
        .env("NGINX_TEST_CMD", "true")
        .env("NGINX_RELOAD_CMD", "true");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// The ClearML web app's cookie carries the server's token, signed with the bytes of
/// `token_secret` (PyJWT); ClearML tells router operators to set `AUTH_BASE64_JWKS_KEY` to that
/// secret. The daemon used to base64url-decode it (the defaults are valid base64url) and refuse
/// every browser. Now both forms are tried; check-config says what it made of the value
/// (lengths only); a token neither matches is refused as `bad_signature`, counted, and logged
/// once a minute with the fix.
#[test]
fn the_token_secret_as_clearml_documents_it_opens_routes_and_a_wrong_key_says_so() {
    use router_tests::clearml_server::{Identity, auth::sign};
    router_tests::require_root();
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let secret = String::from_utf8(admin.token_secret()).expect("the secret is text");
    let dir = temp_dir("auth");
    let out = check_config_for(&server, &[("AUTH_BASE64_JWKS_KEY", &secret)]);
    let (stdout, stderr) = stdout_stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "AUTH_BASE64_JWKS_KEY=*** ({} chars as written; also tried base64url-decoded: ",
            secret.len()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(&secret), "{stdout}");

    let cmd = nginx_mode_daemon(&server, dir.path(), &[("AUTH_BASE64_JWKS_KEY", &secret)]);
    let mut daemon = router_tests::daemon::Daemon::spawn(cmd).expect("start daemon");
    let line = daemon.wait_for_log(
        "admin endpoint listening",
        std::time::Duration::from_secs(30),
    );
    let admin_addr: std::net::SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let auth = |token: &str| {
        let cookie = format!("clearml_token_basic={token}");
        router_tests::http_client::get(admin_addr, "/auth", &[("Cookie", &cookie)])
            .expect("GET /auth")
            .status
    };
    let token = admin.issue_token(std::time::Duration::from_secs(3600));
    assert_eq!(
        auth(&token),
        200,
        "the server's own token\n{}",
        daemon.log()
    );
    let payload = admin.token_payload(&admin.identity(), std::time::Duration::from_secs(3600));
    let foreign = sign(b"the secret of another server", &payload);
    assert_eq!(auth(&foreign), 401);
    assert_eq!(auth(&foreign), 401);
    let hint = "AUTH_BASE64_JWKS_KEY does not match the server's token_secret";
    daemon.wait_for_log(hint, std::time::Duration::from_secs(10));
    assert_eq!(daemon.log().matches(hint).count(), 1, "{}", daemon.log());
    let stranger = admin.issue_token_for(
        &Identity::in_company("another-tenant"),
        std::time::Duration::from_secs(3600),
    );
    assert_eq!(auth(&stranger), 200, "no route asked: any company");
    let metrics = router_tests::http_client::get(admin_addr, "/metrics", &[])
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("task_router_auth_refusals_total{reason=\"bad_signature\"} 2"),
        "{metrics}"
    );
}

/// The open-source server's web app listens on 8080 (API 8008, files 8081): the router's HTTP
/// port defaults to 8010 now, and a port another program holds is refused at start, naming
/// the port and the holder, instead of failing when the first HTTP route comes.
#[test]
fn an_http_port_in_use_is_refused_at_start_naming_its_holder() {
    router_tests::require_root();
    let out = task_router(&["check-config"], &[]);
    let (stdout, _) = stdout_stderr(&out);
    assert!(
        stdout.contains("ROUTER__WEBSERVER__SERVER_PORT=8010"),
        "{stdout}"
    );
    let server = ClearmlServer::start().expect("server");
    let held = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = held.local_addr().expect("addr").port().to_string();
    let dir = temp_dir("port");
    let cmd = nginx_mode_daemon(
        &server,
        dir.path(),
        &[
            ("AUTH_ENABLED", "false"),
            ("NGINX_MANAGED", "true"),
            ("ROUTER__WEBSERVER__SERVER_PORT", &port),
        ],
    );
    let mut daemon = router_tests::daemon::Daemon::spawn(cmd).expect("start daemon");
    let (status, log) = daemon.wait_for_exit(std::time::Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    let me = std::process::id();
    assert!(
        log.contains(&format!(
            "ROUTER__WEBSERVER__SERVER_PORT={port}: port {port} is already in use by pid {me} ("
        )),
        "{log}"
    );
}
