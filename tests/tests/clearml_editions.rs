//! What the real `clearml` SDK does against each server edition, with the test server posing as
//! an open-source one (`feature_set: basic`, its default): `request_external_endpoint` raises the
//! licence error before writing anything, while the documented snippet
//! (`tests/python/oss_endpoint.py`: `set_system_tags` + runtime properties) writes the same
//! request keys and reads the router's answer back. Also: the SDK reaches an HTTPS server whose
//! CA it is given as a path (`CLEARML_API_HOST_VERIFY_CERT`). Loopback only.

use router_tests::clearml_server::sdk::{SdkEnv, SdkTask, sdk_versions};
use router_tests::clearml_server::{ClearmlServer, ServerOptions};
use serde_json::{Value, json};

const TASK_IP: &str = "198.51.100.20";
/// Documentation addresses (RFC 5737 / .invalid): only written and read, never dialled.
const ROUTER_URL: &str = "http://router.example.invalid:8010";
const TCP_ROUTER_ADDRESS: &str = "203.0.113.7";

fn env(server: &ClearmlServer) -> SdkEnv {
    SdkEnv {
        host_ip: Some(TASK_IP.into()),
        ..SdkEnv::for_server(server)
    }
}

/// On a `basic` server: the SDK's endpoint call is refused, the snippet's keys are written, and
/// the snippet reads back what a router wrote.
fn snippet_on_open_source(version: &str) {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let mut task = SdkTask::start(version, &env(&server), None, "oss snippet").expect("SDK task");
    assert_eq!(task.feature_set, "basic");
    let err = task
        .request(8080, "http", false, None)
        .expect_err("the SDK refuses on open source");
    // "ClearML-server does not support requested feature set '['advanced']'", 2.1 adds
    // " (Enterprise license required)".
    let err = format!("{err:#}");
    assert!(
        err.contains("does not support requested feature set '['advanced']'"),
        "{err}"
    );
    assert_eq!(
        err.contains("(Enterprise license required)"),
        !version.starts_with("2.0."),
        "{err}"
    );
    let rt = admin.runtime(&task.task_id);
    assert!(
        !rt.contains_key("_PORT") && !rt.contains_key("_SERVICE"),
        "nothing written before the refusal: {rt:?}"
    );

    task.oss_request(8080, "http", None).expect("http");
    task.oss_request(9000, "tcp", None).expect("tcp");
    task.oss_request(7000, "http", Some("ui"))
        .expect("named http");
    let tags = admin.system_tags(&task.task_id);
    assert!(tags.iter().any(|t| t == "external_service"), "{tags:?}");
    let rt = admin.runtime(&task.task_id);
    for (key, value) in [
        ("_ADDRESS", json!(TASK_IP)),
        ("_PORT", json!(8080)),
        ("_SERVICE__ui", json!("EXTERNAL")),
        ("_PORT__ui", json!(7000)),
        ("external_address", json!(TASK_IP)),
        ("external_tcp_port", json!(9000)),
    ] {
        assert_eq!(rt.get(key), Some(&value), "{key}: {rt:?}");
    }
    // Only `_SERVICE` of the last request stays unsuffixed, as with the SDK 2.0 call.
    assert_eq!(rt["_SERVICE"], "EXTERNAL_TCP", "{rt:?}");
    assert_eq!(task.oss_read("http", None).unwrap(), Value::Null);

    // What a router writes back (section 7 of the contract), then the user's read.
    let url = format!("{ROUTER_URL}/service/{}/", task.task_id);
    admin.update_task(
        &task.task_id,
        json!({"runtime.endpoint": url, "runtime.browser_endpoint": url,
               "runtime.external_address": TCP_ROUTER_ADDRESS,
               "runtime.external_tcp_port": 30000,
               "runtime.upstream_task_address": TASK_IP, "runtime.upstream_task_port": 9000}),
    );
    assert_eq!(task.oss_read("http", None).unwrap(), json!(url));
    assert_eq!(
        task.oss_read("tcp", None).unwrap(),
        json!(format!("{TCP_ROUTER_ADDRESS}:30000"))
    );
    assert_eq!(task.oss_read("http", Some("ui")).unwrap(), Value::Null);
}

#[test]
fn sdk_newest_on_open_source_refuses_but_the_snippet_requests() {
    snippet_on_open_source(sdk_versions()[0]);
}

#[test]
fn sdk_2_0_on_open_source_refuses_but_the_snippet_requests() {
    let last_2_0 = sdk_versions()
        .into_iter()
        .find(|v| v.starts_with("2.0."))
        .expect("a 2.0.x release in tests/python/sdk-versions.txt");
    snippet_on_open_source(last_2_0);
}

#[test]
fn the_sdk_trusts_an_https_server_given_its_ca_bundle_path() {
    let server = ClearmlServer::start_with(ServerOptions::default().https(&[])).expect("https");
    let env = env(&server);
    assert_eq!(
        env.verify_cert.as_deref(),
        server.ca_pem().as_deref().and_then(|p| p.to_str())
    );
    let mut task =
        SdkTask::start(sdk_versions()[0], &env, None, "over https").expect("Task.init over TLS");
    task.oss_request(9000, "tcp", None)
        .expect("a write over TLS");
    assert_eq!(
        server.admin().runtime(&task.task_id)["external_tcp_port"],
        9000
    );
}
