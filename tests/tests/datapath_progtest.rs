//! Every packet path of the kernel programs, through BPF_PROG_TEST_RUN, for XDP and TC: the
//! verdict, the bytes that leave (addresses, ports, TTL, MACs, checksums verified from scratch
//! by `router_tests::packet`), the counters and the connection table.

use router_common::conntrack::{CtKey4, CtValue4, HalfOpen4, NH_PEER, TCP_FIN, TCP_SYN as CT_SYN};
use router_common::stats::{Hook, StatReason};
use router_tests::netns::Netns;
use router_tests::packet::{
    self, TCP_ACK, TCP_FIN as FIN, TCP_PSH, TCP_RST, TCP_SYN, Tcp4, icmp_checksum_ok,
    ipv4_checksum_ok, parse, tcp_checksum_ok,
};
use router_tests::require_root;
use router_tests::topology::{Mac, ProgTestNet};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::{
    AttachMode, ConnState, DEFAULT_NAT_SOURCE_PORTS, Datapath, Program, RunOutput, Timeouts,
};
use router_userspace::routes::{RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const PORT: u16 = 20000;
const PORT_UNRESOLVED: u16 = 20001;
const PORT_NEVER_ROUTED: u16 = 20002;
const BACKEND_PORT: u16 = 8080;
/// The acknowledgment number of client packets with ACK (`Tcp4`'s default).
const CLIENT_ACK: u32 = 2000;

/// The router namespace's addresses, usable inside it.
#[derive(Clone)]
struct Net {
    client_dev: String,
    backend_dev: String,
    client_dev_mac: Mac,
    backend_dev_mac: Mac,
    router: Ipv4Addr,
    client: Ipv4Addr,
    client_mac: Mac,
    nat_source: Ipv4Addr,
    backend: Ipv4Addr,
    backend_mac: Mac,
    backend_unresolved: Ipv4Addr,
}

struct Env {
    dp: Datapath,
    net: Net,
    program: Program,
    client_if: u32,
    backend_if: u32,
}

struct Opts {
    max_connections: u32,
    nat_source_ports: (u16, u16),
    xdp_targets: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            max_connections: 1024,
            nat_source_ports: DEFAULT_NAT_SOURCE_PORTS,
            xdp_targets: true,
        }
    }
}

fn route(port: u16, ip: Ipv4Addr, backend_port: u16) -> (u16, TcpRoute) {
    (
        port,
        TcpRoute {
            port,
            upstream: SocketAddrV4::new(ip, backend_port),
            owner: RouteOwner {
                task_id: format!("task-{port}"),
                task_name: "test".into(),
                endpoint: String::new(),
            },
        },
    )
}

/// Runs `body` inside a fresh router namespace with a datapath (not attached anywhere) whose
/// routes are PORT → backend:8080 and PORT_UNRESOLVED → an address without a neighbour entry.
fn with_env(program: Program, opts: Opts, body: impl FnOnce(&mut Env) + Send + 'static) {
    require_root();
    let t = ProgTestNet::new().expect("router namespace");
    let client_if = t.ifindex(&t.client_dev).expect("ifindex");
    let backend_if = t.ifindex(&t.backend_dev).expect("ifindex");
    let net = Net {
        client_dev: t.client_dev.clone(),
        backend_dev: t.backend_dev.clone(),
        client_dev_mac: t.client_dev_mac,
        backend_dev_mac: t.backend_dev_mac,
        router: t.router,
        client: t.client,
        client_mac: t.client_mac,
        nat_source: t.nat_source,
        backend: t.backend,
        backend_mac: t.backend_mac,
        backend_unresolved: t.backend_unresolved,
    };
    let result = t.ns.enter(move || {
        let cfg = DatapathConfig {
            kind: DatapathKind::Ebpf(AttachMode::Tc),
            interfaces: Vec::new(),
            bpffs: std::env::temp_dir(),
            max_connections: opts.max_connections,
            conntrack_pressure: router_userspace::datapath::Pressure::default(),
            router_addresses: vec![net.router],
            nat_source_ports: opts.nat_source_ports,
        };
        let mut dp = Datapath::open(&cfg).expect("open the datapath");
        if opts.xdp_targets {
            dp.add_xdp_target(&net.client_dev).expect("xdp target");
            dp.add_xdp_target(&net.backend_dev).expect("xdp target");
        }
        let routes: BTreeMap<u16, TcpRoute> = [
            route(PORT, net.backend, BACKEND_PORT),
            route(PORT_UNRESOLVED, net.backend_unresolved, BACKEND_PORT),
        ]
        .into_iter()
        .collect();
        let report = dp.apply_routes(&routes).expect("program routes");
        assert_eq!(report.added, 2, "{report:?}");
        let mut env = Env {
            dp,
            net,
            program,
            client_if,
            backend_if,
        };
        body(&mut env);
    });
    result.expect("the test body failed (see the panic above)");
}

impl Env {
    fn hook(&self) -> Hook {
        match self.program {
            Program::Xdp => Hook::Xdp,
            _ => Hook::Tc,
        }
    }

    fn redirected(&self) -> u32 {
        if self.hook() == Hook::Xdp { 4 } else { 7 }
    }

    fn passed(&self) -> u32 {
        if self.hook() == Hook::Xdp {
            2
        } else {
            u32::MAX // TC_ACT_UNSPEC (-1): TCX "next"
        }
    }

    fn dropped(&self) -> u32 {
        if self.hook() == Hook::Xdp { 1 } else { 2 }
    }

    fn run(&mut self, frame: &[u8], from_client: bool) -> RunOutput {
        let ifindex = if from_client {
            self.client_if
        } else {
            self.backend_if
        };
        self.dp
            .test_run(self.program, frame, 1, Some(ifindex))
            .expect("BPF_PROG_TEST_RUN")
    }

    fn count(&self, reason: StatReason) -> u64 {
        self.dp.stat(self.hook(), reason).expect("stats").packets
    }

    /// A client packet to the router port.
    fn client_packet(&self, sport: u16, flags: u8) -> Tcp4 {
        self.packet_from(self.net.client, sport, flags)
    }

    /// A packet from another client address `from` to the router port.
    fn packet_from(&self, from: Ipv4Addr, sport: u16, flags: u8) -> Tcp4 {
        Tcp4::new(from, sport, self.net.router, PORT, flags)
            .macs(self.net.client_mac, self.net.client_dev_mac)
    }

    /// Answers the SYN of client port `sport` and closes the connection (FIN both ways).
    fn handshake_and_close(&mut self, sport: u16) {
        let synack = self.backend_packet(sport, TCP_SYN | TCP_ACK).build();
        assert_eq!(self.run(&synack, false).retval, self.redirected());
        self.close(sport);
    }

    /// FIN both ways on the connection of client port `sport`.
    fn close(&mut self, sport: u16) {
        let fin = self.client_packet(sport, FIN | TCP_ACK).build();
        assert_eq!(self.run(&fin, true).retval, self.redirected());
        let fin = self.backend_packet(sport, FIN | TCP_ACK).build();
        assert_eq!(self.run(&fin, false).retval, self.redirected());
    }

    /// A backend packet to the NAT source. A SYN-ACK's sequence number is the one the client
    /// packets' default acknowledgment number acknowledges, so the client's next ACK completes
    /// the handshake (the connection moves from the half-open table into the main one).
    fn backend_packet(&self, dport: u16, flags: u8) -> Tcp4 {
        let mut p = Tcp4::new(
            self.net.backend,
            BACKEND_PORT,
            self.net.nat_source,
            dport,
            flags,
        )
        .macs(self.net.backend_mac, self.net.backend_dev_mac);
        if flags & TCP_SYN != 0 {
            p.seq = CLIENT_ACK - 1;
        }
        p
    }

    /// Sends a client SYN and checks it leaves translated toward the backend; returns the
    /// translated frame.
    fn open(&mut self, sport: u16) -> Vec<u8> {
        let syn = self.client_packet(sport, TCP_SYN).build();
        let out = self.run(&syn, true);
        assert_eq!(out.retval, self.redirected(), "SYN verdict");
        out.frame
    }

    fn forward_key(&self, sport: u16) -> CtKey4 {
        CtKey4 {
            saddr: raw(self.net.client),
            daddr: raw(self.net.router),
            sport: sport.to_be(),
            dport: PORT.to_be(),
        }
    }

    /// The entry at `key`: in the connection table, or in the half-open table while the
    /// handshake is under way.
    fn entry(&self, key: &CtKey4) -> CtValue4 {
        self.dp
            .conntrack_entry(key)
            .or_else(|| self.dp.half_open_entry(key).map(|h| h.ct))
            .unwrap_or_else(|| panic!("no conntrack entry for {key:?}"))
    }

    /// The half-open table's entry at `key`.
    fn half_open(&self, key: &CtKey4) -> HalfOpen4 {
        self.dp
            .half_open_entry(key)
            .unwrap_or_else(|| panic!("no half-open entry for {key:?}"))
    }

    /// SYN, SYN-ACK and the client's ACK: the connection of client port `sport` is confirmed.
    fn establish(&mut self, sport: u16) {
        self.open(sport);
        let synack = self.backend_packet(sport, TCP_SYN | TCP_ACK).build();
        assert_eq!(self.run(&synack, false).retval, self.redirected());
        let ack = self.client_packet(sport, TCP_ACK).build();
        assert_eq!(self.run(&ack, true).retval, self.redirected());
        assert!(
            self.dp.conntrack_entry(&self.forward_key(sport)).is_some(),
            "confirmed"
        );
    }
}

fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn assert_checksums(frame: &[u8]) {
    assert!(ipv4_checksum_ok(frame), "IPv4 header checksum is wrong");
    assert!(tcp_checksum_ok(frame), "TCP checksum is wrong");
}

macro_rules! both_hooks {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn xdp() {
                super::$name(super::Program::Xdp);
            }
            #[test]
            fn tc() {
                super::$name(super::Program::Tc);
            }
        }
    )+};
}

both_hooks!(
    new_connection_is_translated_and_tracked,
    established_connection_is_translated_both_ways,
    rst_and_stray_segments_never_create_connections,
    fin_and_rst_close_and_the_sweeper_expires_them,
    syn_without_route_passes_to_the_stack,
    route_change_affects_new_connections_only,
    full_table_is_a_counted_drop,
    taken_source_port_is_probed_and_exhaustion_counted,
    truncated_and_malformed_headers_pass_untouched,
    icmp_errors_are_translated_back,
    traffic_not_for_the_range_passes_untouched,
    unresolved_neighbour_goes_through_the_neighbour_path,
    ttl_that_would_expire_is_dropped,
    oversized_frames_are_not_forwarded_blindly,
    closed_connections_keep_their_tuple_through_time_wait,
    a_port_reused_on_an_ended_connection_restarts_the_pair_or_follows_a_moved_route,
    handshake_mss_is_clamped_to_the_links,
    lengths_that_do_not_hold_the_headers_pass_untouched,
    the_peer_hand_off_follows_where_the_egress_peer_lives,
    a_syn_opens_a_half_open_pair_that_the_completing_ack_confirms,
    a_full_half_open_table_evicts_the_oldest_and_frees_its_tuple,
    established_connections_are_never_evicted_by_syns,
);

fn new_connection_is_translated_and_tracked(program: Program) {
    with_env(program, Opts::default(), |env| {
        let body = payload(0);
        let out = env.open(40000);
        let p = parse(&out).expect("translated SYN parses");
        assert_eq!(p.dst_mac, env.net.backend_mac, "next hop MAC");
        assert_eq!(p.src_mac, env.net.backend_dev_mac, "egress MAC");
        assert_eq!((p.saddr, p.daddr), (env.net.nat_source, env.net.backend));
        assert_eq!(
            (p.sport, p.dport),
            (40000, BACKEND_PORT),
            "client port kept"
        );
        assert_eq!((p.ttl, p.flags), (63, TCP_SYN));
        assert_eq!(&p.l4[20..], &body[..]);
        assert_checksums(&out);

        let fwd = env.entry(&env.forward_key(40000));
        assert!(!fwd.to_client());
        assert_eq!(
            (fwd.saddr, fwd.daddr, fwd.sport, fwd.dport),
            (
                raw(env.net.nat_source),
                raw(env.net.backend),
                40000u16.to_be(),
                BACKEND_PORT.to_be()
            )
        );
        assert_eq!((fwd.tcp_flags, fwd.packets), (CT_SYN, 1));
        assert_ne!(fwd.route_id, 0);
        let reply = env.entry(&CtKey4::partner_of(&fwd));
        assert!(reply.to_client());
        assert_eq!(
            (reply.saddr, reply.daddr, reply.sport, reply.dport),
            (
                raw(env.net.router),
                raw(env.net.client),
                PORT.to_be(),
                40000u16.to_be()
            )
        );
        assert_eq!(reply.route_id, fwd.route_id);
        assert_eq!(env.count(StatReason::NewConnection), 1);
        // Half-open: both entries and the tuple are in the half-open table, not counted yet.
        assert!(env.dp.conntrack_entry(&env.forward_key(40000)).is_none());
        assert_eq!(env.dp.fill().expect("fill").0, 0);
        // A retransmitted SYN follows the same entry.
        let again = env.open(40000);
        assert_eq!(again, out);
        assert_eq!(env.count(StatReason::NewConnection), 1);
        assert_eq!(env.count(StatReason::Forwarded), 1);
    });
}

fn established_connection_is_translated_both_ways(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        let synack = env.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        let out = env.run(&synack, false);
        assert_eq!(out.retval, env.redirected(), "SYN-ACK verdict");
        let p = parse(&out.frame).expect("parses");
        assert_eq!(
            (p.dst_mac, p.src_mac),
            (env.net.client_mac, env.net.client_dev_mac)
        );
        assert_eq!((p.saddr, p.daddr), (env.net.router, env.net.client));
        assert_eq!((p.sport, p.dport, p.ttl), (PORT, 40000, 63));
        assert_checksums(&out.frame);

        let data = payload(1001);
        let seg = env
            .client_packet(40000, TCP_ACK | TCP_PSH)
            .payload(&data)
            .build();
        let out = env.run(&seg, true);
        assert_eq!(out.retval, env.redirected());
        let p = parse(&out.frame).expect("parses");
        assert_eq!((p.saddr, p.daddr), (env.net.nat_source, env.net.backend));
        assert_eq!((p.sport, p.dport), (40000, BACKEND_PORT));
        assert_eq!(&p.l4[20..], &data[..], "payload untouched");
        assert_checksums(&out.frame);

        let answer = payload(777);
        let seg = env
            .backend_packet(40000, TCP_ACK | TCP_PSH)
            .payload(&answer)
            .build();
        let out = env.run(&seg, false);
        assert_eq!(out.retval, env.redirected());
        let p = parse(&out.frame).expect("parses");
        assert_eq!(
            (p.saddr, p.daddr, p.sport, p.dport),
            (env.net.router, env.net.client, PORT, 40000)
        );
        assert_eq!(&p.l4[20..], &answer[..]);
        assert_checksums(&out.frame);

        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1);
        let c = &conns[0];
        assert_eq!(c.state, ConnState::Established);
        assert_eq!(c.client, SocketAddrV4::new(env.net.client, 40000));
        assert_eq!(c.router, SocketAddrV4::new(env.net.router, PORT));
        assert_eq!(c.backend, SocketAddrV4::new(env.net.backend, BACKEND_PORT));
        assert_eq!(c.nat_source, SocketAddrV4::new(env.net.nat_source, 40000));
        assert_eq!((c.to_backend.packets, c.to_client.packets), (2, 2));
        // The client's first segment acknowledged the SYN-ACK: it confirmed the connection.
        assert_eq!(env.count(StatReason::Forwarded), 2);
        assert_eq!(env.count(StatReason::HandshakeConfirmed), 1);
        let sweep = env.dp.sweep().expect("sweep");
        assert_eq!((sweep.live, sweep.expired), (1, 0));
        let (_, counters) = env.dp.route_counters()[&PORT];
        assert_eq!((counters.active, counters.connections), (1, 1));
        assert_eq!(counters.to_backend.packets, 2);
        assert!(counters.to_client.bytes > 777);
    });
}

fn rst_and_stray_segments_never_create_connections(program: Program) {
    with_env(program, Opts::default(), |env| {
        for flags in [
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_ACK,
            TCP_SYN | TCP_ACK,
            TCP_FIN | TCP_ACK,
        ] {
            let frame = env.client_packet(41000, flags).build();
            let out = env.run(&frame, true);
            assert_eq!(out.retval, env.passed(), "flags {flags:#x}");
            assert_eq!(out.frame, frame, "passed untouched");
        }
        assert_eq!(env.count(StatReason::PassNoConnection), 5);
        assert_eq!(env.count(StatReason::NewConnection), 0);
        assert!(env.dp.connections().expect("connections").is_empty());
        assert_eq!(env.dp.fill().expect("fill").0, 0);
    });
}

fn fin_and_rst_close_and_the_sweeper_expires_them(program: Program) {
    with_env(program, Opts::default(), |env| {
        // Connection 1 ends with FINs both ways.
        env.open(40000);
        let synack = env.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(env.run(&synack, false).retval, env.redirected());
        let ack = env.client_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&ack, true).retval, env.redirected());
        let fin = env.client_packet(40000, FIN | TCP_ACK).build();
        assert_eq!(env.run(&fin, true).retval, env.redirected());
        let state = |env: &mut Env| env.dp.connections().expect("connections")[0].state;
        assert_eq!(state(env), ConnState::Established, "half-closed stays open");
        let fin = env.backend_packet(40000, FIN | TCP_ACK).build();
        assert_eq!(env.run(&fin, false).retval, env.redirected());
        assert_eq!(state(env), ConnState::Closing);
        assert_ne!(env.entry(&env.forward_key(40000)).tcp_flags & TCP_FIN, 0);

        // Connection 2 is reset by the backend; the RST is forwarded.
        env.open(40001);
        let rst = env.backend_packet(40001, TCP_RST | TCP_ACK).build();
        let out = env.run(&rst, false);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(parse(&out.frame).expect("parses").flags, TCP_RST | TCP_ACK);
        // A new SYN from the same client port opens afresh (half-open, on the same tuple).
        env.open(40001);
        assert_eq!(env.count(StatReason::NewConnection), 3);
        assert_eq!(env.entry(&env.forward_key(40001)).tcp_flags, CT_SYN);

        // Connection 3 stays open. Closing ones expire at once with a zero closing timeout.
        env.establish(40002);
        env.dp.set_timeouts(Timeouts {
            closing: Duration::ZERO,
            ..Timeouts::default()
        });
        let report = env.dp.sweep().expect("sweep");
        assert_eq!(report.expired, 1, "{report:?}");
        assert_eq!((report.live, report.half_open), (1, 1), "{report:?}");
        assert!(env.dp.conntrack_entry(&env.forward_key(40000)).is_none());
        assert!(env.dp.conntrack_entry(&env.forward_key(40002)).is_some());
        assert_eq!(env.dp.fill().expect("fill").0, 1, "kernel count corrected");
        // Opening connections expire after their own timeout, half-open ones too.
        env.dp.set_timeouts(Timeouts {
            opening: Duration::ZERO,
            established: Duration::ZERO,
            ..Timeouts::default()
        });
        let report = env.dp.sweep().expect("sweep");
        assert_eq!((report.expired, report.live), (1, 0), "{report:?}");
        assert_eq!((report.half_open_expired, report.half_open), (1, 0));
        assert!(env.dp.half_open_entry(&env.forward_key(40001)).is_none());
        assert_eq!(env.dp.fill().expect("fill").0, 0);
    });
}

fn syn_without_route_passes_to_the_stack(program: Program) {
    with_env(program, Opts::default(), |env| {
        let syn = Tcp4::new(
            env.net.client,
            40000,
            env.net.router,
            PORT_NEVER_ROUTED,
            TCP_SYN,
        )
        .build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.passed());
        assert_eq!(out.frame, syn);
        assert_eq!(env.count(StatReason::PassNotForRange), 1);

        // A removed route: established connections carry on, new SYNs go to the stack.
        env.open(40000);
        let kept = BTreeMap::from([route(
            PORT_UNRESOLVED,
            env.net.backend_unresolved,
            BACKEND_PORT,
        )]);
        let report = env.dp.apply_routes(&kept).expect("apply");
        assert_eq!(report.removed, 1);
        let syn = env.client_packet(40001, TCP_SYN).build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.passed());
        assert_eq!(out.frame, syn);
        assert_eq!(env.count(StatReason::PassNoRoute), 1);
        let data = env
            .client_packet(40000, TCP_ACK)
            .payload(b"still here")
            .build();
        assert_eq!(env.run(&data, true).retval, env.redirected());
        let synack = env.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(env.run(&synack, false).retval, env.redirected());
    });
}

fn route_change_affects_new_connections_only(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        let moved = BTreeMap::from([
            route(PORT, env.net.backend, 9090),
            route(PORT_UNRESOLVED, env.net.backend_unresolved, BACKEND_PORT),
        ]);
        let report = env.dp.apply_routes(&moved).expect("apply");
        assert_eq!(report.changed, 1, "{report:?}");
        let old = env.client_packet(40000, TCP_ACK).build();
        let out = env.run(&old, true);
        assert_eq!(parse(&out.frame).expect("parses").dport, BACKEND_PORT);
        let new = env.open(40001);
        assert_eq!(parse(&new).expect("parses").dport, 9090);
        assert_checksums(&new);
        // Replies of the old connection still come back from the old backend port.
        let reply = env.backend_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&reply, false).retval, env.redirected());
    });
}

fn full_table_is_a_counted_drop(program: Program) {
    let opts = Opts {
        max_connections: 2,
        ..Opts::default()
    };
    with_env(program, opts, |env| {
        env.establish(40000);
        // Two handshakes under way: half-open connections do not count against the table.
        env.open(40001);
        env.open(40002);
        assert_eq!(env.dp.fill().expect("fill"), (1, 2));
        for sport in [40001, 40002] {
            let synack = env.backend_packet(sport, TCP_SYN | TCP_ACK).build();
            assert_eq!(env.run(&synack, false).retval, env.redirected());
        }
        let ack_1 = env.client_packet(40001, TCP_ACK).build();
        assert_eq!(env.run(&ack_1, true).retval, env.redirected());
        assert_eq!(env.dp.fill().expect("fill"), (2, 2));
        // Full: a new SYN is dropped, and so is a handshake's completing ACK, whose pair stays
        // half-open for the client's next segment.
        let syn = env.client_packet(40003, TCP_SYN).build();
        assert_eq!(env.run(&syn, true).retval, env.dropped());
        let ack_2 = env.client_packet(40002, TCP_ACK).build();
        assert_eq!(env.run(&ack_2, true).retval, env.dropped());
        assert_eq!(env.count(StatReason::DropTableFull), 2);
        assert!(env.dp.conntrack_entry(&env.forward_key(40003)).is_none());
        assert!(env.dp.half_open_entry(&env.forward_key(40003)).is_none());
        assert!(env.dp.half_open_entry(&env.forward_key(40002)).is_some());
        assert_eq!(env.dp.fill().expect("fill"), (2, 2));
        // Room again once the sweeper expired a connection.
        let rst = env.client_packet(40000, TCP_RST).build();
        assert_eq!(env.run(&rst, true).retval, env.redirected());
        env.dp.set_timeouts(Timeouts {
            closing: Duration::ZERO,
            ..Timeouts::default()
        });
        let report = env.dp.sweep().expect("sweep");
        assert_eq!((report.live, report.expired), (1, 1));
        assert!((report.fill() - 0.5).abs() < 1e-9);
        // The waiting handshake completes at the client's next segment.
        assert_eq!(env.run(&ack_2, true).retval, env.redirected());
        assert_eq!(env.count(StatReason::HandshakeConfirmed), 3);
        assert_eq!(env.dp.fill().expect("fill"), (2, 2));
        assert_eq!(env.count(StatReason::DropTableFull), 2);
    });
}

fn taken_source_port_is_probed_and_exhaustion_counted(program: Program) {
    let opts = Opts {
        nat_source_ports: (61000, 61000),
        ..Opts::default()
    };
    with_env(program, opts, |env| {
        env.open(40000);
        // Another client with the same port, to the same backend: the port is taken there.
        let other = Ipv4Addr::new(10, 70, 1, 3);
        let syn = env.packet_from(other, 40000, TCP_SYN).build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.redirected());
        let p = parse(&out.frame).expect("parses");
        assert_eq!(p.sport, 61000, "probed within the NAT source range");
        assert_checksums(&out.frame);
        // A third one finds neither its own port nor the range free.
        let third = Ipv4Addr::new(10, 70, 1, 4);
        let syn = Tcp4::new(third, 40000, env.net.router, PORT, TCP_SYN).build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.dropped());
        assert_eq!(env.count(StatReason::DropNoSourcePort), 1);
        // Both connections are half-open: their tuples are held in the half-open table.
        assert_eq!(env.dp.fill().expect("fill").0, 0);
        assert_eq!(env.dp.half_open_table().expect("half-open").0.len(), 4);
    });
}

fn truncated_and_malformed_headers_pass_untouched(program: Program) {
    with_env(program, Opts::default(), |env| {
        let good = env.client_packet(40000, TCP_SYN).build();
        let mut cases: Vec<(&str, Vec<u8>, StatReason)> = Vec::new();
        let mut not_ip = good[..14].to_vec();
        not_ip[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        cases.push(("ethernet only", not_ip, StatReason::PassNotForRange));
        cases.push((
            "no IPv4 header",
            good[..14].to_vec(),
            StatReason::PassMalformed,
        ));
        cases.push((
            "IPv4 header cut",
            good[..14 + 12].to_vec(),
            StatReason::PassMalformed,
        ));
        cases.push((
            "TCP header cut",
            good[..14 + 20 + 10].to_vec(),
            StatReason::PassMalformed,
        ));
        let mut v6 = good.clone();
        v6[14] = 0x65;
        cases.push(("version 6", v6, StatReason::PassMalformed));
        let mut short_ihl = good.clone();
        short_ihl[14] = 0x44;
        cases.push(("IHL 4", short_ihl, StatReason::PassMalformed));
        let mut doff = good.clone();
        doff[14 + 20 + 12] = 2 << 4;
        cases.push(("TCP data offset 2", doff, StatReason::PassMalformed));
        let mut opts = env.client_packet(40000, TCP_SYN);
        opts.ip_options = vec![1, 1, 1, 0];
        cases.push(("IP options", opts.build(), StatReason::PassIpOptions));
        let mut opts_cut = opts.build();
        opts_cut.truncate(14 + 24 + 2);
        cases.push(("IP options, ports cut", opts_cut, StatReason::PassMalformed));
        let mut opts_other = Tcp4::new(env.net.client, 40000, env.net.router, 22, TCP_SYN);
        opts_other.ip_options = vec![1, 1, 1, 0];
        cases.push((
            "IP options, port 22",
            opts_other.build(),
            StatReason::PassNotForRange,
        ));
        let mut more = env.client_packet(40000, TCP_SYN);
        more.frag = 0x2000;
        cases.push(("first fragment", more.build(), StatReason::PassFragment));
        let mut later = env.client_packet(40000, TCP_SYN);
        later.frag = 0x0010;
        cases.push(("later fragment", later.build(), StatReason::PassFragment));
        let icmp_cut = packet::ipv4_frame(
            env.net.backend_mac,
            env.net.backend_dev_mac,
            env.net.backend,
            env.net.nat_source,
            1,
            64,
            0,
            &[],
            &[3, 4, 0, 0],
        );
        cases.push(("ICMP header cut", icmp_cut, StatReason::PassMalformed));
        let quoted = env.client_packet(40000, TCP_SYN).build();
        let mut icmp_short_quote =
            packet::icmp_error(env.net.backend, env.net.nat_source, 3, 4, 1400, &quoted, 0);
        icmp_short_quote.truncate(icmp_short_quote.len() - 6);
        cases.push((
            "ICMP quote cut",
            icmp_short_quote,
            StatReason::PassNotForRange,
        ));

        for (what, frame, reason) in cases {
            let before = env.count(reason);
            if env.hook() == Hook::Tc && frame.len() < 14 + 20 && frame[12..14] == [8, 0] {
                // BPF_PROG_TEST_RUN builds an skb for TC and refuses IPv4 frames shorter than
                // an IPv4 header (EINVAL); the verifier already proved no access goes past
                // the end.
                let err = env.dp.test_run(env.program, &frame, 1, Some(env.client_if));
                assert!(
                    err.is_err(),
                    "{what}: the kernel now takes it; check the verdict"
                );
                continue;
            }
            let out = env.run(&frame, true);
            assert_eq!(out.retval, env.passed(), "{what}: verdict");
            assert_eq!(out.frame, frame, "{what}: frame changed");
            assert_eq!(
                env.count(reason),
                before + 1,
                "{what}: {} not counted",
                reason.name()
            );
        }
        assert!(env.dp.connections().expect("connections").is_empty());
    });
}

fn icmp_errors_are_translated_back(program: Program) {
    with_env(program, Opts::default(), |env| {
        let sent = env.open(40000);
        // "Fragmentation needed" from a router on the backend's path, about the packet the
        // router sent there.
        let hop = Ipv4Addr::new(10, 70, 2, 254);
        let mut icmp = packet::icmp_error(hop, env.net.nat_source, 3, 4, 1400, &sent, 8);
        icmp[0..6].copy_from_slice(&env.net.backend_dev_mac);
        let out = env.run(&icmp, false);
        assert_eq!(out.retval, env.redirected(), "ICMP verdict");
        let p = parse(&out.frame).expect("parses");
        assert_eq!(
            (p.dst_mac, p.src_mac),
            (env.net.client_mac, env.net.client_dev_mac)
        );
        assert_eq!(
            (p.saddr, p.daddr, p.ttl),
            (env.net.router, env.net.client, 63)
        );
        assert!(ipv4_checksum_ok(&out.frame), "outer IPv4 checksum");
        assert!(icmp_checksum_ok(&out.frame), "ICMP checksum");
        assert_eq!((p.l4[0], p.l4[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([p.l4[6], p.l4[7]]), 1400, "MTU kept");
        let inner = &p.l4[8..];
        assert_eq!(packet::checksum(&inner[..20]), 0, "quoted IPv4 checksum");
        assert_eq!(&inner[12..16], &env.net.client.octets());
        assert_eq!(&inner[16..20], &env.net.router.octets());
        assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 40000);
        assert_eq!(u16::from_be_bytes([inner[22], inner[23]]), PORT);
        assert_eq!(env.count(StatReason::IcmpTranslated), 1);

        // An error about a connection the router does not track passes untouched.
        let stranger = Tcp4::new(env.net.nat_source, 45555, env.net.backend, 22, TCP_SYN).build();
        let icmp = packet::icmp_error(hop, env.net.nat_source, 3, 1, 0, &stranger, 8);
        let out = env.run(&icmp, false);
        assert_eq!(out.retval, env.passed());
        assert_eq!(out.frame, icmp);
    });
}

fn traffic_not_for_the_range_passes_untouched(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        let net = env.net.clone();
        let mut frames = vec![
            (
                "ssh to the router",
                Tcp4::new(net.client, 50000, net.router, 22, TCP_SYN).build(),
            ),
            (
                "https to the router",
                Tcp4::new(net.client, 50000, net.router, 443, TCP_ACK).build(),
            ),
            (
                "router port on another host",
                Tcp4::new(
                    net.client,
                    50001,
                    Ipv4Addr::new(10, 70, 1, 99),
                    PORT,
                    TCP_SYN,
                )
                .build(),
            ),
            (
                "from a backend port, not a tracked connection",
                Tcp4::new(net.backend, BACKEND_PORT, net.nat_source, 50002, TCP_ACK).build(),
            ),
            (
                "udp to the router port",
                packet::ipv4_frame(
                    net.client_mac,
                    net.client_dev_mac,
                    net.client,
                    net.router,
                    17,
                    64,
                    0,
                    &[],
                    &[0x9c, 0x40, 0x4e, 0x20, 0, 8, 0, 0],
                ),
            ),
            (
                "icmp echo",
                packet::ipv4_frame(
                    net.client_mac,
                    net.client_dev_mac,
                    net.client,
                    net.router,
                    1,
                    64,
                    0,
                    &[],
                    &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
                ),
            ),
        ];
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&net.client_mac);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        frames.push(("arp", arp));
        let mut v6 = vec![0u8; 14 + 40 + 20];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14] = 0x60;
        frames.push(("ipv6", v6));
        let before = env.count(StatReason::PassNotForRange);
        let n = frames.len() as u64;
        for (what, frame) in frames {
            let out = env.run(&frame, true);
            assert_eq!(out.retval, env.passed(), "{what}");
            assert_eq!(out.frame, frame, "{what}: changed");
        }
        assert_eq!(env.count(StatReason::PassNotForRange), before + n);
        assert_eq!(env.dp.connections().expect("connections").len(), 1);
    });
}

fn unresolved_neighbour_goes_through_the_neighbour_path(program: Program) {
    with_env(program, Opts::default(), |env| {
        let syn = Tcp4::new(
            env.net.client,
            40000,
            env.net.router,
            PORT_UNRESOLVED,
            TCP_SYN,
        )
        .macs(env.net.client_mac, env.net.client_dev_mac)
        .build();
        let out = env.run(&syn, true);
        let key = CtKey4 {
            dport: PORT_UNRESOLVED.to_be(),
            ..env.forward_key(40000)
        };
        if env.hook() == Hook::Xdp {
            // XDP cannot resolve neighbours: the TC program behind it does.
            assert_eq!(out.retval, env.passed());
            assert_eq!(out.frame, syn);
            assert_eq!(env.count(StatReason::XdpToTcNoNeigh), 1);
            assert!(env.dp.conntrack_entry(&key).is_none());
        } else {
            assert_eq!(out.retval, env.redirected(), "bpf_redirect_neigh");
            let p = parse(&out.frame).expect("parses");
            assert_eq!(
                (p.saddr, p.daddr),
                (env.net.nat_source, env.net.backend_unresolved)
            );
            assert_checksums(&out.frame);
            assert_eq!(env.count(StatReason::NewConnection), 1);
            assert!(env.dp.half_open_entry(&key).is_some(), "half-open");
        }
    });
    // XDP also hands over what it cannot redirect to.
    if program == Program::Xdp {
        let opts = Opts {
            xdp_targets: false,
            ..Opts::default()
        };
        with_env(program, opts, |env| {
            let syn = env.client_packet(40000, TCP_SYN).build();
            let out = env.run(&syn, true);
            assert_eq!(out.retval, env.passed());
            assert_eq!(out.frame, syn);
            assert_eq!(env.count(StatReason::XdpToTcNotXdpTarget), 1);
        });
    }
}

fn ttl_that_would_expire_is_dropped(program: Program) {
    with_env(program, Opts::default(), |env| {
        let mut syn = env.client_packet(40000, TCP_SYN);
        syn.ttl = 1;
        let out = env.run(&syn.build(), true);
        assert_eq!(out.retval, env.dropped());
        assert_eq!(env.count(StatReason::DropTtlExceeded), 1);
        assert!(env.dp.connections().expect("connections").is_empty());
        env.open(40000);
        let mut seg = env.client_packet(40000, TCP_ACK);
        seg.ttl = 1;
        assert_eq!(env.run(&seg.build(), true).retval, env.dropped());
        assert_eq!(env.count(StatReason::DropTtlExceeded), 2);
    });
}

fn oversized_frames_are_not_forwarded_blindly(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        let big = env
            .client_packet(40000, TCP_ACK)
            .payload(&payload(1600))
            .build();
        let out = env.run(&big, true);
        if env.hook() == Hook::Xdp {
            assert_eq!(out.retval, env.passed());
            assert_eq!(out.frame, big);
            assert_eq!(env.count(StatReason::XdpToTcTooBig), 1);
        } else {
            assert_eq!(out.retval, env.dropped());
            assert_eq!(env.count(StatReason::DropTooBig), 1);
        }
        let fits = env
            .client_packet(40000, TCP_ACK)
            .payload(&payload(1460))
            .build();
        assert_eq!(env.run(&fits, true).retval, env.redirected());
    });
}

fn closed_connections_keep_their_tuple_through_time_wait(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        env.handshake_and_close(40000);
        env.dp.set_timeouts(Timeouts {
            closing: Duration::ZERO,
            ..Timeouts::default()
        });
        let report = env.dp.sweep().expect("sweep");
        assert_eq!((report.expired, report.live, report.tombstones), (1, 0, 1));
        assert!(env.dp.conntrack_entry(&env.forward_key(40000)).is_none());
        let reply_key = CtKey4 {
            saddr: raw(env.net.backend),
            daddr: raw(env.net.nat_source),
            sport: BACKEND_PORT.to_be(),
            dport: 40000u16.to_be(),
        };
        assert!(env.entry(&reply_key).is_tombstone());
        assert!(env.dp.connections().expect("connections").is_empty());

        // The backend's late segments on the tuple are not translated any more.
        let late = env.backend_packet(40000, FIN | TCP_ACK).build();
        let out = env.run(&late, false);
        assert_eq!(out.retval, env.passed());
        assert_eq!(out.frame, late);

        // Another client on the same port gets another NAT source port meanwhile (the
        // backend's TIME_WAIT would refuse its timestamps) ...
        let other = env
            .packet_from(Ipv4Addr::new(10, 70, 1, 3), 40000, TCP_SYN)
            .build();
        let out = env.run(&other, true);
        assert_eq!(out.retval, env.redirected());
        let sport = parse(&out.frame).expect("parses").sport;
        assert!(
            (61000..=65535).contains(&sport),
            "another client: port {sport}"
        );
        // ... while the same client reusing its port for the same router port takes its tuple
        // back, as it would without NAT (its timestamps are newer than the backend's record).
        let again = env.client_packet(40000, TCP_SYN).build();
        let out = env.run(&again, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(
            parse(&out.frame).expect("parses").sport,
            40000,
            "own tuple back"
        );
        assert_checksums(&out.frame);
        // Half-open on the tuple; the tombstone keeps it until the handshake completes.
        assert!(!env.half_open(&reply_key).ct.is_tombstone());
        assert!(
            env.dp
                .conntrack_entry(&reply_key)
                .expect("CT4")
                .is_tombstone()
        );
        let synack = env.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(env.run(&synack, false).retval, env.redirected());
        let ack = env.client_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&ack, true).retval, env.redirected());
        let reply = env.entry(&reply_key);
        assert!(!reply.is_tombstone(), "the tuple is live again");
        assert_eq!(
            env.entry(&CtKey4::partner_of(&env.entry(&env.forward_key(40000)))),
            reply
        );
        // Close it again so the rest of the test sees a tombstone on the tuple.
        let rst = env.client_packet(40000, TCP_RST | TCP_ACK).build();
        assert_eq!(env.run(&rst, true).retval, env.redirected());
        let report = env.dp.sweep().expect("sweep");
        assert!(env.entry(&reply_key).is_tombstone(), "{report:?}");

        // After TIME_WAIT the tuple is free again.
        env.dp.set_timeouts(Timeouts {
            time_wait: Duration::ZERO,
            ..Timeouts::default()
        });
        let report = env.dp.sweep().expect("sweep");
        assert_eq!(report.tombstones, 0, "{report:?}");
        assert!(env.dp.conntrack_entry(&reply_key).is_none());
        let syn = env
            .packet_from(Ipv4Addr::new(10, 70, 1, 4), 40000, TCP_SYN)
            .build();
        let out = env.run(&syn, true);
        assert_eq!(parse(&out.frame).expect("parses").sport, 40000);
    });
}

fn a_port_reused_on_an_ended_connection_restarts_the_pair_or_follows_a_moved_route(
    program: Program,
) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        env.handshake_and_close(40000);
        let fwd_key = env.forward_key(40000);
        let closed = env.entry(&fwd_key);
        let reply_key = CtKey4::partner_of(&closed);
        let (live, _) = env.dp.fill().expect("fill");
        let opened = env.count(StatReason::NewConnection);

        // The client reuses its port while the ended pair is still tracked (closing, 10 s):
        // a new connection, on the same tuple toward the backend.
        let again = env.client_packet(40000, TCP_SYN).build();
        let out = env.run(&again, true);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        let seg = parse(&out.frame).expect("parses");
        assert_eq!(
            (seg.saddr, seg.sport, seg.daddr, seg.dport),
            (env.net.nat_source, 40000, env.net.backend, BACKEND_PORT)
        );
        assert_eq!(env.count(StatReason::NewConnection), opened + 1);
        let fwd = env.entry(&fwd_key);
        let reply = env.entry(&reply_key);
        assert_eq!(fwd.tcp_flags, CT_SYN, "the old FINs are forgotten");
        assert_eq!(reply.tcp_flags, 0);
        assert!(!reply.is_tombstone());
        assert_eq!(CtKey4::partner_of(&fwd), reply_key);
        assert_eq!(fwd.packets, closed.packets + 1, "the counters carry on");
        assert_eq!(env.dp.fill().expect("fill").0, live, "still one connection");
        // The handshake completes both ways on it, and it is one live connection again.
        let synack = env.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        let out = env.run(&synack, false);
        assert_eq!(out.retval, env.redirected());
        let seg = parse(&out.frame).expect("parses");
        assert_eq!(
            (seg.saddr, seg.sport, seg.daddr, seg.dport),
            (env.net.router, PORT, env.net.client, 40000)
        );
        assert_checksums(&out.frame);
        let ack = env.client_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&ack, true).retval, env.redirected());
        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].state, ConnState::Established, "{conns:?}");

        // Ended again, and the route moved meanwhile: the reused port follows the new route.
        env.close(40000);
        let moved = BTreeMap::from([
            route(PORT, env.net.backend, 9090),
            route(PORT_UNRESOLVED, env.net.backend_unresolved, BACKEND_PORT),
        ]);
        env.dp.apply_routes(&moved).expect("apply");
        let out = env.open(40000);
        assert_checksums(&out);
        assert_eq!(parse(&out).expect("parses").dport, 9090);
        assert_eq!(env.count(StatReason::NewConnection), opened + 2);
        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "the old pair went: {conns:?}");
        assert_eq!(conns[0].backend.port(), 9090, "{conns:?}");
    });
}

/// The MSS option a translated handshake packet carries (first option), if any.
fn mss_of(frame: &[u8]) -> Option<u16> {
    let p = parse(frame)?;
    let doff = (p.l4.get(12)? >> 4) as usize * 4;
    let opts = p.l4.get(20..doff)?;
    (opts.len() >= 4 && opts[0] == 2 && opts[1] == 4)
        .then(|| u16::from_be_bytes([opts[2], opts[3]]))
}

/// With a 1400-byte link toward the backend, a client SYN asking for MSS 1460 leaves asking for
/// 1360, and so does the backend's SYN-ACK toward the client: no end sends a segment the router's
/// links cannot carry (it could not fragment it, and the kernel's "fragmentation needed" would
/// go to the NAT address). Smaller MSS values pass unchanged; checksums stay valid.
fn handshake_mss_is_clamped_to_the_links(program: Program) {
    with_env(program, Opts::default(), |env| {
        let set_mtu = std::process::Command::new("ip")
            .args(["link", "set", "dev", &env.net.backend_dev, "mtu", "1400"])
            .status()
            .expect("run ip");
        assert!(set_mtu.success(), "ip link set mtu 1400");

        let syn = env.client_packet(40000, TCP_SYN).mss(1460).build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.redirected(), "SYN verdict");
        assert_eq!(mss_of(&out.frame), Some(1360), "SYN MSS toward the backend");
        assert_checksums(&out.frame);

        let synack = env
            .backend_packet(40000, TCP_SYN | TCP_ACK)
            .mss(1460)
            .build();
        let out = env.run(&synack, false);
        assert_eq!(out.retval, env.redirected(), "SYN-ACK verdict");
        assert_eq!(
            mss_of(&out.frame),
            Some(1360),
            "SYN-ACK MSS toward the client: the backend link is the smaller"
        );
        assert_checksums(&out.frame);

        // No neighbour entry for the backend yet: TC sends the SYN through the neighbour
        // path, clamped to the device's MTU; XDP hands it to TC untouched.
        let syn = Tcp4::new(
            env.net.client,
            40002,
            env.net.router,
            PORT_UNRESOLVED,
            TCP_SYN,
        )
        .macs(env.net.client_mac, env.net.client_dev_mac)
        .mss(1460)
        .build();
        let out = env.run(&syn, true);
        if env.hook() == Hook::Tc {
            assert_eq!(out.retval, env.redirected(), "SYN verdict (neighbour path)");
            assert_eq!(mss_of(&out.frame), Some(1360), "SYN MSS, neighbour path");
            assert_checksums(&out.frame);
        } else {
            assert_eq!(out.retval, env.passed());
            assert_eq!(out.frame, syn);
        }

        // Already small enough: untouched.
        let syn = env.client_packet(40001, TCP_SYN).mss(1200).build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(mss_of(&out.frame), Some(1200));
        assert_checksums(&out.frame);
        // Data segments are never touched even if their first bytes look like an MSS option.
        let ack = env
            .client_packet(40001, TCP_ACK)
            .payload(&[2, 4, 0x05, 0xb4])
            .build();
        let out = env.run(&ack, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(
            &parse(&out.frame).expect("parses").l4[20..24],
            &[2, 4, 0x05, 0xb4]
        );
        assert_checksums(&out.frame);
    });
}

/// Found by the packet fuzzer (`datapath_fuzz`): segments and ICMP errors whose IPv4 total
/// length does not hold the headers the programs rewrite were translated, with ports and
/// checksums rewritten outside the bytes the receiver checks. They now pass untouched.
fn lengths_that_do_not_hold_the_headers_pass_untouched(program: Program) {
    with_env(program, Opts::default(), |env| {
        let sent = env.open(40000);
        let set_tot_len = |frame: &mut Vec<u8>, tot: u16| {
            frame[16..18].copy_from_slice(&tot.to_be_bytes());
            frame[24..26].copy_from_slice(&[0, 0]);
            let c = packet::checksum(&frame[14..34]);
            frame[24..26].copy_from_slice(&c.to_be_bytes());
        };
        let ack = env.client_packet(40000, TCP_ACK).build();
        let mut short = ack.clone();
        set_tot_len(&mut short, 30);
        let mut long = ack.clone();
        set_tot_len(&mut long, 400);
        let mut options_past_end = ack.clone();
        options_past_end[14 + 20 + 12] = 15 << 4;
        let hop = Ipv4Addr::new(10, 70, 2, 254);
        let icmp = packet::icmp_error(hop, env.net.nat_source, 3, 4, 1400, &sent, 0);
        let mut quote_outside = icmp.clone();
        set_tot_len(&mut quote_outside, 20 + 8 + 20);
        let mut icmp_long = icmp.clone();
        set_tot_len(&mut icmp_long, 200);
        let cases = [
            (
                "TCP header past the total length",
                short,
                true,
                StatReason::PassMalformed,
            ),
            (
                "total length past the frame",
                long,
                true,
                StatReason::PassMalformed,
            ),
            (
                "TCP options past the total length",
                options_past_end,
                true,
                StatReason::PassMalformed,
            ),
            (
                "ICMP quote past the total length",
                quote_outside,
                false,
                StatReason::PassNotForRange,
            ),
            (
                "ICMP total length past the frame",
                icmp_long,
                false,
                StatReason::PassMalformed,
            ),
        ];
        let entries = env.dp.conntrack_table().expect("table");
        for (what, frame, from_client, reason) in cases {
            let before = env.count(reason);
            let out = env.run(&frame, from_client);
            assert_eq!(out.retval, env.passed(), "{what}: verdict");
            assert_eq!(out.frame, frame, "{what}: frame changed");
            assert_eq!(
                env.count(reason),
                before + 1,
                "{what}: {} not counted",
                reason.name()
            );
        }
        assert_eq!(
            env.dp.conntrack_table().expect("table").len(),
            entries.len()
        );
        // Ethernet padding after a well-formed packet is fine: still translated.
        let mut padded = ack;
        padded.extend_from_slice(&[0; 6]);
        let out = env.run(&padded, true);
        assert_eq!(out.retval, env.redirected(), "padded frame");
        assert_checksums(&out.frame[..out.frame.len() - 6]);
    });
}

/// A connection whose egress toward the backend is a veth with its peer in another namespace
/// (a container's link) is marked for the peer hand-off (`NH_PEER`: TC then uses
/// `bpf_redirect_peer`); one whose egress peer is in the router's namespace is not, since the
/// kernel would drop it there. The set is re-read at each sweep, and connections follow at
/// their next packet.
fn the_peer_hand_off_follows_where_the_egress_peer_lives(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        let first = env.forward_key(40000);
        assert_eq!(
            env.entry(&first).flags & NH_PEER,
            0,
            "the backend link's other end is in the router namespace"
        );
        let container = Netns::new("trpo").expect("namespace");
        let far_end = format!("{}p", env.net.backend_dev);
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        ip(&["link", "set", &far_end, "netns", &container.name]);
        container
            .ip(&["link", "set", &far_end, "up"])
            .expect("link up");
        env.dp.sweep().expect("sweep");
        let backend_if = env.backend_if;
        assert!(
            env.dp.peer_devs().contains(&backend_if),
            "{:?}",
            env.dp.peer_devs()
        );
        let seg = env.client_packet(40000, TCP_ACK).build();
        let out = env.run(&seg, true);
        assert_eq!(out.retval, env.redirected());
        assert_ne!(
            env.entry(&first).flags & NH_PEER,
            0,
            "the established connection took the hand-off at its next packet"
        );
        env.open(40002);
        assert_ne!(env.entry(&env.forward_key(40002)).flags & NH_PEER, 0);
        // Replies go to the client's link, whose other end is still here.
        let reply = env.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(env.run(&reply, false).retval, env.redirected());
        let reply_key = CtKey4 {
            saddr: raw(env.net.backend),
            daddr: raw(env.net.nat_source),
            sport: BACKEND_PORT.to_be(),
            dport: 40000u16.to_be(),
        };
        assert_eq!(env.entry(&reply_key).flags & NH_PEER, 0);
    });
}

fn a_syn_opens_a_half_open_pair_that_the_completing_ack_confirms(program: Program) {
    with_env(program, Opts::default(), |env| {
        env.open(40000);
        let fwd_key = env.forward_key(40000);
        let fwd = env.half_open(&fwd_key);
        let reply_key = CtKey4::partner_of(&fwd.ct);
        let reply = env.half_open(&reply_key);
        assert!(!fwd.ct.to_client() && reply.ct.to_client());
        assert_eq!(fwd.ticket, reply.ticket, "one admission");
        assert_ne!(fwd.ticket, 0);
        assert!(env.dp.conntrack_entry(&fwd_key).is_none(), "not confirmed");
        assert!(env.dp.conntrack_entry(&reply_key).is_none());
        assert_eq!(env.dp.fill().expect("fill").0, 0);
        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].state, ConnState::Opening);

        // The backend's SYN-ACK goes back to the client and records what completes the
        // handshake; the connection stays half-open.
        let mut synack = env.backend_packet(40000, TCP_SYN | TCP_ACK);
        synack.seq = 0xffff_fff0;
        let out = env.run(&synack.build(), false);
        assert_eq!(out.retval, env.redirected());
        let p = parse(&out.frame).expect("parses");
        assert_eq!(
            (p.saddr, p.daddr, p.dport),
            (env.net.router, env.net.client, 40000)
        );
        assert_checksums(&out.frame);
        assert_eq!(env.half_open(&reply_key).ack, 0xffff_fff1);
        assert!(env.dp.conntrack_entry(&fwd_key).is_none());

        // An ACK that does not acknowledge the SYN-ACK (what a blind spoofer sends) is
        // forwarded (the backend answers it with a RST) but confirms nothing.
        let mut blind = env.client_packet(40000, TCP_ACK);
        blind.ack = 0xffff_fff0;
        assert_eq!(env.run(&blind.build(), true).retval, env.redirected());
        assert!(env.dp.conntrack_entry(&fwd_key).is_none());
        assert_eq!(env.count(StatReason::HandshakeConfirmed), 0);

        // The client's ACK of the SYN-ACK moves both entries into the connection table.
        let mut ack = env.client_packet(40000, TCP_ACK).payload(b"hello");
        ack.ack = 0xffff_fff1;
        let out = env.run(&ack.build(), true);
        assert_eq!(out.retval, env.redirected());
        let p = parse(&out.frame).expect("parses");
        assert_eq!(
            (p.saddr, p.daddr, p.sport),
            (env.net.nat_source, env.net.backend, 40000)
        );
        assert_checksums(&out.frame);
        assert_eq!(env.count(StatReason::HandshakeConfirmed), 1);
        assert!(env.dp.half_open_entry(&fwd_key).is_none());
        assert!(env.dp.half_open_entry(&reply_key).is_none());
        let confirmed = env.dp.conntrack_entry(&fwd_key).expect("confirmed");
        assert_eq!(confirmed.rewritten(), fwd.ct.rewritten(), "the same tuple");
        assert_eq!(
            confirmed.packets, 3,
            "SYN, blind ACK, ACK: the counters carry on"
        );
        assert_eq!(CtKey4::partner_of(&confirmed), reply_key);
        assert!(
            env.dp
                .conntrack_entry(&reply_key)
                .expect("reply")
                .to_client()
        );
        assert_eq!(env.dp.fill().expect("fill").0, 1);
        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].state, ConnState::Established);
        // From now on the connection's packets hit the connection table.
        let answer = env.backend_packet(40000, TCP_ACK).payload(b"world").build();
        assert_eq!(env.run(&answer, false).retval, env.redirected());
        assert_eq!(env.count(StatReason::Forwarded), 3);
    });
}

/// Pins the calling thread to one CPU: the half-open ring is per CPU, and BPF_PROG_TEST_RUN
/// runs the program on the caller's.
fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = nix::sched::sched_getcpu().unwrap_or(0);
    set.set(cpu).expect("cpu set");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to a CPU");
}

/// Spoofed SYNs from `count` distinct clients in 10.250.0.0/16, client ports from 1024 up;
/// returns the client addresses and ports.
fn spoofed_syns(env: &mut Env, count: u32) -> Vec<(Ipv4Addr, u16)> {
    (0..count)
        .map(|i| {
            let from = Ipv4Addr::new(10, 250, (i >> 8) as u8, i as u8);
            let sport = 1024 + i as u16;
            let syn = env.packet_from(from, sport, TCP_SYN).build();
            assert_eq!(env.run(&syn, true).retval, env.redirected(), "SYN {i}");
            (from, sport)
        })
        .collect()
}

fn a_full_half_open_table_evicts_the_oldest_and_frees_its_tuple(program: Program) {
    with_env(program, Opts::default(), |env| {
        pin_to_one_cpu();
        let (_, capacity) = env.dp.half_open_table().expect("half-open");
        // SYNs until the first eviction: that is this CPU's share of the table.
        let mut admitted = 0u32;
        while env.count(StatReason::NewConnectionEvicting) == 0 {
            assert!(admitted <= capacity, "no eviction after {admitted} SYNs");
            let from = Ipv4Addr::new(10, 250, (admitted >> 8) as u8, admitted as u8);
            let syn = env
                .packet_from(from, 1024 + admitted as u16, TCP_SYN)
                .build();
            assert_eq!(env.run(&syn, true).retval, env.redirected());
            admitted += 1;
        }
        let share = admitted - 1;
        assert!(share >= 1 && share <= capacity, "{share} of {capacity}");
        assert_eq!(env.count(StatReason::NewConnection), share as u64);
        let key = |i: u32| CtKey4 {
            saddr: raw(Ipv4Addr::new(10, 250, (i >> 8) as u8, i as u8)),
            sport: (1024 + i as u16).to_be(),
            ..env.forward_key(0)
        };
        // The oldest went, both entries; the newest are there.
        assert!(env.dp.half_open_entry(&key(0)).is_none(), "oldest evicted");
        let evicted_reply = CtKey4 {
            saddr: raw(env.net.backend),
            daddr: raw(env.net.nat_source),
            sport: BACKEND_PORT.to_be(),
            dport: 1024u16.to_be(),
        };
        assert!(env.dp.half_open_entry(&evicted_reply).is_none());
        assert!(
            env.dp.half_open_entry(&key(1)).is_some(),
            "second oldest kept"
        );
        assert!(env.dp.half_open_entry(&key(share)).is_some(), "newest kept");
        let (entries, _) = env.dp.half_open_table().expect("half-open");
        assert_eq!(entries.len(), 2 * share as usize);
        // Its tuple is free again: another client with that port gets it; a client with the
        // port of a connection still half-open gets another.
        let syn = env
            .packet_from(Ipv4Addr::new(10, 251, 0, 1), 1024, TCP_SYN)
            .build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(
            parse(&out.frame).expect("parses").sport,
            1024,
            "tuple reused"
        );
        let syn = env
            .packet_from(Ipv4Addr::new(10, 251, 0, 2), 1024 + share as u16, TCP_SYN)
            .build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.redirected());
        let sport = parse(&out.frame).expect("parses").sport;
        assert!((61000..=65535).contains(&sport), "probed: {sport}");
        assert_eq!(env.count(StatReason::NewConnectionEvicting), 3);
        // Nothing reached the connection table.
        assert_eq!(env.dp.fill().expect("fill").0, 0);
        assert!(env.dp.conntrack_table().expect("CT4").is_empty());
    });
}

fn established_connections_are_never_evicted_by_syns(program: Program) {
    with_env(program, Opts::default(), |env| {
        pin_to_one_cpu();
        env.establish(40000);
        let fwd_key = env.forward_key(40000);
        let before = env.entry(&fwd_key);
        let (_, capacity) = env.dp.half_open_table().expect("half-open");
        spoofed_syns(env, 2 * capacity + 8);
        assert!(env.count(StatReason::NewConnectionEvicting) > 0);
        let after = env.dp.conntrack_entry(&fwd_key).expect("still tracked");
        assert_eq!(after.rewritten(), before.rewritten());
        assert_eq!(env.dp.fill().expect("fill").0, 1);
        let data = env
            .client_packet(40000, TCP_ACK)
            .payload(b"still here")
            .build();
        let out = env.run(&data, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(parse(&out.frame).expect("parses").sport, 40000);
        let answer = env.backend_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&answer, false).retval, env.redirected());
        let conns = env.dp.connections().expect("connections");
        let established: Vec<_> = conns
            .iter()
            .filter(|c| c.state == ConnState::Established)
            .collect();
        assert_eq!(established.len(), 1, "{established:?}");
        assert!(conns.len() as u32 <= capacity + 1);
    });
}
