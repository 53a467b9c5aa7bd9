//! The real `clearml` SDK (the newest release and the last 2.0.x) works unchanged against the
//! test server: a task requests TCP and HTTP endpoints, a stand-in router (below; it writes
//! exactly what section 7 of the contract says the router writes, through the server's
//! `tasks.get_all` / `tasks.edit`) serves them, and the SDK's `list_external_endpoints` /
//! `wait_for_external_endpoint` report the router's endpoints. Also the clearml-session way,
//! a named second endpoint, an OSS-like server (feature set `basic`), and token expiry
//! mid-run. Everything on loopback.

use anyhow::{Context, Result};
use router_tests::clearml_server::client::ApiClient;
use router_tests::clearml_server::sdk::{SdkEnv, SdkTask, last_2_0, newest};
use router_tests::clearml_server::{ClearmlServer, ServerOptions};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const ROUTER_NAME: &str = "stand-in";
/// Documentation addresses (RFC 5737): nothing is sent to them, they are only written and read.
const TCP_ROUTER_ADDRESS: &str = "203.0.113.7";
const ROUTER_URL: &str = "http://router.example.invalid:8010";
const TASK_IP: &str = "198.51.100.20";
const WAIT: Duration = Duration::from_secs(30);

/// The endpoints (suffix → protocol) a runtime asks for. Keys, not `_SERVICE`, decide the
/// protocol: SDK 2.0 keeps one unsuffixed `_SERVICE`, so a task asking for both protocols
/// leaves only the last one there.
fn requested(runtime: &Map<String, Value>) -> BTreeSet<(String, &'static str)> {
    let mut out = BTreeSet::new();
    for key in runtime.keys() {
        for (base, proto) in [("_PORT", "http"), ("external_tcp_port", "tcp")] {
            if key == base {
                out.insert((String::new(), proto));
            } else if let Some(sfx) = key.strip_prefix(&format!("{base}__")) {
                out.insert((format!("__{sfx}"), proto));
            }
        }
    }
    out
}

/// One cycle of a router that follows section 7: find requests, write the endpoint back with a
/// read-merge-write of the whole runtime dict, re-reading before each write.
struct StandInRouter {
    api: ApiClient,
    next_port: u16,
}

impl StandInRouter {
    fn new(server: &ClearmlServer) -> Result<StandInRouter> {
        let mut api = ApiClient::new(&server.url());
        let c = server.credentials();
        api.login(&c.access_key, &c.secret_key)?;
        Ok(StandInRouter {
            api,
            next_port: 30_000,
        })
    }

    fn cycle(&mut self) -> Result<()> {
        let found = self.api.ok(
            "tasks.get_all",
            &json!({"system_tags": ["external_service"], "status": ["in_progress"],
                    "search_hidden": true, "only_fields": ["id", "runtime"],
                    "order_by": ["id"], "page": 0, "page_size": 500}),
        )?;
        for task in found["tasks"].as_array().cloned().unwrap_or_default() {
            let id = task["id"].as_str().context("task id")?.to_string();
            self.serve(&id)?;
        }
        Ok(())
    }

    fn serve(&mut self, id: &str) -> Result<()> {
        let current = self.api.ok("tasks.get_by_id", &json!({"task": id}))?;
        let runtime = current["task"]["runtime"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut wanted = runtime.clone();
        for (sfx, proto) in requested(&runtime) {
            let key = |base: &str| format!("{base}{sfx}");
            let ours = runtime.get(&key("_ROUTER_NAME")) == Some(&json!(ROUTER_NAME));
            if proto == "http" {
                if ours && runtime.contains_key(&key("endpoint")) {
                    continue;
                }
                let path_key = if sfx.is_empty() {
                    id.to_string()
                } else {
                    format!("{id}{sfx}")
                };
                let url = format!("{ROUTER_URL}/service/{path_key}/");
                wanted.insert(key("endpoint"), json!(url));
                wanted.insert(key("browser_endpoint"), json!(url));
            } else {
                if ours && runtime.get(&key("external_address")) == Some(&json!(TCP_ROUTER_ADDRESS))
                {
                    continue;
                }
                let task_address = runtime.get(&key("external_address")).cloned();
                let task_port = runtime.get(&key("external_tcp_port")).cloned();
                wanted.insert(
                    key("upstream_task_address"),
                    task_address.unwrap_or(Value::Null),
                );
                wanted.insert(key("upstream_task_port"), task_port.unwrap_or(Value::Null));
                wanted.insert(key("external_address"), json!(TCP_ROUTER_ADDRESS));
                wanted.insert(key("external_tcp_port"), json!(self.next_port));
                self.next_port += 1;
            }
            wanted.insert(key("_ROUTER_NAME"), json!(ROUTER_NAME));
        }
        if wanted != runtime {
            self.api.ok(
                "tasks.edit",
                &json!({"task": id, "force": true, "runtime": wanted}),
            )?;
        }
        Ok(())
    }
}

/// The stand-in router polling in the background, like the daemon; stops on drop.
struct RouterLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl RouterLoop {
    fn start(server: &ClearmlServer) -> RouterLoop {
        let mut router = StandInRouter::new(server).expect("stand-in router logs in");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> Result<()> {
            while !flag.load(Ordering::Relaxed) {
                router.cycle()?;
                std::thread::sleep(Duration::from_millis(200)); // the poll interval
            }
            Ok(())
        });
        RouterLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RouterLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !std::thread::panicking() => panic!("stand-in router failed: {e:#}"),
                _ => {}
            }
        }
    }
}

fn env(server: &ClearmlServer) -> SdkEnv {
    SdkEnv::on_host(server, TASK_IP)
}

fn tcp_and_http_reach_the_sdk(version: &str) {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let admin = server.admin();
    let mut task = SdkTask::start(version, &env(&server), None, "tcp and http").expect("SDK task");
    assert_eq!(
        task.feature_set, "advanced",
        "the SDK read the token's feature set"
    );
    assert_eq!(admin.task(&task.task_id).unwrap()["status"], "in_progress");

    task.request(9000, "tcp", false, None).expect("request tcp");
    task.request(8080, "http", false, None)
        .expect("request http");
    let stored = admin.task(&task.task_id).unwrap();
    assert!(
        stored["system_tags"]
            .as_array()
            .unwrap()
            .contains(&json!("external_service")),
        "the SDK tagged the task for the router: {}",
        stored["system_tags"]
    );
    let rt = admin.runtime(&task.task_id);
    assert_eq!(rt["external_address"], TASK_IP);
    assert_eq!(rt["external_tcp_port"], 9000);
    assert_eq!(
        (rt["_ADDRESS"].as_str(), rt["_PORT"].as_i64()),
        (Some(TASK_IP), Some(8080))
    );
    // Before any router: SDK 2.1 already lists the task's own address (it writes
    // upstream_task_port itself); 2.0 lists nothing until the router writes it.
    let before = task.list().expect("list before the router");
    if version.starts_with("2.0.") {
        assert_eq!(before, Vec::<Value>::new());
        assert_eq!(
            rt["_SERVICE"], "EXTERNAL",
            "2.0 keeps one _SERVICE: the last request's"
        );
    } else {
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0]["endpoint"], format!("{TASK_IP}:9000"));
    }

    let _router = RouterLoop::start(&server);
    let tcp = task
        .poll("tcp", None, &format!("{TCP_ROUTER_ADDRESS}:"), WAIT)
        .expect("the SDK sees the router's TCP endpoint");
    assert_eq!(tcp["endpoint"], format!("{TCP_ROUTER_ADDRESS}:30000"));
    // `port`: SDK 2.0 reports the task's port (`upstream_task_port`), 2.1 the value of
    // `external_tcp_port`, which is the router's port once it rewrote it.
    let expected_port = if version.starts_with("2.0.") {
        9000
    } else {
        30000
    };
    assert_eq!(tcp["port"], expected_port);
    let http_url = format!("{ROUTER_URL}/service/{}/", task.task_id);
    let http = task
        .poll("http", None, &http_url, WAIT)
        .expect("the SDK sees the router's HTTP endpoint");
    assert_eq!(http["browser_endpoint"], http_url);
    assert_eq!(http["port"], 8080);

    // wait_for_external_endpoint agrees, and the SDK's writes kept the router's keys.
    let waited = task.wait("tcp", None, WAIT).expect("wait tcp");
    assert_eq!(waited["endpoint"], format!("{TCP_ROUTER_ADDRESS}:30000"));
    let waited = task.wait("http", None, WAIT).expect("wait http");
    assert_eq!(waited["endpoint"], http_url);
    let rt = admin.runtime(&task.task_id);
    assert_eq!(rt["upstream_task_address"], TASK_IP);
    assert_eq!(rt["upstream_task_port"], 9000);
    assert_eq!(rt["_ROUTER_NAME"], ROUTER_NAME);

    let status = task.stop().expect("stop");
    assert_eq!(status, "stopped");
}

#[test]
fn sdk_newest_tcp_and_http_endpoints_come_from_the_router() {
    tcp_and_http_reach_the_sdk(newest());
}

#[test]
fn sdk_2_0_tcp_and_http_endpoints_come_from_the_router() {
    tcp_and_http_reach_the_sdk(last_2_0());
}

/// What a user does with `wait=True`: SDK 2.0 blocks until the router wrote
/// `upstream_task_port`; SDK 2.1 may return its own address first, so it keeps polling.
fn wait_true_then_poll(version: &str) {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let _router = RouterLoop::start(&server);
    let mut task = SdkTask::start(version, &env(&server), None, "wait").expect("SDK task");
    let got = task
        .request(9100, "tcp", true, None)
        .expect("request tcp, wait");
    let endpoint = got["endpoint"]
        .as_str()
        .expect("wait=True returned an endpoint");
    if version.starts_with("2.0.") {
        assert_eq!(
            endpoint,
            format!("{TCP_ROUTER_ADDRESS}:30000"),
            "2.0 waits for the router"
        );
    } else {
        assert!(
            [
                format!("{TCP_ROUTER_ADDRESS}:30000"),
                format!("{TASK_IP}:9100")
            ]
            .contains(&endpoint.to_string()),
            "{endpoint}"
        );
        task.poll("tcp", None, &format!("{TCP_ROUTER_ADDRESS}:"), WAIT)
            .expect("polling reaches the router's endpoint");
    }
    let got = task
        .request(8090, "http", true, None)
        .expect("request http, wait");
    assert_eq!(
        got["endpoint"],
        format!("{ROUTER_URL}/service/{}/", task.task_id)
    );
}

#[test]
fn sdk_newest_wait_true() {
    wait_true_then_poll(newest());
}

#[test]
fn sdk_2_0_wait_true() {
    wait_true_then_poll(last_2_0());
}

#[test]
fn sdk_newest_named_and_numbered_endpoints() {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let admin = server.admin();
    let mut task = SdkTask::start(newest(), &env(&server), None, "named").expect("SDK task");
    task.request(9000, "tcp", false, None).expect("default tcp");
    task.request(9001, "tcp", false, None)
        .expect("second tcp: numbered");
    task.request(7000, "http", false, Some("ui"))
        .expect("named http");
    let rt = admin.runtime(&task.task_id);
    assert_eq!(rt["external_tcp_port__1"], 9001, "{rt:?}");
    assert_eq!(rt["_SERVICE__1"], "EXTERNAL_TCP");
    assert_eq!(rt["_PORT__ui"], 7000);
    assert_eq!(rt["_SERVICE__ui"], "EXTERNAL");

    let _router = RouterLoop::start(&server);
    let first = task
        .poll("tcp", None, &format!("{TCP_ROUTER_ADDRESS}:"), WAIT)
        .expect("default");
    let second = task
        .poll("tcp", Some("1"), &format!("{TCP_ROUTER_ADDRESS}:"), WAIT)
        .expect("__1");
    assert_ne!(
        first["endpoint"], second["endpoint"],
        "each endpoint has its own router port"
    );
    assert_eq!(
        second["port"],
        second["endpoint"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    );
    let ui = format!("{ROUTER_URL}/service/{}__ui/", task.task_id);
    task.poll("http", Some("ui"), &ui, WAIT).expect("__ui");
    let listed = task.list().expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let waited = task.wait("tcp", Some("1"), WAIT).expect("wait __1");
    assert_eq!(waited["endpoint"], second["endpoint"]);
    assert_eq!(admin.runtime(&task.task_id)["upstream_task_port__1"], 9001);
}

#[test]
fn sdk_2_0_refuses_a_second_endpoint_of_one_protocol() {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let mut task =
        SdkTask::start(last_2_0(), &env(&server), None, "one per protocol").expect("task");
    task.request(9000, "tcp", false, None).expect("first tcp");
    let err = task
        .request(9001, "tcp", false, None)
        .expect_err("2.0 allows one per protocol");
    assert!(
        format!("{err:#}").contains("Only one endpoint per protocol"),
        "{err:#}"
    );
}

/// clearml-session writes the runtime keys and the tag itself (no feature-set check) and its
/// client reads `external_address` / `external_tcp_port` back until the router rewrote them.
fn session_way(version: &str) {
    let server = ClearmlServer::start_with(ServerOptions::default().advanced()).expect("server");
    let admin = server.admin();
    let mut task = SdkTask::start(version, &env(&server), None, "session").expect("SDK task");
    task.session_request(TASK_IP, 10022)
        .expect("session-style request");
    let stored = admin.task(&task.task_id).unwrap();
    assert!(
        stored["system_tags"]
            .as_array()
            .unwrap()
            .contains(&json!("external_service"))
    );
    let _router = RouterLoop::start(&server);
    router_tests::wait::until(
        "the router's rewrite, as the session client reads it",
        WAIT,
        || {
            let rt = task.runtime().ok()?;
            (rt["external_address"] == TCP_ROUTER_ADDRESS).then_some(())
        },
    );
    let rt = task.runtime().expect("runtime");
    assert_eq!(rt["external_tcp_port"], 30000);
    assert_eq!(rt["upstream_task_address"], TASK_IP);
    assert_eq!(rt["upstream_task_port"], 10022);
    // The SDK itself now lists it too (the router wrote upstream_task_port).
    let listed = task.list().expect("list");
    assert_eq!(listed[0]["endpoint"], format!("{TCP_ROUTER_ADDRESS}:30000"));
}

#[test]
fn session_way_newest() {
    session_way(newest());
}

#[test]
fn session_way_2_0() {
    session_way(last_2_0());
}

#[test]
fn an_oss_like_server_gets_the_sdks_enterprise_refusal_but_the_session_way_works() {
    let server = ClearmlServer::start_with(ServerOptions {
        feature_set: "basic".into(),
        ..ServerOptions::default()
    })
    .expect("server");
    let mut task = SdkTask::start(newest(), &env(&server), None, "oss").expect("SDK task");
    assert_eq!(task.feature_set, "basic");
    let err = task
        .request(9000, "tcp", false, None)
        .expect_err("basic refuses");
    assert!(
        format!("{err:#}").contains("does not support requested feature set"),
        "{err:#}"
    );
    task.session_request(TASK_IP, 10022)
        .expect("the session way needs no feature");
}

#[test]
fn the_sdk_logs_in_again_when_its_token_is_expired() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let mut task = SdkTask::start(newest(), &env(&server), None, "expiry").expect("SDK task");
    let logins = admin.calls("auth.login");
    admin.expire_tokens();
    let rt = task.runtime().expect("a call after expiry succeeds");
    assert!(rt.is_object());
    assert!(
        admin.calls("auth.login") > logins,
        "the SDK refreshed its token on 401"
    );
}
