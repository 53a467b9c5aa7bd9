//! End to end: the real `clearml` SDK asks for endpoints, the `task-router` daemon (in a router
//! namespace, with its managed nginx) serves them, and the SDK's endpoints carry real traffic
//! from a client namespace to the tasks' servers in two host namespaces: TCP echo through the
//! eBPF datapath, HTTP GET with the ClearML cookie through nginx. Stopping a task removes its
//! endpoints and releases its port. Run with the newest SDK and the last 2.0.x, plus a named
//! second endpoint and the clearml-session way.

use router_tests::clearml_server::sdk::{last_2_0, newest};
use router_tests::e2e::{
    HOST1, HOST2, ROUTER_PUBLIC, ServerThread, TCP_PORT_END, TCP_PORT_START, Testbed,
    TestbedOptions, echo_through, parse_endpoint,
};
use router_tests::http_client::{get_in, get_url_in};
use router_tests::{require_root, wait};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn testbed() -> Testbed {
    require_root();
    Testbed::up(&TestbedOptions::default(), &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"))
}

fn in_range(addr: SocketAddr) -> bool {
    (TCP_PORT_START..=TCP_PORT_END).contains(&addr.port())
}

/// The router port of `task_id`'s routes in the daemon's `/status`, if it has any.
fn routes_of(bed: &Testbed, task_id: &str) -> Vec<Value> {
    bed.status_json()
        .map(|s| {
            s["routes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r["task_id"] == task_id)
                .collect()
        })
        .unwrap_or_default()
}

fn tcp_and_http_through_the_router(version: &str) {
    let bed = testbed();
    let _echo = ServerThread::echo(&bed.host1, (HOST1, 9000).into()).expect("echo server");
    let _web = ServerThread::web(&bed.host2, (HOST2, 8080).into(), "web").expect("web app");

    // TCP: wait=True, then keep polling until the endpoint is the router's (SDK 2.1 may first
    // return the task's own address, contract section 7).
    let mut tcp_task = bed
        .sdk_task(version, 1, "tcp echo")
        .expect("SDK task on host1");
    let first = tcp_task
        .request(9000, "tcp", true, None)
        .expect("request tcp");
    assert!(first["endpoint"].is_string(), "wait=True returned {first}");
    let got = tcp_task
        .poll("tcp", None, &format!("{ROUTER_PUBLIC}:"), WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", bed.daemon_log()));
    let tcp = parse_endpoint(got["endpoint"].as_str().unwrap()).unwrap();
    assert!(in_range(tcp), "{tcp} is not in the router's range");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let back = echo_through(&bed.client, tcp, &payload).expect("TCP through the router");
    assert!(back == payload, "the echo through {tcp} differs");

    // HTTP: wait=True returns once the router wrote `endpoint`.
    let mut http_task = bed
        .sdk_task(version, 2, "web app")
        .expect("SDK task on host2");
    let got = http_task
        .request(8080, "http", true, None)
        .expect("request http");
    let url = got["endpoint"].as_str().expect("http endpoint").to_string();
    assert_eq!(
        url,
        format!("{}/service/{}/", bed.router_url, http_task.task_id)
    );
    let refused = get_url_in(&bed.client, &format!("{url}hello"), &[])
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}\ndaemon log:\n{}", bed.daemon_log()));
    assert!(
        [401, 302, 303].contains(&refused.status),
        "no cookie must not reach the app: {} {}",
        refused.status,
        refused.text()
    );
    let cookie = bed.auth_cookie();
    let ok = get_url_in(
        &bed.client,
        &format!("{url}hello?x=1"),
        &[("Cookie", &cookie)],
    )
    .expect("GET with the cookie");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let body = ok.text();
    assert!(body.contains("app web"), "{body}");
    assert!(
        body.contains("request: GET /hello?x=1 HTTP/1.1"),
        "prefix stripped: {body}"
    );

    let table = bed.status_table().expect("task-router status");
    assert!(
        table.contains(&tcp_task.task_id) && table.contains(&http_task.task_id),
        "{table}\ndaemon log:\n{}",
        bed.daemon_log()
    );

    // Stopping the tasks removes both endpoints and releases the port.
    let (tcp_id, http_id) = (tcp_task.task_id.clone(), http_task.task_id.clone());
    assert_eq!(tcp_task.stop().expect("stop tcp task"), "stopped");
    assert_eq!(http_task.stop().expect("stop http task"), "stopped");
    wait::until(
        "the TCP endpoint to stop answering",
        WAIT,
        || match echo_through(&bed.client, tcp, b"ping") {
            Ok(back) if back == b"ping" => None,
            _ => Some(()),
        },
    );
    wait::until("the HTTP endpoint to stop serving the app", WAIT, || {
        let r = get_url_in(&bed.client, &format!("{url}hello"), &[("Cookie", &cookie)]).ok()?;
        (r.status != 200).then_some(())
    });
    wait::until("the routes to leave the daemon's status", WAIT, || {
        (routes_of(&bed, &tcp_id).is_empty() && routes_of(&bed, &http_id).is_empty()).then_some(())
    });
    let status = bed.status_json().expect("status");
    assert_eq!(
        status["ports"]["assigned"], 0,
        "the port was released: {}",
        status["ports"]
    );
}

#[test]
fn e2e_newest_sdk_tcp_and_http_through_the_router() {
    tcp_and_http_through_the_router(newest());
}

#[test]
fn e2e_sdk_2_0_tcp_and_http_through_the_router() {
    tcp_and_http_through_the_router(last_2_0());
}

#[test]
fn e2e_named_second_endpoint_reaches_its_own_server() {
    let bed = testbed();
    let _a = ServerThread::banner_echo(&bed.host1, (HOST1, 9000).into(), "A\n").expect("A");
    let _b = ServerThread::banner_echo(&bed.host1, (HOST1, 9001).into(), "B\n").expect("B");
    let mut task = bed.sdk_task(newest(), 1, "two ports").expect("SDK task");
    task.request(9000, "tcp", false, None)
        .expect("default endpoint");
    task.request(9001, "tcp", false, Some("api"))
        .expect("named endpoint");
    let prefix = format!("{ROUTER_PUBLIC}:");
    let a = task
        .poll("tcp", None, &prefix, WAIT)
        .expect("default served");
    let b = task
        .poll("tcp", Some("api"), &prefix, WAIT)
        .expect("__api served");
    let a = parse_endpoint(a["endpoint"].as_str().unwrap()).unwrap();
    let b = parse_endpoint(b["endpoint"].as_str().unwrap()).unwrap();
    assert_ne!(a, b);
    assert_eq!(echo_through(&bed.client, a, b"x").unwrap(), b"A\nx");
    assert_eq!(echo_through(&bed.client, b, b"y").unwrap(), b"B\ny");
}

#[test]
fn e2e_clearml_session_way_reaches_sshd_stand_in() {
    let bed = testbed();
    let _sshd =
        ServerThread::banner_echo(&bed.host1, (HOST1, 10022).into(), "SSH-2.0-stand-in\r\n")
            .expect("sshd stand-in");
    let mut task = bed.sdk_task(newest(), 1, "session").expect("SDK task");
    task.session_request(&HOST1.to_string(), 10022)
        .expect("session-style request");
    // The session client's loop: re-read the runtime until the router rewrote it.
    let runtime = wait::until("the router's rewrite of external_address", WAIT, || {
        let rt = task.runtime().ok()?;
        (rt["external_address"] == ROUTER_PUBLIC.to_string()).then_some(rt)
    });
    let port = runtime["external_tcp_port"]
        .as_u64()
        .or_else(|| runtime["external_tcp_port"].as_str()?.parse().ok())
        .expect("external_tcp_port");
    let addr = SocketAddr::from((ROUTER_PUBLIC, port as u16));
    let back = echo_through(&bed.client, addr, b"hello").expect("through the router");
    assert_eq!(back, b"SSH-2.0-stand-in\r\nhello");
}

/// The harness without the daemon (runs today): SDK tasks on the host namespaces reach the
/// ClearML server in the router namespace, their requests land on the server, and the task
/// servers answer from the router namespace (where the daemon will forward from).
#[test]
fn e2e_harness_sdk_tasks_on_hosts_reach_the_server_and_their_servers_answer() {
    require_root();
    let bed = Testbed::up(
        &TestbedOptions {
            daemon: false,
            ..TestbedOptions::default()
        },
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let _echo = ServerThread::echo(&bed.host1, (HOST1, 9000).into()).expect("echo server");
    let _web = ServerThread::web(&bed.host2, (HOST2, 8080).into(), "web").expect("web app");
    let mut task = bed
        .sdk_task(newest(), 2, "harness")
        .expect("SDK task on host2");
    task.request(8080, "http", false, None)
        .expect("request http");
    let rt = bed.server.admin().runtime(&task.task_id);
    assert_eq!(
        rt["_ADDRESS"],
        HOST2.to_string(),
        "the task reports its host's address"
    );
    assert_eq!(rt["_PORT"], 8080);
    let back =
        echo_through(&bed.router, (HOST1, 9000).into(), b"hi").expect("echo from the router");
    assert_eq!(back, b"hi");
    let page = get_in(&bed.router, (HOST2, 8080).into(), "/x", &[]).expect("GET from the router");
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("request: GET /x HTTP/1.1"),
        "{}",
        page.text()
    );
}
