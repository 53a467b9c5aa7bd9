//! Destination-only NAT through namespaces (issue 19, "who connected"): a backend behind a
//! veth whose way back runs through the router sees the client's real address and a transfer
//! works both ways; a backend reached through a gateway keeps full NAT under `auto`; a route
//! switched between modes keeps its connections transferring, and a client reusing its source
//! port across a switch connects in the route's new mode; the daemon shows the choice and its
//! reason in `status` and `/metrics`.

use router_tests::metrics::{sample, scrape};
use router_tests::require_root;
use router_tests::routes::tcp_routes_in;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::{AttachMode, ConnState, DEFAULT_NAT_SOURCE_PORTS, Datapath};
use router_userspace::routes::PreserveClientIp;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const PORT: u16 = 20000;
const BACKEND_PORT: u16 = 8080;
const MIB: usize = 1 << 20;
const ADMIN_PORT: u16 = 9464;

/// The datapath in TC mode on the router's ends of `devs`.
fn open(t: &Topology, devs: &[&str]) -> Datapath {
    let cfg = DatapathConfig {
        kind: DatapathKind::Ebpf(AttachMode::Tc),
        interfaces: devs
            .iter()
            .map(|dev| (dev.to_string(), Some(AttachMode::Tc)))
            .collect(),
        bpffs: std::env::temp_dir(),
        max_connections: 4096,
        conntrack_pressure: router_userspace::datapath::Pressure::default(),
        router_addresses: vec![t.router_addr()],
        nat_source_ports: DEFAULT_NAT_SOURCE_PORTS,
    };
    t.router
        .enter(move || Datapath::open(&cfg))
        .expect("enter the router namespace")
        .expect("open and attach the datapath")
}

/// The topology with an echo server on the first backend, which answers every address
/// through the router (a container's default route is its host's bridge or veth address).
fn local_backend() -> (Topology, EchoServer) {
    require_root();
    let t = Topology::new().expect("topology");
    let via = t.router_backend.addr.to_string();
    t.backend
        .ip(&["route", "add", "default", "via", &via])
        .expect("default route via the router");
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("echo server");
    (t, server)
}

fn router_port(t: &Topology) -> SocketAddrV4 {
    SocketAddrV4::new(t.router_addr(), PORT)
}

fn peer_ip(server: &EchoServer, i: usize) -> Ipv4Addr {
    match server.peers().get(i) {
        Some(SocketAddr::V4(a)) => *a.ip(),
        other => panic!("accepted connection {i}: {other:?}"),
    }
}

#[test]
fn a_backend_behind_a_veth_sees_the_client_address_and_transfers_both_ways() {
    let (t, server) = local_backend();
    let mut dp = open(&t, &[&t.router_client.dev, &t.router_backend.dev]);
    dp.apply_routes(&tcp_routes_in(
        &[(PORT, t.backend_end.addr, BACKEND_PORT)],
        PreserveClientIp::Auto,
    ))
    .expect("routes");
    let choice = &dp.routes()[&PORT].client_ip;
    assert!(choice.preserved, "{choice:?}");
    assert!(choice.reason.contains(&t.router_backend.dev), "{choice:?}");
    let mut client = Client::connect(&t.client, router_port(&t)).expect("connect");
    assert_eq!(client.banner, "backend1");
    client
        .echo_random(4 * MIB, 64 * 1024, |_| {})
        .expect("echo both ways");
    assert_eq!(
        peer_ip(&server, 0),
        t.client_end.addr,
        "the task sees the client"
    );
    let conns = dp.connections().expect("connections");
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert!(conns[0].client_ip_preserved);
    assert_eq!(conns[0].nat_source.ip(), &t.client_end.addr);
    client.finish().expect("close");
}

#[test]
fn a_backend_behind_a_gateway_keeps_full_nat_in_auto() {
    require_root();
    let t = Topology::new().expect("topology");
    // 10.81.9.2 lives on the second backend, which the router reaches through it as a gateway.
    let remote = Ipv4Addr::new(10, 81, 9, 2);
    t.backend2
        .ip(&["addr", "add", "10.81.9.2/32", "dev", "lo"])
        .expect("remote address");
    let gateway = t.backend2_end.addr.to_string();
    t.router
        .ip(&["route", "add", "10.81.9.0/24", "via", &gateway])
        .expect("route via the gateway");
    let server = EchoServer::start(&t.backend2, remote, BACKEND_PORT, "remote").expect("server");
    let mut dp = open(&t, &[&t.router_client.dev, &t.router_backend2.dev]);
    dp.apply_routes(&tcp_routes_in(
        &[(PORT, remote, BACKEND_PORT)],
        PreserveClientIp::Auto,
    ))
    .expect("routes");
    let choice = &dp.routes()[&PORT].client_ip;
    assert!(!choice.preserved, "{choice:?}");
    assert!(
        choice.reason.contains(&format!("gateway {gateway}")),
        "{choice:?}"
    );
    let mut client = Client::connect(&t.client, router_port(&t)).expect("connect");
    assert_eq!(client.banner, "remote");
    client.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");
    assert_eq!(
        peer_ip(&server, 0),
        t.router_backend2.addr,
        "full NAT: the task sees the router"
    );
    client.finish().expect("close");
}

#[test]
fn a_route_switched_between_modes_keeps_its_connections_transferring() {
    let (t, server) = local_backend();
    let mut dp = open(&t, &[&t.router_client.dev, &t.router_backend.dev]);
    let routes = [(PORT, t.backend_end.addr, BACKEND_PORT)];
    dp.apply_routes(&tcp_routes_in(&routes, PreserveClientIp::Off))
        .expect("routes");
    let mut full_nat = Client::connect(&t.client, router_port(&t)).expect("connect");
    let mut preserved = None;
    full_nat
        .echo_random(4 * MIB, 64 * 1024, |chunk| {
            if chunk == 20 && preserved.is_none() {
                let report = dp
                    .apply_routes(&tcp_routes_in(&routes, PreserveClientIp::On))
                    .expect("switch to destination-only");
                assert_eq!(report.changed, 1, "{report:?}");
                preserved = Some(Client::connect(&t.client, router_port(&t)).expect("connect"));
            }
        })
        .expect("the full-NAT connection keeps transferring after the switch");
    let mut preserved = preserved.expect("switched mid-transfer");
    let mut switched_back = false;
    preserved
        .echo_random(4 * MIB, 64 * 1024, |chunk| {
            if chunk == 20 && !switched_back {
                dp.apply_routes(&tcp_routes_in(&routes, PreserveClientIp::Off))
                    .expect("switch back");
                switched_back = true;
            }
        })
        .expect("the destination-only connection keeps transferring after the switch back");
    full_nat
        .echo_random(MIB, 64 * 1024, |_| {})
        .expect("the first connection still transfers");
    let mut again = Client::connect(&t.client, router_port(&t)).expect("connect");
    again.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");
    let seen: Vec<Ipv4Addr> = (0..3).map(|i| peer_ip(&server, i)).collect();
    let (router, client) = (t.router_backend.addr, t.client_end.addr);
    assert_eq!(
        seen,
        [router, client, router],
        "each in its route's mode then"
    );
    for c in [full_nat, preserved, again] {
        c.finish().expect("close");
    }
}

/// A client that ends its connection (RST: no TIME_WAIT at the client) and connects again from
/// the same source port after the route switched mode: while the ended pair is still tracked,
/// the new SYN opens a connection in the route's new mode (the task sees the client's address,
/// then the router's again) and transfers both ways.
#[test]
fn a_client_reusing_its_port_across_a_switch_connects_in_the_new_mode() {
    let (t, server) = local_backend();
    let mut dp = open(&t, &[&t.router_client.dev, &t.router_backend.dev]);
    let routes = [(PORT, t.backend_end.addr, BACKEND_PORT)];
    let from = SocketAddrV4::new(t.client_end.addr, 40000);
    let (router, client) = (t.router_backend.addr, t.client_end.addr);
    let modes = [
        (PreserveClientIp::Off, router),
        (PreserveClientIp::On, client),
        (PreserveClientIp::Off, router),
    ];
    for (i, (mode, seen)) in modes.into_iter().enumerate() {
        dp.apply_routes(&tcp_routes_in(&routes, mode))
            .expect("switch the route's mode");
        let mut c = Client::connect_from(&t.client, from, router_port(&t)).expect("connect");
        c.echo_random(MIB, 64 * 1024, |_| {})
            .expect("echo both ways");
        assert_eq!(peer_ip(&server, i), seen, "connection {i} ({mode:?})");
        let conns = dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "the ended pair went: {conns:?}");
        assert_eq!(
            (conns[0].client, conns[0].client_ip_preserved),
            (from, seen == client),
            "{conns:?}"
        );
        c.abort().expect("RST");
        router_tests::wait::until("the datapath sees the RST", Duration::from_secs(5), || {
            let conns = dp.connections().ok()?;
            conns
                .iter()
                .all(|c| c.state == ConnState::Closing)
                .then_some(())
        });
    }
}

#[test]
fn the_daemon_shows_each_routes_choice_in_status_and_metrics() {
    let (t, _server) = local_backend();
    let upstream = format!("{}:{BACKEND_PORT}", t.backend_end.addr);
    let routes = format!(
        "[[tcp]]\nport = {PORT}\nupstream = \"{upstream}\"\n\
         [[tcp]]\nport = {}\nupstream = \"{upstream}\"\npreserve_client_ip = \"off\"\n",
        PORT + 1
    );
    let daemon = DaemonSetup::new(&t.router)
        .interface_as(&t.router_client.dev, "tc")
        .interface_as(&t.router_backend.dev, "tc")
        .routes(&routes)
        .set("ROUTER_PRESERVE_CLIENT_IP", "auto")
        .admin_port(ADMIN_PORT)
        .tcp_ports(PORT, PORT + 1)
        .no_auth()
        .start(Duration::from_secs(20));
    let mut client = Client::connect(&t.client, router_port(&t)).expect("connect");
    client.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");
    client.finish().expect("close");
    let metrics = scrape(&t.router, ADMIN_PORT);
    let series = |port: u16, mode: &str, setting: &str| {
        format!(
            "task_router_route_client_ip_info{{port=\"{port}\",upstream=\"{upstream}\",\
             mode=\"{mode}\",setting=\"{setting}\"}}"
        )
    };
    assert_eq!(
        sample(&metrics, &series(PORT, "preserved", "auto")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &series(PORT + 1, "translated", "off")),
        Some(1.0),
        "{metrics}"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    let status =
        router_tests::http_client::get_in(&t.router, addr, "/status", &[]).expect("GET /status");
    let json: serde_json::Value = serde_json::from_str(&status.text()).expect("status JSON");
    let route = |port: u16| {
        json["routes"]
            .as_array()
            .and_then(|r| {
                r.iter()
                    .find(|r| r["router"].as_str() == Some(port.to_string().as_str()))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no route {port} in {json}"))
    };
    let preserved = route(PORT);
    assert_eq!(preserved["client_ip"]["preserved"], true, "{preserved}");
    let reason = preserved["client_ip"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.starts_with("auto: directly on"), "{reason}");
    assert_eq!(route(PORT + 1)["client_ip"]["reason"], "off");
    daemon.terminate();
}
