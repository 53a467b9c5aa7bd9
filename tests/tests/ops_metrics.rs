//! `/metrics` of a real daemon in namespaces: real TCP through a route moves the route's
//! counters, the verdict counters and the conntrack fill, and the mode per interface shows.

use router_tests::metrics::sample;
use router_tests::require_root;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_tests::wait;
use std::net::SocketAddrV4;
use std::time::Duration;

const PORT: u16 = 20000;
const BACKEND_PORT: u16 = 8080;
/// Inside the router namespace the test created, so no other test can hold it.
const ADMIN_PORT: u16 = 9109;
const MIB: usize = 1 << 20;

fn scrape(t: &Topology) -> String {
    router_tests::metrics::scrape(&t.router, ADMIN_PORT)
}

#[test]
fn metrics_show_a_route_s_traffic_verdicts_and_modes() {
    require_root();
    let t = Topology::new().expect("topology");
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server");
    let upstream = format!("{}:{BACKEND_PORT}", t.backend_end.addr);
    let daemon = DaemonSetup::tc_on(&t)
        .tcp_route(PORT, &upstream)
        .admin_port(ADMIN_PORT)
        .tcp_ports(PORT, PORT)
        .no_auth()
        .start(Duration::from_secs(20));

    let before = scrape(&t);
    for dev in [&t.router_client.dev, &t.router_backend.dev] {
        let series = format!("task_router_datapath_mode_info{{interface=\"{dev}\",mode=\"tc\"}}");
        assert_eq!(
            sample(&before, &series),
            Some(1.0),
            "{series} in:\n{before}"
        );
    }
    assert!(
        sample(&before, "task_router_conntrack_capacity").is_some_and(|c| c > 0.0),
        "{before}"
    );
    let forwarded = "task_router_verdict_packets_total{hook=\"tc\",reason=\"forwarded\"}";
    let forwarded_before = sample(&before, forwarded).expect("forwarded counter");

    let route = format!("{{port=\"{PORT}\",upstream=\"{upstream}\"}}");
    let mut client =
        Client::connect(&t.client, SocketAddrV4::new(t.router_addr(), PORT)).expect("connect");
    assert_eq!(client.banner, "backend1");
    client
        .echo_random(2 * MIB, 64 * 1024, |_| {})
        .expect("echo");
    // Route counters are as of the last sweep: wait for one that saw the transfer.
    let during = wait::until(
        "the route's counters to show the transfer",
        Duration::from_secs(20),
        || {
            let text = scrape(&t);
            let to_backend = sample(
                &text,
                &format!("task_router_route_to_backend_bytes_total{route}"),
            )?;
            let to_client = sample(
                &text,
                &format!("task_router_route_to_client_bytes_total{route}"),
            )?;
            (to_backend >= (2 * MIB) as f64 && to_client >= (2 * MIB) as f64).then_some(text)
        },
    );
    assert_eq!(
        sample(
            &during,
            &format!("task_router_route_active_connections{route}")
        ),
        Some(1.0),
        "{during}"
    );
    assert!(
        sample(
            &during,
            &format!("task_router_route_to_backend_packets_total{route}")
        )
        .is_some_and(|p| p > 0.0)
    );
    assert!(
        sample(&during, "task_router_conntrack_entries").is_some_and(|n| n >= 1.0),
        "{during}"
    );
    let forwarded_after = sample(&during, forwarded).expect("forwarded counter");
    assert!(
        forwarded_after > forwarded_before + 100.0,
        "forwarded went {forwarded_before} -> {forwarded_after}"
    );
    assert!(
        sample(
            &during,
            "task_router_verdict_packets_total{hook=\"tc\",reason=\"new_connection\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{during}"
    );
    assert!(sample(&during, "task_router_sync_cycles_total").is_some_and(|n| n >= 1.0));
    dashboard_queries_exist(&during);
    client.finish().expect("close");
    assert_eq!(server.accepted(), 1);

    daemon.terminate();
}

/// Every metric `deploy/grafana-dashboard.json` queries is in a real scrape: as samples, or,
/// for a histogram's `_bucket`/`_sum`/`_count` series, as a family declared a histogram (one
/// with no observation yet — the ClearML API latency of a daemon without ClearML — has no
/// sample lines).
fn dashboard_queries_exist(scrape: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queried = Vec::new();
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("task_router_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(
        queried.len() >= 8,
        "the dashboard queries too little: {queried:?}"
    );
    for name in queried {
        let sampled = scrape
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
        let declared_histogram = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|family| {
                scrape
                    .lines()
                    .any(|l| l == format!("# TYPE {family} histogram"))
            })
        });
        let present = sampled || declared_histogram;
        assert!(
            present,
            "the dashboard queries {name}, absent from /metrics:\n{scrape}"
        );
    }
}
