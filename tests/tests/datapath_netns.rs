//! Real TCP through the datapath: client ns — router ns — backend ns(s), random data echoed and
//! checked byte for byte, in each attach mode and offload setting, with many connections, a
//! route change and a route removal mid-transfer, and a container-like backend behind a bridge
//! on the router host.

use router_common::stats::{Hook, StatReason};
use router_tests::netns::{Netns, unique, veth};
use router_tests::require_root;
use router_tests::routes::tcp_routes;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::{
    AttachMode, DEFAULT_NAT_SOURCE_PORTS, Datapath, ResolvedMode, Timeouts,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const PORT: u16 = 20000;
const BACKEND_PORT: u16 = 8080;
const MIB: usize = 1 << 20;

fn open(router: &Netns, interfaces: &[(&str, AttachMode)], router_addr: Ipv4Addr) -> Datapath {
    let cfg = DatapathConfig {
        kind: DatapathKind::Ebpf(AttachMode::Auto),
        interfaces: interfaces
            .iter()
            .map(|(dev, mode)| (dev.to_string(), Some(*mode)))
            .collect(),
        bpffs: std::env::temp_dir(),
        max_connections: 4096,
        conntrack_pressure: router_userspace::datapath::Pressure::default(),
        router_addresses: vec![router_addr],
        nat_source_ports: DEFAULT_NAT_SOURCE_PORTS,
    };
    router
        .enter(move || Datapath::open(&cfg))
        .expect("enter the router namespace")
        .expect("open and attach the datapath")
}

/// Opens the datapath on the router's ends toward the client and the first backend.
fn open_client_and_backend(t: &Topology, mode: AttachMode) -> Datapath {
    open(
        &t.router,
        &[(&t.router_client.dev, mode), (&t.router_backend.dev, mode)],
        t.router_addr(),
    )
}

fn modes(dp: &Datapath) -> Vec<ResolvedMode> {
    dp.attached().iter().map(|a| a.mode).collect()
}

fn router_port(t: &Topology) -> SocketAddrV4 {
    SocketAddrV4::new(t.router_addr(), PORT)
}

/// Routes the router port to `backend:BACKEND_PORT`, where the echo server named `banner`
/// listens, and sends `len` random bytes through one connection, checking every byte back.
fn echo_through_route(
    t: &Topology,
    dp: &mut Datapath,
    backend: Ipv4Addr,
    banner: &str,
    len: usize,
) {
    dp.apply_routes(&tcp_routes(&[(PORT, backend, BACKEND_PORT)]))
        .expect("routes");
    let mut client = Client::connect(&t.client, router_port(t)).expect("connect");
    assert_eq!(client.banner, banner);
    client
        .echo_random(len, 64 * 1024, |_| {})
        .unwrap_or_else(|e| panic!("echo through the route to {banner}: {e:#}"));
    client.finish().expect("close");
}

/// One connection through the router to the first backend, `len` random bytes echoed.
fn forward_and_check(t: &Topology, dp: &mut Datapath, hook: Hook, len: usize) {
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("echo server");
    dp.apply_routes(&tcp_routes(&[(PORT, t.backend_end.addr, BACKEND_PORT)]))
        .expect("routes");
    let mut client = Client::connect(&t.client, router_port(t)).expect("connect");
    assert_eq!(client.banner, "backend1");
    client.echo_random(len, 64 * 1024, |_| {}).expect("echo");
    let conns = dp.connections().expect("connections");
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].backend, server.addr);
    assert_eq!(conns[0].nat_source.ip(), &t.router_backend.addr);
    assert_eq!(*conns[0].client.ip(), t.client_end.addr);
    assert!(conns[0].to_backend.bytes as usize > len);
    client.finish().expect("close");
    assert_eq!(server.accepted(), 1);
    assert_eq!(
        dp.stat(hook, StatReason::NewConnection)
            .expect("stats")
            .packets,
        1
    );
    let forwarded = dp.stat(hook, StatReason::Forwarded).expect("stats");
    assert!(
        forwarded.bytes as usize > 2 * len,
        "{} forwarded only {forwarded:?} of 2 x {len} bytes",
        hook.name()
    );
}

#[test]
fn tc_forwards_tcp_with_offload_on() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut dp = open_client_and_backend(&t, AttachMode::Auto);
    assert_eq!(
        modes(&dp),
        [ResolvedMode::Tc, ResolvedMode::Tc],
        "auto on veth"
    );
    forward_and_check(&t, &mut dp, Hook::Tc, 8 * MIB);
}

/// The router's ends of container links (veth pairs into other namespaces) hand forwarded
/// packets straight to the peer's ingress: the bytes arrive on the far ends while the
/// router-side devices transmit next to nothing (a plain redirect would send them all through
/// those devices' transmit path).
#[test]
fn tc_hands_packets_to_the_peer_of_container_links() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut dp = open_client_and_backend(&t, AttachMode::Auto);
    let counters = || {
        (
            t.router
                .link_counters(&t.router_client.dev)
                .expect("counters"),
            t.router
                .link_counters(&t.router_backend.dev)
                .expect("counters"),
            t.client.link_counters(&t.client_end.dev).expect("counters"),
            t.backend
                .link_counters(&t.backend_end.dev)
                .expect("counters"),
        )
    };
    let (toward_client, toward_backend, client_rx, backend_rx) = counters();
    // Every router end of a pair into another namespace, attached or not (the second
    // backend's too); nothing else (the loopback device).
    let second = t
        .router
        .link_counters(&t.router_backend2.dev)
        .expect("counters");
    let mut expected = vec![
        toward_client.ifindex,
        toward_backend.ifindex,
        second.ifindex,
    ];
    expected.sort();
    assert_eq!(dp.peer_devs().iter().copied().collect::<Vec<_>>(), expected);
    forward_and_check(&t, &mut dp, Hook::Tc, 8 * MIB);
    let (toward_client2, toward_backend2, client_rx2, backend_rx2) = counters();
    let mib = |b: u64| b as f64 / MIB as f64;
    for (what, before, after) in [
        ("client", client_rx.rx_bytes, client_rx2.rx_bytes),
        ("backend", backend_rx.rx_bytes, backend_rx2.rx_bytes),
    ] {
        assert!(
            after - before > 8 * MIB as u64,
            "the {what} received only {:.1} MiB of 8 MiB",
            mib(after - before)
        );
    }
    for (what, before, after) in [
        ("client", toward_client.tx_bytes, toward_client2.tx_bytes),
        ("backend", toward_backend.tx_bytes, toward_backend2.tx_bytes),
    ] {
        assert!(
            after - before < MIB as u64 / 4,
            "the router's end toward the {what} transmitted {:.1} MiB: packets went through its \
             egress instead of to its peer",
            mib(after - before)
        );
    }
}

/// Segments the first backend merged into the last one of a socket's backlog
/// (`TCPBacklogCoalesce`) while `len` bytes the client sent to `to` reached a sink at `sink`.
/// Segments land in the backlog while the reader holds the socket (copying out earlier data).
fn backlog_merges(t: &Topology, to: SocketAddrV4, sink: SocketAddrV4, len: usize) -> u64 {
    let listener = t
        .backend
        .enter(move || std::net::TcpListener::bind(sink))
        .expect("enter the backend namespace")
        .expect("bind the sink");
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        std::io::copy(&mut conn, &mut std::io::sink())
    });
    let before = t.backend.tcp_counters().expect("backend counters");
    let mut stream = t
        .client
        .enter(move || std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(5)))
        .expect("enter the client namespace")
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let chunk = vec![0x5au8; 256 * 1024];
    let chunks = len / chunk.len();
    for _ in 0..chunks {
        stream.write_all(&chunk).expect("send");
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let received = reader.join().expect("sink thread").expect("sink");
    assert_eq!(received as usize, chunks * chunk.len(), "through {to}");
    let after = t.backend.tcp_counters().expect("backend counters");
    const MERGES: &str = "TcpExt.TCPBacklogCoalesce";
    after[MERGES] - before[MERGES]
}

/// A local sender's TCP transmits clones of the buffers it keeps for retransmission, and a
/// receiver merges a segment into another only when that one is its own, not shared with the
/// sender. Kernel forwarding copies the headers of every packet it forwards (`skb_cow`), so
/// receivers behind it merge; the datapath does the same before a redirect. Without that a
/// receiver on the router host (a task's container) keeps every super-packet apart and reads
/// slower (4-stream bulk in the bench: ~12 % less). Measured where it is certain: a segment
/// waiting in a socket's backlog is still shared until the receiver acknowledges it, so
/// without the copy next to nothing merges there (0-2 in up to 2 GiB, against 300-500 per
/// 256 MiB behind forwarding and ~50 behind the datapath with it).
#[test]
fn receivers_merge_forwarded_segments_as_behind_kernel_forwarding() {
    require_root();
    let t = Topology::new().expect("topology");
    t.route_client_and_backend_directly()
        .expect("routes through the router without NAT");
    let mut dp = open_client_and_backend(&t, AttachMode::Auto);
    let sink = SocketAddrV4::new(t.backend_end.addr, BACKEND_PORT);
    dp.apply_routes(&tcp_routes(&[(PORT, *sink.ip(), sink.port())]))
        .expect("routes");
    // Not a route's port: plain kernel forwarding, the datapath passes it.
    let direct = SocketAddrV4::new(t.backend_end.addr, BACKEND_PORT + 1);
    let len = 256 * MIB;
    let (mut behind_forwarding, mut behind_datapath) = (0, 0);
    // Merges in the backlog need the reader busy while segments arrive, on another CPU;
    // transfers repeat until plain forwarding shows enough of them to compare.
    for _ in 0..8 {
        behind_forwarding += backlog_merges(&t, direct, direct, len);
        behind_datapath += backlog_merges(&t, router_port(&t), sink, len);
        if behind_forwarding >= 100 && behind_datapath >= 10 {
            break;
        }
    }
    assert!(
        behind_forwarding >= 100,
        "behind kernel forwarding the receiver merged only {behind_forwarding} segments in its \
         backlog: nothing to compare with"
    );
    // Fewer than behind forwarding (about a sixth here), but without the copy next to none.
    assert!(
        behind_datapath >= 10,
        "behind the datapath the receiver merged {behind_datapath} segments in its backlog, \
         behind kernel forwarding {behind_forwarding}: forwarded packets still share their \
         buffers with the sender"
    );
}

/// A veth whose peer is in the router's own namespace (here a port of a bridge there, with the
/// backend behind it) has no peer elsewhere: `bpf_redirect_peer` would drop, so packets leave
/// through its egress, and the transfer completes.
#[test]
fn a_veth_paired_inside_the_router_namespace_is_forwarded_through_its_egress() {
    require_root();
    let t = Topology::new().expect("topology");
    let container = Netns::new("trk").expect("namespace");
    let (near, far, bridge) = (unique("tvn"), unique("tvf"), unique("tbr"));
    let (port, inside) = (unique("tvp"), unique("tvk"));
    let r = |args: &[&str]| {
        t.router.ip(args).expect("ip in the router namespace");
    };
    r(&["link", "add", &near, "type", "veth", "peer", "name", &far]);
    r(&["link", "add", &bridge, "type", "bridge"]);
    r(&["link", "set", &far, "master", &bridge]);
    r(&[
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        &inside,
        "netns",
        &container.name,
    ]);
    r(&["link", "set", &port, "master", &bridge]);
    r(&["addr", "add", "10.81.6.1/24", "dev", &near]);
    for dev in [&near, &far, &bridge, &port] {
        r(&["link", "set", dev, "up"]);
    }
    container
        .ip(&["addr", "add", "10.81.6.2/24", "dev", &inside])
        .expect("address");
    container
        .ip(&["link", "set", &inside, "up"])
        .expect("link up");
    let addr = Ipv4Addr::new(10, 81, 6, 2);
    let server = EchoServer::start(&container, addr, BACKEND_PORT, "looped").expect("server");
    let mut dp = open(
        &t.router,
        &[
            (&t.router_client.dev, AttachMode::Auto),
            (&near, AttachMode::Auto),
        ],
        t.router_addr(),
    );
    let near_index = t.router.link_counters(&near).expect("counters").ifindex;
    let far_index = t.router.link_counters(&far).expect("counters").ifindex;
    let client_index = t
        .router
        .link_counters(&t.router_client.dev)
        .expect("counters")
        .ifindex;
    let peers = dp.peer_devs().clone();
    assert!(
        !peers.contains(&near_index) && !peers.contains(&far_index),
        "a pair inside one namespace has no peer elsewhere: {peers:?}"
    );
    assert!(peers.contains(&client_index), "{peers:?}");
    echo_through_route(&t, &mut dp, addr, "looped", 4 * MIB);
    assert_eq!(server.accepted(), 1);
    assert_eq!(
        dp.stat(Hook::Tc, StatReason::NewConnection)
            .expect("stats")
            .packets,
        1
    );
}

#[test]
fn tc_forwards_tcp_with_offload_off() {
    require_root();
    let t = Topology::new().expect("topology");
    for (ns, dev) in t.senders() {
        ns.tx_offload(dev, false).expect("tx off");
    }
    let mut dp = open_client_and_backend(&t, AttachMode::Tc);
    forward_and_check(&t, &mut dp, Hook::Tc, 4 * MIB);
}

#[test]
fn xdp_forwards_tcp_with_senders_offload_off() {
    require_root();
    let t = Topology::new().expect("topology");
    t.prepare_for_xdp().expect("prepare the veth peers");
    let mut dp = open_client_and_backend(&t, AttachMode::Xdp);
    assert_eq!(modes(&dp), [ResolvedMode::Xdp, ResolvedMode::Xdp]);
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("echo server");
    dp.apply_routes(&tcp_routes(&[(PORT, t.backend_end.addr, BACKEND_PORT)]))
        .expect("routes");
    for _ in 0..3 {
        let mut client = Client::connect(&t.client, router_port(&t)).expect("connect");
        assert_eq!(client.banner, "backend1");
        client
            .echo_random(2 * MIB, 32 * 1024, |_| {})
            .expect("echo");
        client.finish().expect("close");
    }
    assert_eq!(server.accepted(), 3);
    // Once the neighbours are known, XDP carries the bulk; TC only what XDP handed over.
    let xdp = dp.stat(Hook::Xdp, StatReason::Forwarded).expect("stats");
    let tc = dp.stat(Hook::Tc, StatReason::Forwarded).expect("stats");
    assert!(
        xdp.bytes > 4 * MIB as u64,
        "XDP forwarded {xdp:?}, TC {tc:?}"
    );
    assert!(
        xdp.packets > 10 * tc.packets,
        "XDP forwarded {xdp:?}, TC {tc:?}"
    );
}

#[test]
fn many_concurrent_connections_to_two_backends() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut dp = open(
        &t.router,
        &[
            (&t.router_client.dev, AttachMode::Tc),
            (&t.router_backend.dev, AttachMode::Tc),
            (&t.router_backend2.dev, AttachMode::Tc),
        ],
        t.router_addr(),
    );
    let s1 = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server 1");
    let s2 = EchoServer::start(&t.backend2, t.backend2_end.addr, BACKEND_PORT, "backend2")
        .expect("server 2");
    dp.apply_routes(&tcp_routes(&[
        (PORT, t.backend_end.addr, BACKEND_PORT),
        (PORT + 1, t.backend2_end.addr, BACKEND_PORT),
    ]))
    .expect("routes");
    const N: usize = 48;
    let mut clients = Vec::new();
    for i in 0..N {
        let port = PORT + (i % 2) as u16;
        let c = Client::connect(&t.client, SocketAddrV4::new(t.router_addr(), port))
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let want = if i % 2 == 0 { "backend1" } else { "backend2" };
        assert_eq!(c.banner, want, "connection {i}");
        clients.push(c);
    }
    assert_eq!(dp.fill().expect("fill").0, N as u64);
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                c.echo_random(256 * 1024, 16 * 1024, |_| {})
                    .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
                c.finish()
                    .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a connection failed (see above)");
    }
    assert_eq!((s1.accepted(), s2.accepted()), (N as u64 / 2, N as u64 / 2));
    let sweep = dp.sweep().expect("sweep");
    let counters = dp.route_counters();
    assert_eq!(
        counters[&PORT].1.connections + counters[&(PORT + 1)].1.connections,
        sweep.live
    );
    assert!(counters[&PORT].1.to_client.bytes > (N / 2 * 256 * 1024) as u64);
    // Closed connections go with the closing timeout.
    dp.set_timeouts(Timeouts {
        closing: Duration::ZERO,
        ..Timeouts::default()
    });
    let sweep = dp.sweep().expect("sweep");
    assert_eq!(sweep.live, 0, "{sweep:?}");
    assert_eq!(dp.fill().expect("fill").0, 0);
}

#[test]
fn route_change_mid_transfer_moves_only_new_connections() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut dp = open(
        &t.router,
        &[
            (&t.router_client.dev, AttachMode::Tc),
            (&t.router_backend.dev, AttachMode::Tc),
            (&t.router_backend2.dev, AttachMode::Tc),
        ],
        t.router_addr(),
    );
    let s1 = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server 1");
    let s2 =
        EchoServer::start(&t.backend2, t.backend2_end.addr, 9090, "backend2").expect("server 2");
    dp.apply_routes(&tcp_routes(&[(PORT, t.backend_end.addr, BACKEND_PORT)]))
        .expect("routes");
    let mut old = Client::connect(&t.client, router_port(&t)).expect("connect");
    assert_eq!(old.banner, "backend1");
    let mut moved = None;
    old.echo_random(4 * MIB, 64 * 1024, |chunk| {
        if chunk == 20 && moved.is_none() {
            let report = dp
                .apply_routes(&tcp_routes(&[(PORT, t.backend2_end.addr, 9090)]))
                .expect("change the route");
            assert_eq!(report.changed, 1);
            let new = Client::connect(&t.client, router_port(&t)).expect("connect anew");
            moved = Some(new);
        }
    })
    .expect("the established connection keeps its backend");
    let mut new = moved.expect("the route was changed mid-transfer");
    assert_eq!(
        new.banner, "backend2",
        "new connections follow the new route"
    );
    new.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");
    old.finish().expect("close");
    new.finish().expect("close");
    assert_eq!((s1.accepted(), s2.accepted()), (1, 1));
}

#[test]
fn route_removal_keeps_established_and_refuses_new() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut dp = open_client_and_backend(&t, AttachMode::Tc);
    let _server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server");
    dp.apply_routes(&tcp_routes(&[(PORT, t.backend_end.addr, BACKEND_PORT)]))
        .expect("routes");
    let mut client = Client::connect(&t.client, router_port(&t)).expect("connect");
    client.echo_random(MIB, 64 * 1024, |_| {}).expect("echo");
    let report = dp.apply_routes(&BTreeMap::new()).expect("remove the route");
    assert_eq!(report.removed, 1);
    // The sweeper sees the connection and keeps the port in the kernel's filter.
    dp.sweep().expect("sweep");
    let refused = Client::connect(&t.client, router_port(&t));
    let err = refused
        .err()
        .expect("a new connection must fail without a route");
    assert!(
        err.chain().any(|e| e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)),
        "expected the host to refuse (RST): {err:#}"
    );
    assert!(
        dp.stat(Hook::Tc, StatReason::PassNoRoute)
            .expect("stats")
            .packets
            >= 1
    );
    client
        .echo_random(2 * MIB, 64 * 1024, |_| {})
        .expect("the established connection carries on");
    client.finish().expect("close");
}

#[test]
fn backend_behind_a_bridge_on_the_router_host() {
    require_root();
    let mut t = Topology::new().expect("topology");
    let bridged = t.add_bridged_backend().expect("bridged backend");
    let (bridge, addr) = (bridged.bridge.clone(), bridged.addr);
    let server = EchoServer::start(&bridged.ns, addr, BACKEND_PORT, "container").expect("server");
    let mut dp = open(
        &t.router,
        &[
            (&t.router_client.dev, AttachMode::Auto),
            (&bridge, AttachMode::Auto),
        ],
        t.router_addr(),
    );
    assert_eq!(
        modes(&dp),
        [ResolvedMode::Tc, ResolvedMode::Tc],
        "auto picks TC on bridges"
    );
    echo_through_route(&t, &mut dp, addr, "container", 4 * MIB);
    assert_eq!(server.accepted(), 1);
    let conns = dp.connections().expect("connections");
    assert_eq!(conns[0].nat_source.ip(), &Ipv4Addr::new(10, 81, 4, 1));
}

#[test]
fn daemon_forwards_a_route_from_its_routes_file() {
    require_root();
    let t = Topology::new().expect("topology");
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server");
    let daemon = DaemonSetup::new(&t.router)
        .interface(&t.router_client.dev)
        .interface_as(&t.router_backend.dev, "tc")
        .tcp_route(PORT, format!("{}:{BACKEND_PORT}", t.backend_end.addr))
        .admin("127.0.0.1:0")
        .tcp_ports(PORT, PORT)
        .no_auth()
        .start(Duration::from_secs(20));
    let mut client = Client::connect(&t.client, router_port(&t)).expect("connect");
    assert_eq!(client.banner, "backend1");
    client
        .echo_random(2 * MIB, 64 * 1024, |_| {})
        .expect("echo");
    client.finish().expect("close");
    assert_eq!(server.accepted(), 1);
    daemon.terminate();
}

#[test]
fn xdp_generic_mode_hands_forwarding_to_the_tc_program_behind_it() {
    require_root();
    let t = Topology::new().expect("topology");
    let mut dp = open_client_and_backend(&t, AttachMode::XdpGeneric);
    assert_eq!(
        modes(&dp),
        [ResolvedMode::XdpGeneric, ResolvedMode::XdpGeneric]
    );
    let _server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
        .expect("server");
    echo_through_route(&t, &mut dp, t.backend_end.addr, "backend1", 2 * MIB);
    // Generic XDP only redirects to native-XDP interfaces: here TC forwards everything.
    let handed = dp
        .stat(Hook::Xdp, StatReason::XdpToTcNotXdpTarget)
        .expect("stats");
    let forwarded = dp.stat(Hook::Tc, StatReason::Forwarded).expect("stats");
    assert!(handed.packets > 10, "XDP handed over {handed:?}");
    assert!(
        forwarded.bytes > 4 * MIB as u64,
        "TC forwarded {forwarded:?}"
    );
}

/// client — router — hop1 =(MTU 1200)= hop2 — backend: every end has MTU 1500, so both sides
/// announce a 1460-byte MSS and the client's full-size segments only get through once it
/// learns the path MTU from hop1's "fragmentation needed", which the router must translate
/// back to it (the error is addressed to the NAT source and quotes the translated packet).
#[test]
fn path_mtu_discovery_works_through_the_nat() {
    require_root();
    let client = Netns::new("trpc").expect("ns");
    let router = Netns::new("trpr").expect("ns");
    let hop1 = Netns::new("trph").expect("ns");
    let hop2 = Netns::new("trph").expect("ns");
    let backend = Netns::new("trpb").expect("ns");
    let ip = Ipv4Addr::new;
    let (_c, r_client) = veth(&client, ip(10, 90, 1, 2), &router, ip(10, 90, 1, 1)).expect("veth");
    let (r_hop, _h1) = veth(&router, ip(10, 90, 2, 1), &hop1, ip(10, 90, 2, 2)).expect("veth");
    let (h1_narrow, h2_narrow) =
        veth(&hop1, ip(10, 90, 3, 1), &hop2, ip(10, 90, 3, 2)).expect("veth");
    let (_h2, b_end) = veth(&hop2, ip(10, 90, 4, 1), &backend, ip(10, 90, 4, 2)).expect("veth");
    hop1.ip(&["link", "set", &h1_narrow.dev, "mtu", "1200"])
        .expect("mtu");
    hop2.ip(&["link", "set", &h2_narrow.dev, "mtu", "1200"])
        .expect("mtu");
    for ns in [&router, &hop1, &hop2] {
        ns.sysctl("net.ipv4.ip_forward=1").expect("forwarding");
    }
    router
        .ip(&["route", "add", "10.90.4.0/24", "via", "10.90.2.2"])
        .expect("route");
    hop1.ip(&["route", "add", "10.90.4.0/24", "via", "10.90.3.2"])
        .expect("route");
    hop2.ip(&["route", "add", "10.90.2.0/24", "via", "10.90.3.1"])
        .expect("route");
    backend
        .ip(&["route", "add", "default", "via", "10.90.4.1"])
        .expect("route");
    let mut dp = open(
        &router,
        &[
            (&r_client.dev, AttachMode::Tc),
            (&r_hop.dev, AttachMode::Tc),
        ],
        r_client.addr,
    );
    let _server =
        EchoServer::start(&backend, b_end.addr, BACKEND_PORT, "far").expect("echo server");
    dp.apply_routes(&tcp_routes(&[(PORT, b_end.addr, BACKEND_PORT)]))
        .expect("routes");
    let mut c = Client::connect(&client, SocketAddrV4::new(r_client.addr, PORT)).expect("connect");
    assert_eq!(c.banner, "far");
    c.echo_random(MIB, 64 * 1024, |_| {})
        .expect("large segments get through once the path MTU is known");
    c.finish().expect("close");
    let translated = dp
        .stat(Hook::Tc, StatReason::IcmpTranslated)
        .expect("stats");
    assert!(translated.packets >= 1, "no ICMP error was translated");
    let route = client
        .run("ip", &["route", "get", &r_client.addr.to_string()])
        .expect("ip route get");
    let text = String::from_utf8_lossy(&route.stdout);
    assert!(
        text.contains("mtu 1200"),
        "the client did not learn the path MTU: {text}"
    );
}

/// The router's link toward the backend carries only 1400-byte packets while both ends have
/// 1500-byte links (an overlay or tunnel in the path): without help the client's full-size
/// segments would be dropped at the router (it cannot fragment them, and the kernel's
/// "fragmentation needed" would go to the NAT address), and the backend's would not fit the
/// link. The handshake's MSS is clamped, so a transfer with full-checksum, unsegmented frames
/// (as a NIC delivers) completes and nothing is dropped as too big.
#[test]
fn transfer_completes_over_a_narrow_link_toward_the_backend() {
    require_root();
    let t = Topology::new().expect("topology");
    for (ns, dev) in t.senders() {
        ns.tx_offload(dev, false).expect("tx off");
    }
    t.router
        .ip(&["link", "set", &t.router_backend.dev, "mtu", "1400"])
        .expect("narrow the router's link toward the backend");
    let mut dp = open_client_and_backend(&t, AttachMode::Tc);
    forward_and_check(&t, &mut dp, Hook::Tc, 2 * MIB);
    assert_eq!(
        dp.stat(Hook::Tc, StatReason::DropTooBig)
            .expect("stats")
            .packets,
        0,
        "segments dropped as too big"
    );
}
