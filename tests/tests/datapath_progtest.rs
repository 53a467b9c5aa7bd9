//! Every packet path of the kernel programs, through BPF_PROG_TEST_RUN, for XDP and TC: the
//! verdict, the bytes that leave (addresses, ports, TTL, MACs, checksums verified from scratch
//! by `router_tests::packet`), the counters and the connection table.
//!
//! The packet paths are tables of cases (`router_tests::progtest_cases`: a frame, the verdict,
//! what leaves, what the counters say) run in order by [`Env::run_cases`], which names the
//! failing case. What is about the connection table over time (closing and the sweeper, a full
//! table, TIME_WAIT, a reused port, the peer hand-off, the half-open table under a flood) stays
//! a function.

use router_common::conntrack::{
    CtKey4, CtValue4, HalfOpen4, NH_PEER, TCP_FIN, TCP_SYN as CT_SYN, TCP_TAKEN, TS_TICK_SHIFT,
};
use router_common::stats::{Hook, StatReason};
use router_tests::netns::Netns;
use router_tests::packet::{
    self, TCP_ACK, TCP_FIN as FIN, TCP_RST, TCP_SYN, icmp_checksum_ok, ipv4_checksum_ok, parse,
    tcp_checksum_ok,
};
use router_tests::progtest_cases::net::{
    BACKEND_PORT, MOVED_BACKEND_PORT, PORT, handshake_timestamps, segment_timestamps, timestamps_of,
};
use router_tests::progtest_cases::{
    Case, Checksums, Fields, Hooks, Net, Output, Setup, Side, Table, Verdict, client_allow,
    client_ip, host_ports, limits, passing, split_after, takeover, translation,
};
use router_tests::require_root;
use router_tests::routes::{tcp_routes, tcp_routes_in, tcp_routes_with};
use router_tests::topology::ProgTestNet;
use router_tests::wait;
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::{AttachMode, ConnState, Datapath, Program, RunOutput, Timeouts};
use router_userspace::host_ephemeral::PortRange;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

struct Env {
    dp: Datapath,
    net: Net,
    program: Program,
    client_if: u32,
    backend_if: u32,
    /// What each case run so far put out, by name (for [`Output::SameAs`]).
    outputs: HashMap<String, Vec<u8>>,
}

/// Runs `body` inside a fresh router namespace with a datapath (not attached anywhere) set up
/// as the table `make` builds says, its routes [`Net::routes`].
fn with_env(
    program: Program,
    make: fn(&Net) -> Table,
    body: impl FnOnce(&mut Env, &Table) + Send + 'static,
) {
    require_root();
    let t = ProgTestNet::new().expect("router namespace");
    let client_if = t.ifindex(&t.client_dev).expect("ifindex");
    let backend_if = t.ifindex(&t.backend_dev).expect("ifindex");
    let net = Net::of(&t);
    let table = make(&net);
    set_host_ephemeral(&t.ns, table.setup.host_ephemeral);
    let result = t.ns.enter(move || {
        let setup = &table.setup;
        let cfg = DatapathConfig {
            kind: DatapathKind::Ebpf(AttachMode::Tc),
            interfaces: Vec::new(),
            bpffs: std::env::temp_dir(),
            max_connections: setup.max_connections,
            conntrack_pressure: router_userspace::datapath::Pressure::default(),
            router_addresses: vec![net.router],
            nat_source_ports: setup.nat_source_ports,
        };
        let mut dp = Datapath::open(&cfg).expect("open the datapath");
        if setup.xdp_targets {
            dp.add_xdp_target(&net.client_dev).expect("xdp target");
            dp.add_xdp_target(&net.backend_dev).expect("xdp target");
        }
        let report = dp
            .apply_routes(&tcp_routes_in(&net.routes(), setup.client_ip))
            .expect("program routes");
        assert_eq!(report.added, 2, "{report:?}");
        if let Some(mtu) = setup.backend_mtu {
            let set_mtu = std::process::Command::new("ip")
                .args([
                    "link",
                    "set",
                    "dev",
                    &net.backend_dev,
                    "mtu",
                    &mtu.to_string(),
                ])
                .status()
                .expect("run ip");
            assert!(set_mtu.success(), "ip link set mtu {mtu}");
        }
        let mut env = Env {
            dp,
            net,
            program,
            client_if,
            backend_if,
            outputs: HashMap::new(),
        };
        body(&mut env, &table);
    });
    result.expect("the test body failed (see the panic above)");
}

/// Sets `ns`'s `net.ipv4.ip_local_port_range` (the datapath reads it when it opens and at each
/// sweep).
fn set_host_ephemeral(ns: &Netns, range: PortRange) {
    ns.sysctl(&format!(
        "{}={} {}",
        router_userspace::host_ephemeral::SYSCTL,
        range.first,
        range.last
    ))
    .expect("set the namespace's ephemeral range");
}

/// Runs every case of the table `make` builds.
fn run_table(program: Program, make: fn(&Net) -> Table) {
    with_env(program, make, |env, table| env.run_cases(&table.cases));
}

/// No cases; the datapath set up as `setup` says.
fn no_cases(_: &Net) -> Table {
    Table::new(Vec::new())
}

impl Env {
    /// Whether `port` is one of the NAT source ports the kernel draws from now.
    fn is_nat_source_port(&self, port: u16) -> bool {
        self.dp
            .settings()
            .nat_ports
            .iter()
            .any(|span| !span.is_empty() && (span.first..=span.last).contains(&port))
    }

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

    /// Runs `cases` in order (those for this program), each failure naming its case.
    fn run_cases(&mut self, cases: &[Case]) {
        for case in cases {
            let for_this_program = match case.hooks {
                Hooks::Both => true,
                Hooks::XdpOnly => self.hook() == Hook::Xdp,
                Hooks::TcOnly => self.hook() == Hook::Tc,
            };
            if for_this_program {
                self.run_case(case);
            }
        }
    }

    fn run_case(&mut self, case: &Case) {
        let name = &case.name;
        if let Some(change) = &case.routes_before {
            let report = self
                .dp
                .apply_routes(&tcp_routes_with(
                    &change.routes,
                    change.client_ip,
                    &change.allow,
                ))
                .expect("apply the route change");
            assert_eq!(
                (report.added, report.changed, report.removed),
                change.report,
                "{name}: the route change applied as {report:?}"
            );
        }
        let counted_before = case.counted.map(|reason| self.count(reason));
        let ifindex = match case.from {
            Side::Client => self.client_if,
            Side::Backend => self.backend_if,
        };
        let result = self
            .dp
            .test_run(self.program, &case.input, 1, Some(ifindex));
        let retval = match case.verdict {
            Verdict::Refused => {
                assert!(
                    result.is_err(),
                    "{name}: the kernel now takes it; check the verdict"
                );
                return;
            }
            Verdict::Redirect => self.redirected(),
            Verdict::Pass => self.passed(),
            Verdict::Drop => self.dropped(),
        };
        let out = result.unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN: {e}"));
        assert_eq!(out.retval, retval, "{name}: verdict");
        self.check_output(case, &out.frame);
        self.outputs.insert(name.clone(), out.frame);
        if let (Some(reason), Some(before)) = (case.counted, counted_before) {
            assert_eq!(
                self.count(reason),
                before + 1,
                "{name}: {} not counted",
                reason.name()
            );
        }
        for &(reason, total) in &case.totals {
            assert_eq!(self.count(reason), total, "{name}: {}", reason.name());
        }
        if let Some(n) = case.connections {
            let conns = self.dp.connections().expect("connections");
            assert_eq!(conns.len(), n, "{name}: connections {conns:?}");
        }
        if let Some(n) = case.live {
            assert_eq!(self.dp.fill().expect("fill").0, n, "{name}: live count");
        }
        if let Some(n) = case.half_open_entries {
            let (entries, _) = self.dp.half_open_table().expect("half-open table");
            assert_eq!(entries.len(), n, "{name}: half-open entries");
        }
        if let Some((client_port, router_port, tracked)) = case.tracked {
            let key = CtKey4 {
                dport: router_port.to_be(),
                ..self.forward_key(client_port)
            };
            let entry = self.dp.conntrack_entry(&key);
            assert_eq!(
                entry
                    .or_else(|| self.dp.half_open_entry(&key).map(|h| h.ct))
                    .is_some(),
                tracked,
                "{name}: an entry for {client_port} → {router_port}"
            );
        }
    }

    fn check_output(&self, case: &Case, frame: &[u8]) {
        let name = &case.name;
        match &case.output {
            Output::Unchecked => {}
            Output::Untouched => assert_eq!(frame, &case.input[..], "{name}: frame changed"),
            Output::SameAs(earlier) => {
                let before = self
                    .outputs
                    .get(*earlier)
                    .unwrap_or_else(|| panic!("{name}: no output of {earlier:?} yet"));
                assert_eq!(frame, &before[..], "{name}: differs from {earlier:?}");
            }
            Output::Frame(expected) => assert_eq!(frame, &expected[..], "{name}: frame"),
            Output::Fields(fields) => check_fields(name, frame, fields),
        }
    }

    /// Answers the SYN of client port `sport` and closes the connection (FIN both ways).
    fn handshake_and_close(&mut self, sport: u16) {
        let synack = self.net.backend_packet(sport, TCP_SYN | TCP_ACK).build();
        assert_eq!(self.run(&synack, false).retval, self.redirected());
        self.close(sport);
    }

    /// FIN both ways on the connection of client port `sport`.
    fn close(&mut self, sport: u16) {
        let fin = self.net.client_packet(sport, FIN | TCP_ACK).build();
        assert_eq!(self.run(&fin, true).retval, self.redirected());
        let fin = self.net.backend_packet(sport, FIN | TCP_ACK).build();
        assert_eq!(self.run(&fin, false).retval, self.redirected());
    }

    /// Sends a client SYN and checks it leaves translated toward the backend; returns the
    /// translated frame.
    fn open(&mut self, sport: u16) -> Vec<u8> {
        let syn = self.net.client_packet(sport, TCP_SYN).build();
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
        let synack = self.net.backend_packet(sport, TCP_SYN | TCP_ACK).build();
        assert_eq!(self.run(&synack, false).retval, self.redirected());
        let ack = self.net.client_packet(sport, TCP_ACK).build();
        assert_eq!(self.run(&ack, true).retval, self.redirected());
        assert!(
            self.dp.conntrack_entry(&self.forward_key(sport)).is_some(),
            "confirmed"
        );
    }
}

/// Checks the fields of `frame` (the output of case `name`) that `want` names.
fn check_fields(name: &str, frame: &[u8], want: &Fields) {
    let frame = &frame[..frame.len() - want.padding];
    let p = parse(frame).unwrap_or_else(|| panic!("{name}: what leaves does not parse"));
    if let Some(macs) = want.macs {
        assert_eq!(
            (p.dst_mac, p.src_mac),
            macs,
            "{name}: MACs (next hop, egress)"
        );
    }
    if let Some(addrs) = want.addrs {
        assert_eq!((p.saddr, p.daddr), addrs, "{name}: addresses");
    }
    if let Some(ports) = want.ports {
        assert_eq!((p.sport, p.dport), ports, "{name}: ports");
    }
    if let Some(sport) = want.sport {
        assert_eq!(p.sport, sport, "{name}: source port");
    }
    if let Some(range) = &want.sport_in {
        assert!(range.contains(&p.sport), "{name}: source port {}", p.sport);
    }
    if let Some(dport) = want.dport {
        assert_eq!(p.dport, dport, "{name}: destination port");
    }
    if let Some(ttl) = want.ttl {
        assert_eq!(p.ttl, ttl, "{name}: TTL");
    }
    if let Some(flags) = want.flags {
        assert_eq!(p.flags, flags, "{name}: TCP flags");
    }
    if let Some(payload) = &want.payload {
        let doff = (p.l4[12] >> 4) as usize * 4;
        assert_eq!(&p.l4[doff..], &payload[..], "{name}: payload");
    }
    if let Some(mss) = want.mss {
        assert_eq!(mss_of(frame), mss, "{name}: MSS");
    }
    if let Some(q) = &want.icmp {
        assert_eq!(
            (p.l4[0], p.l4[1]),
            (q.ty, q.code),
            "{name}: ICMP type and code"
        );
        let mtu = u16::from_be_bytes([p.l4[6], p.l4[7]]);
        assert_eq!(mtu, q.mtu, "{name}: MTU kept");
        let inner = &p.l4[8..];
        assert_eq!(
            packet::checksum(&inner[..20]),
            0,
            "{name}: quoted IPv4 checksum"
        );
        assert_eq!(&inner[12..16], &q.saddr.octets(), "{name}: quoted source");
        assert_eq!(
            &inner[16..20],
            &q.daddr.octets(),
            "{name}: quoted destination"
        );
        let port = |at: usize| u16::from_be_bytes([inner[at], inner[at + 1]]);
        assert_eq!(
            (port(20), port(22)),
            (q.sport, q.dport),
            "{name}: quoted ports"
        );
    }
    match want.checksums {
        Checksums::Unchecked => {}
        Checksums::Tcp => {
            assert!(ipv4_checksum_ok(frame), "{name}: IPv4 header checksum");
            assert!(tcp_checksum_ok(frame), "{name}: TCP checksum");
        }
        Checksums::Icmp => {
            assert!(ipv4_checksum_ok(frame), "{name}: outer IPv4 checksum");
            assert!(icmp_checksum_ok(frame), "{name}: ICMP checksum");
        }
    }
}

fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn assert_checksums(frame: &[u8]) {
    assert!(ipv4_checksum_ok(frame), "IPv4 header checksum is wrong");
    assert!(tcp_checksum_ok(frame), "TCP checksum is wrong");
}

/// The MSS option a translated handshake packet carries (first option), if any.
fn mss_of(frame: &[u8]) -> Option<u16> {
    let p = parse(frame)?;
    let doff = (p.l4.get(12)? >> 4) as usize * 4;
    let opts = p.l4.get(20..doff)?;
    (opts.len() >= 4 && opts[0] == 2 && opts[1] == 4)
        .then(|| u16::from_be_bytes([opts[2], opts[3]]))
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
    a_pair_being_taken_over_is_not_restarted_by_its_client,
    handshake_mss_is_clamped_to_the_links,
    lengths_that_do_not_hold_the_headers_pass_untouched,
    the_peer_hand_off_follows_where_the_egress_peer_lives,
    a_syn_opens_a_half_open_pair_that_the_completing_ack_confirms,
    a_full_half_open_table_evicts_the_oldest_and_frees_its_tuple,
    established_connections_are_never_evicted_by_syns,
    destination_only_nat_keeps_the_client_address_both_ways,
    a_route_switched_between_modes_keeps_its_connections,
    a_reused_tuple_after_a_switch_to_destination_only_keeps_the_client_address,
    a_reused_tuple_after_a_switch_to_full_nat_takes_the_nat_source,
    client_allow_is_asked_only_when_a_connection_opens,
    timestamps_are_translated_and_a_closed_tuple_is_taken_over,
    a_restarted_pair_sends_the_backend_newer_timestamps,
    the_task_closing_first_keeps_its_tuple_until_its_last_ack,
    the_client_closing_first_keeps_its_tuple_until_its_last_ack,
    a_client_port_the_host_may_pick_is_never_used_toward_the_task,
    destination_only_nat_keeps_a_client_port_inside_the_host_range,
);

/// The host's range is followed: the cases after [`host_ports::BEFORE_THE_CHANGE`] run with
/// the range changed, and a client port is judged by the new one at once.
fn a_client_port_the_host_may_pick_is_never_used_toward_the_task(program: Program) {
    with_env(
        program,
        host_ports::a_client_port_the_host_may_pick_is_never_used_toward_the_task,
        |env, table| {
            let (before, after) = table.split_after(host_ports::BEFORE_THE_CHANGE);
            env.run_cases(before);
            let changes = env.dp.host_ephemeral_changes();
            // This thread is in the router's namespace: the sysctl written is that one's.
            let changed = host_ports::CHANGED_EPHEMERAL;
            std::fs::write(
                router_userspace::host_ephemeral::PROC_PATH,
                format!("{} {}", changed.first, changed.last),
            )
            .expect("change the host's range");
            env.dp.sweep().expect("sweep");
            assert_eq!(env.dp.host_ephemeral_changes(), changes + 1);
            assert_eq!(env.dp.host_ephemeral(), changed);
            env.run_cases(after);
        },
    );
}

// ------------------------------------------------------------------------------------------
// Tables of cases, with what the connection table says in between.

fn new_connection_is_translated_and_tracked(program: Program) {
    with_env(
        program,
        translation::new_connection_is_translated_and_tracked,
        |env, table| {
            let (syn, retransmitted) = table.split_after("client SYN");
            env.run_cases(syn);
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
            // Half-open: both entries and the tuple are in the half-open table.
            assert!(env.dp.conntrack_entry(&env.forward_key(40000)).is_none());
            env.run_cases(retransmitted);
        },
    );
}

fn established_connection_is_translated_both_ways(program: Program) {
    with_env(
        program,
        translation::established_connection_is_translated_both_ways,
        |env, table| {
            env.run_cases(&table.cases);
            let conns = env.dp.connections().expect("connections");
            assert_eq!(conns.len(), 1);
            let c = &conns[0];
            assert_eq!(c.state, ConnState::Established);
            assert_eq!(c.client, SocketAddrV4::new(env.net.client, 40000));
            assert_eq!(c.router, SocketAddrV4::new(env.net.router, PORT));
            assert_eq!(c.backend, SocketAddrV4::new(env.net.backend, BACKEND_PORT));
            assert_eq!(c.nat_source, SocketAddrV4::new(env.net.nat_source, 40000));
            assert_eq!((c.to_backend.packets, c.to_client.packets), (2, 2));
            let sweep = env.dp.sweep().expect("sweep");
            assert_eq!((sweep.live, sweep.expired), (1, 0));
            let (_, counters) = env.dp.route_counters()[&PORT];
            assert_eq!((counters.active, counters.connections), (1, 1));
            assert_eq!(counters.to_backend.packets, 2);
            assert!(counters.to_client.bytes > 777);
        },
    );
}

/// Scenarios that are one table and nothing else.
macro_rules! tables {
    ($($name:ident in $cases:ident),+ $(,)?) => {$(
        fn $name(program: Program) {
            run_table(program, $cases::$name);
        }
    )+};
}

tables!(
    rst_and_stray_segments_never_create_connections in passing,
    syn_without_route_passes_to_the_stack in passing,
    route_change_affects_new_connections_only in translation,
    taken_source_port_is_probed_and_exhaustion_counted in translation,
    truncated_and_malformed_headers_pass_untouched in passing,
    icmp_errors_are_translated_back in translation,
    traffic_not_for_the_range_passes_untouched in passing,
    ttl_that_would_expire_is_dropped in limits,
    oversized_frames_are_not_forwarded_blindly in limits,
    handshake_mss_is_clamped_to_the_links in translation,
    destination_only_nat_keeps_the_client_address_both_ways in client_ip,
    client_allow_is_asked_only_when_a_connection_opens in client_allow,
    the_task_closing_first_keeps_its_tuple_until_its_last_ack in takeover,
    the_client_closing_first_keeps_its_tuple_until_its_last_ack in takeover,
    destination_only_nat_keeps_a_client_port_inside_the_host_range in host_ports,
);

/// The connections list the mode each was opened in, whatever the route's is now.
fn a_route_switched_between_modes_keeps_its_connections(program: Program) {
    with_env(
        program,
        client_ip::a_route_switched_between_modes_keeps_its_connections,
        |env, table| {
            env.run_cases(&table.cases);
            let conns = env.dp.connections().expect("connections");
            let preserved: Vec<(u16, bool, Ipv4Addr)> = conns
                .iter()
                .map(|c| (c.client.port(), c.client_ip_preserved, *c.nat_source.ip()))
                .collect();
            let (client, nat) = (env.net.client, env.net.nat_source);
            assert_eq!(
                preserved,
                [
                    (40000, false, nat),
                    (40001, true, client),
                    (40002, false, nat)
                ],
                "{conns:?}"
            );
        },
    );
}

fn a_reused_tuple_after_a_switch_to_destination_only_keeps_the_client_address(program: Program) {
    with_env(
        program,
        client_ip::a_reused_tuple_after_a_switch_to_destination_only_keeps_the_client_address,
        |env, table| {
            env.run_cases(&table.cases);
            let client = env.net.client;
            assert_reused_tuple_in_mode(env, true, client);
        },
    );
}

fn a_reused_tuple_after_a_switch_to_full_nat_takes_the_nat_source(program: Program) {
    with_env(
        program,
        client_ip::a_reused_tuple_after_a_switch_to_full_nat_takes_the_nat_source,
        |env, table| {
            env.run_cases(&table.cases);
            let nat = env.net.nat_source;
            assert_reused_tuple_in_mode(env, false, nat);
        },
    );
}

/// After a reused client port opened a connection across a mode switch: one connection, listed
/// in the route's current mode with that source toward the backend, and the client's tuple's
/// entries are its (the ended pair's are gone).
fn assert_reused_tuple_in_mode(env: &mut Env, preserved: bool, source: Ipv4Addr) {
    let conns = env.dp.connections().expect("connections");
    let listed: Vec<(u16, bool, Ipv4Addr)> = conns
        .iter()
        .map(|c| (c.client.port(), c.client_ip_preserved, *c.nat_source.ip()))
        .collect();
    assert_eq!(listed, [(40000, preserved, source)], "{conns:?}");
    let fwd = env.entry(&env.forward_key(40000));
    assert_eq!(fwd.preserves_client(), preserved);
    assert_eq!(fwd.saddr, raw(source));
    let reply = env.entry(&CtKey4::partner_of(&fwd));
    assert_eq!(reply.preserves_client(), preserved);
    let entries = env.dp.conntrack_table().expect("table");
    assert_eq!(
        entries.len(),
        2,
        "no entry of the ended pair left: {entries:?}"
    );
}

fn unresolved_neighbour_goes_through_the_neighbour_path(program: Program) {
    run_table(
        program,
        limits::unresolved_neighbour_goes_through_the_neighbour_path,
    );
    if program == Program::Xdp {
        run_table(program, limits::xdp_hands_over_what_it_cannot_redirect_to);
    }
}

fn lengths_that_do_not_hold_the_headers_pass_untouched(program: Program) {
    with_env(
        program,
        passing::lengths_that_do_not_hold_the_headers_pass_untouched,
        |env, table| {
            let (open, rest) = table.split_after("client SYN from 40000");
            let (not_held, padded) = split_after(rest, "ICMP total length past the frame");
            env.run_cases(open);
            let entries = env.dp.conntrack_table().expect("table").len();
            env.run_cases(not_held);
            assert_eq!(
                env.dp.conntrack_table().expect("table").len(),
                entries,
                "no entry made or lost"
            );
            env.run_cases(padded);
        },
    );
}

// ------------------------------------------------------------------------------------------
// The connection table over time.

fn fin_and_rst_close_and_the_sweeper_expires_them(program: Program) {
    with_env(program, no_cases, |env, _| {
        // Connection 1 ends with FINs both ways.
        env.open(40000);
        let synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(env.run(&synack, false).retval, env.redirected());
        let ack = env.net.client_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&ack, true).retval, env.redirected());
        let fin = env.net.client_packet(40000, FIN | TCP_ACK).build();
        assert_eq!(env.run(&fin, true).retval, env.redirected());
        let state = |env: &mut Env| env.dp.connections().expect("connections")[0].state;
        assert_eq!(state(env), ConnState::Established, "half-closed stays open");
        let fin = env.net.backend_packet(40000, FIN | TCP_ACK).build();
        assert_eq!(env.run(&fin, false).retval, env.redirected());
        assert_eq!(state(env), ConnState::Closing);
        assert_ne!(env.entry(&env.forward_key(40000)).tcp_flags & TCP_FIN, 0);

        // Connection 2 is reset by the backend; the RST is forwarded.
        env.open(40001);
        let rst = env.net.backend_packet(40001, TCP_RST | TCP_ACK).build();
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

fn full_table_is_a_counted_drop(program: Program) {
    let two = |_: &Net| {
        Table::with_setup(
            Setup {
                max_connections: 2,
                ..Setup::default()
            },
            Vec::new(),
        )
    };
    with_env(program, two, |env, _| {
        env.establish(40000);
        // Two handshakes under way: half-open connections do not count against the table.
        env.open(40001);
        env.open(40002);
        assert_eq!(env.dp.fill().expect("fill"), (1, 2));
        for sport in [40001, 40002] {
            let synack = env.net.backend_packet(sport, TCP_SYN | TCP_ACK).build();
            assert_eq!(env.run(&synack, false).retval, env.redirected());
        }
        let ack_1 = env.net.client_packet(40001, TCP_ACK).build();
        assert_eq!(env.run(&ack_1, true).retval, env.redirected());
        assert_eq!(env.dp.fill().expect("fill"), (2, 2));
        // Full: a new SYN is dropped, and so is a handshake's completing ACK, whose pair stays
        // half-open for the client's next segment.
        let syn = env.net.client_packet(40003, TCP_SYN).build();
        assert_eq!(env.run(&syn, true).retval, env.dropped());
        let ack_2 = env.net.client_packet(40002, TCP_ACK).build();
        assert_eq!(env.run(&ack_2, true).retval, env.dropped());
        assert_eq!(env.count(StatReason::DropTableFull), 2);
        assert!(env.dp.conntrack_entry(&env.forward_key(40003)).is_none());
        assert!(env.dp.half_open_entry(&env.forward_key(40003)).is_none());
        assert!(env.dp.half_open_entry(&env.forward_key(40002)).is_some());
        assert_eq!(env.dp.fill().expect("fill"), (2, 2));
        // Room again once the sweeper expired a connection.
        let rst = env.net.client_packet(40000, TCP_RST).build();
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

fn closed_connections_keep_their_tuple_through_time_wait(program: Program) {
    with_env(program, no_cases, |env, _| {
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
        let late = env.net.backend_packet(40000, FIN | TCP_ACK).build();
        let out = env.run(&late, false);
        assert_eq!(out.retval, env.passed());
        assert_eq!(out.frame, late);

        // Another client on the same port gets another NAT source port meanwhile (the
        // backend's TIME_WAIT would refuse its timestamps) ...
        let other = env
            .net
            .packet_from(Ipv4Addr::new(10, 70, 1, 3), 40000, TCP_SYN)
            .build();
        let out = env.run(&other, true);
        assert_eq!(out.retval, env.redirected());
        let sport = parse(&out.frame).expect("parses").sport;
        assert!(
            sport != 40000 && env.is_nat_source_port(sport),
            "another client: port {sport}"
        );
        // ... while the same client reusing its port for the same router port takes its tuple
        // back, as it would without NAT (its timestamps are newer than the backend's record).
        let again = env.net.client_packet(40000, TCP_SYN).build();
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
        let synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(env.run(&synack, false).retval, env.redirected());
        let ack = env.net.client_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&ack, true).retval, env.redirected());
        let reply = env.entry(&reply_key);
        assert!(!reply.is_tombstone(), "the tuple is live again");
        assert_eq!(
            env.entry(&CtKey4::partner_of(&env.entry(&env.forward_key(40000)))),
            reply
        );
        // Close it again so the rest of the test sees a tombstone on the tuple.
        let rst = env.net.client_packet(40000, TCP_RST | TCP_ACK).build();
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
            .net
            .packet_from(Ipv4Addr::new(10, 70, 1, 4), 40000, TCP_SYN)
            .build();
        let out = env.run(&syn, true);
        assert_eq!(parse(&out.frame).expect("parses").sport, 40000);
    });
}

fn a_port_reused_on_an_ended_connection_restarts_the_pair_or_follows_a_moved_route(
    program: Program,
) {
    with_env(program, no_cases, |env, _| {
        env.open(40000);
        env.handshake_and_close(40000);
        let fwd_key = env.forward_key(40000);
        let closed = env.entry(&fwd_key);
        let reply_key = CtKey4::partner_of(&closed);
        let (live, _) = env.dp.fill().expect("fill");
        let opened = env.count(StatReason::NewConnection);

        // The client reuses its port while the ended pair is still tracked (closing, 10 s):
        // a new connection, on the same tuple toward the backend.
        let again = env.net.client_packet(40000, TCP_SYN).build();
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
        let synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK).build();
        let out = env.run(&synack, false);
        assert_eq!(out.retval, env.redirected());
        let seg = parse(&out.frame).expect("parses");
        assert_eq!(
            (seg.saddr, seg.sport, seg.daddr, seg.dport),
            (env.net.router, PORT, env.net.client, 40000)
        );
        assert_checksums(&out.frame);
        let ack = env.net.client_packet(40000, TCP_ACK).build();
        assert_eq!(env.run(&ack, true).retval, env.redirected());
        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].state, ConnState::Established, "{conns:?}");

        // Ended again, and the route moved meanwhile: the reused port follows the new route.
        env.close(40000);
        env.dp
            .apply_routes(&tcp_routes(&env.net.moved_routes()))
            .expect("apply");
        let out = env.open(40000);
        assert_checksums(&out);
        assert_eq!(parse(&out).expect("parses").dport, MOVED_BACKEND_PORT);
        assert_eq!(env.count(StatReason::NewConnection), opened + 2);
        let conns = env.dp.connections().expect("connections");
        assert_eq!(conns.len(), 1, "the old pair went: {conns:?}");
        assert_eq!(conns[0].backend.port(), MOVED_BACKEND_PORT, "{conns:?}");
    });
}

/// A closed pair whose tuple a SYN of another client is taking over on another CPU (the reply
/// entry marked `TCP_TAKEN` by `closing::take_closed`, written here as that CPU would have)
/// is not restarted by its own client's SYN: the client opens a new pair instead, so the tuple
/// never carries two connections' SYNs at once.
fn a_pair_being_taken_over_is_not_restarted_by_its_client(program: Program) {
    with_env(program, no_cases, |env, _| {
        env.open(40000);
        env.handshake_and_close(40000);
        let fwd_key = env.forward_key(40000);
        let reply_key = CtKey4::partner_of(&env.entry(&fwd_key));
        let mut reply = env.entry(&reply_key);
        reply.tcp_flags |= TCP_TAKEN;
        env.dp
            .insert_conntrack_entry(reply_key, reply)
            .expect("mark the reply entry");

        let again = env.net.client_packet(40000, TCP_SYN).build();
        let out = env.run(&again, true);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        assert!(
            env.dp.conntrack_entry(&fwd_key).is_none(),
            "not restarted in place: the pair went"
        );
        assert!(
            env.dp.half_open_entry(&fwd_key).is_some(),
            "a new pair, half-open"
        );
    });
}

/// A connection whose egress toward the backend is a veth with its peer in another namespace
/// (a container's link) is marked for the peer hand-off (`NH_PEER`: TC then uses
/// `bpf_redirect_peer`); one whose egress peer is in the router's namespace is not, since the
/// kernel would drop it there. The set is re-read at each sweep, and connections follow at
/// their next packet.
fn the_peer_hand_off_follows_where_the_egress_peer_lives(program: Program) {
    with_env(program, no_cases, |env, _| {
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
        let seg = env.net.client_packet(40000, TCP_ACK).build();
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
        let reply = env.net.backend_packet(40000, TCP_SYN | TCP_ACK).build();
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
    with_env(program, no_cases, |env, _| {
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
        let mut synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK);
        synack.seq = 0xffff_fff0;
        let out = env.run(&synack.build(), false);
        assert_eq!(out.retval, env.redirected());
        let p = parse(&out.frame).expect("parses");
        assert_eq!(
            (p.saddr, p.daddr, p.dport),
            (env.net.router, env.net.client, 40000)
        );
        assert_checksums(&out.frame);
        assert_eq!(env.half_open(&reply_key).ct.awaited_ack, 0xffff_fff1);
        assert!(env.dp.conntrack_entry(&fwd_key).is_none());

        // An ACK that does not acknowledge the SYN-ACK (what a blind spoofer sends) is
        // forwarded (the backend answers it with a RST) but confirms nothing.
        let mut blind = env.net.client_packet(40000, TCP_ACK);
        blind.ack = 0xffff_fff0;
        assert_eq!(env.run(&blind.build(), true).retval, env.redirected());
        assert!(env.dp.conntrack_entry(&fwd_key).is_none());
        assert_eq!(env.count(StatReason::HandshakeConfirmed), 0);

        // The client's ACK of the SYN-ACK moves both entries into the connection table.
        let mut ack = env.net.client_packet(40000, TCP_ACK).payload(b"hello");
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
        let answer = env
            .net
            .backend_packet(40000, TCP_ACK)
            .payload(b"world")
            .build();
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
            let syn = env.net.packet_from(from, sport, TCP_SYN).build();
            assert_eq!(env.run(&syn, true).retval, env.redirected(), "SYN {i}");
            (from, sport)
        })
        .collect()
}

fn a_full_half_open_table_evicts_the_oldest_and_frees_its_tuple(program: Program) {
    with_env(program, no_cases, |env, _| {
        pin_to_one_cpu();
        let (_, capacity) = env.dp.half_open_table().expect("half-open");
        // SYNs until the first eviction: that is this CPU's share of the table.
        let mut admitted = 0u32;
        while env.count(StatReason::NewConnectionEvicting) == 0 {
            assert!(admitted <= capacity, "no eviction after {admitted} SYNs");
            let from = Ipv4Addr::new(10, 250, (admitted >> 8) as u8, admitted as u8);
            let syn = env
                .net
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
            .net
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
            .net
            .packet_from(Ipv4Addr::new(10, 251, 0, 2), 1024 + share as u16, TCP_SYN)
            .build();
        let out = env.run(&syn, true);
        assert_eq!(out.retval, env.redirected());
        let sport = parse(&out.frame).expect("parses").sport;
        assert!(
            sport != 1024 + share as u16 && env.is_nat_source_port(sport),
            "probed: {sport}"
        );
        assert_eq!(env.count(StatReason::NewConnectionEvicting), 3);
        // Nothing reached the connection table.
        assert_eq!(env.dp.fill().expect("fill").0, 0);
        assert!(env.dp.conntrack_table().expect("CT4").is_empty());
    });
}

fn established_connections_are_never_evicted_by_syns(program: Program) {
    with_env(program, no_cases, |env, _| {
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
            .net
            .client_packet(40000, TCP_ACK)
            .payload(b"still here")
            .build();
        let out = env.run(&data, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(parse(&out.frame).expect("parses").sport, 40000);
        let answer = env.net.backend_packet(40000, TCP_ACK).build();
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

/// A client SYN with timestamps from `from:sport`, TSval `tsval`.
fn syn_with_timestamps(env: &Env, from: Ipv4Addr, sport: u16, tsval: u32) -> Vec<u8> {
    let mut syn = env.net.packet_from(from, sport, TCP_SYN);
    syn.tcp_options = handshake_timestamps(tsval, 0);
    syn.build()
}

/// The router's TCP timestamp clock now, as the programs read it (`bpf_ktime_get_ns` is the
/// kernel's monotonic clock).
fn router_ts_clock() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed to it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (ns >> TS_TICK_SHIFT) as u32
}

/// A client reusing its port on an ended pair within one tick of its own timestamp clock: its
/// SYN carries the TSval of its last segment, which the backend still holds for the tuple in
/// TIME_WAIT (equal: not newer, so unless its initial sequence number lies above the last
/// connection's, the backend answers with an ACK and the client resets and retransmits). The
/// restarted pair takes its timestamp offset afresh, so the backend sees the router's clock,
/// newer than anything the last connection sent.
fn a_restarted_pair_sends_the_backend_newer_timestamps(program: Program) {
    with_env(program, no_cases, |env, _| {
        const CLIENT_TS: u32 = 5000;
        let out = env.run(
            &syn_with_timestamps(env, env.net.client, 40000, CLIENT_TS),
            true,
        );
        let (first, _) = timestamps_of(&out.frame).expect("timestamps");
        let mut synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK);
        synack.tcp_options = handshake_timestamps(777, first);
        assert_eq!(env.run(&synack.build(), false).retval, env.redirected());
        // The whole connection within one tick of the client's clock: every TSval the same.
        let mut ack = env.net.client_packet(40000, TCP_ACK);
        ack.tcp_options = segment_timestamps(CLIENT_TS, 777);
        assert_eq!(env.run(&ack.build(), true).retval, env.redirected());
        let mut fin = env.net.backend_packet(40000, FIN | TCP_ACK);
        fin.tcp_options = segment_timestamps(778, first);
        assert_eq!(env.run(&fin.build(), false).retval, env.redirected());
        let mut fin = env.net.client_packet(40000, FIN | TCP_ACK);
        fin.tcp_options = segment_timestamps(CLIENT_TS, 778);
        let out = env.run(&fin.build(), true);
        let (last, _) = timestamps_of(&out.frame).expect("timestamps");
        let mut last_ack = env.net.backend_packet(40000, TCP_ACK);
        last_ack.tcp_options = segment_timestamps(779, last);
        assert_eq!(env.run(&last_ack.build(), false).retval, env.redirected());
        // The reuse comes later in real time than the last segment: the router's timestamp
        // clock has moved past the TSval the backend holds.
        wait::until(
            "the router's timestamp clock to pass the last TSval",
            Duration::from_secs(1),
            || (router_ts_clock().wrapping_sub(last) as i32 > 0).then_some(()),
        );
        let out = env.run(
            &syn_with_timestamps(env, env.net.client, 40000, CLIENT_TS),
            true,
        );
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        let seg = parse(&out.frame).expect("parses");
        assert_eq!(
            (seg.saddr, seg.sport),
            (env.net.nat_source, 40000),
            "restarted in place"
        );
        let (again, _) = timestamps_of(&out.frame).expect("timestamps");
        assert!(
            again.wrapping_sub(last) as i32 > 0,
            "the backend's TIME_WAIT needs a newer TSval: {again} after {last}"
        );
        // The replies are translated back by the new offset.
        let mut synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK);
        synack.tcp_options = handshake_timestamps(780, again);
        let out = env.run(&synack.build(), false);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        assert_eq!(
            timestamps_of(&out.frame),
            Some((780, CLIENT_TS)),
            "echo as sent"
        );
    });
}

/// Timestamps toward the backend start at the router's clock and come back as the client sent
/// them; once the connection closed both ways (both FINs acknowledged), another client's SYN with timestamps takes its
/// tuple at once (the backend accepts it in TIME_WAIT: newer timestamps), one without
/// timestamps does not.
fn timestamps_are_translated_and_a_closed_tuple_is_taken_over(program: Program) {
    with_env(program, no_cases, |env, _| {
        let out = env.run(&syn_with_timestamps(env, env.net.client, 40000, 5000), true);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        let (tsval, tsecr) = timestamps_of(&out.frame).expect("timestamps");
        assert_eq!(tsecr, 0);
        assert_ne!(tsval, 5000, "translated");
        let mut synack = env.net.backend_packet(40000, TCP_SYN | TCP_ACK);
        synack.tcp_options = handshake_timestamps(777, tsval);
        let out = env.run(&synack.build(), false);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        assert_eq!(timestamps_of(&out.frame), Some((777, 5000)), "echo as sent");
        let mut ack = env.net.client_packet(40000, TCP_ACK);
        ack.tcp_options = segment_timestamps(5001, 777);
        let out = env.run(&ack.build(), true);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        assert_eq!(
            timestamps_of(&out.frame),
            Some((tsval.wrapping_add(1), 777))
        );
        assert!(env.dp.conntrack_entry(&env.forward_key(40000)).is_some());

        // Half-closed: the tuple stays the connection's.
        let other = Ipv4Addr::new(10, 70, 1, 3);
        let mut fin = env.net.backend_packet(40000, FIN | TCP_ACK);
        fin.tcp_options = segment_timestamps(778, tsval.wrapping_add(1));
        assert_eq!(env.run(&fin.build(), false).retval, env.redirected());
        let out = env.run(&syn_with_timestamps(env, other, 40000, 1), true);
        assert_ne!(
            parse(&out.frame).expect("parses").sport,
            40000,
            "still open"
        );
        // Closed both ways, and the backend's last ACK passed: another client with timestamps
        // takes the tuple over.
        let mut fin = env.net.client_packet(40000, FIN | TCP_ACK);
        fin.tcp_options = segment_timestamps(5002, 778);
        assert_eq!(env.run(&fin.build(), true).retval, env.redirected());
        let mut last_ack = env.net.backend_packet(40000, TCP_ACK);
        last_ack.tcp_options = segment_timestamps(779, tsval.wrapping_add(2));
        assert_eq!(env.run(&last_ack.build(), false).retval, env.redirected());
        // A client without timestamps would meet the backend's TIME_WAIT with its own clock:
        // it probes for another port.
        let plain = env
            .net
            .packet_from(Ipv4Addr::new(10, 70, 1, 5), 40000, TCP_SYN)
            .build();
        let out = env.run(&plain, true);
        assert_eq!(out.retval, env.redirected());
        assert_eq!(timestamps_of(&out.frame), None);
        assert_ne!(
            parse(&out.frame).expect("parses").sport,
            40000,
            "no timestamps"
        );
        // Another client with timestamps takes the tuple over, with newer timestamps.
        let third = Ipv4Addr::new(10, 70, 1, 4);
        let out = env.run(&syn_with_timestamps(env, third, 40000, 1), true);
        assert_eq!(out.retval, env.redirected());
        assert_checksums(&out.frame);
        assert_eq!(
            parse(&out.frame).expect("parses").sport,
            40000,
            "taken over"
        );
        let (taken, _) = timestamps_of(&out.frame).expect("timestamps");
        assert!(
            taken.wrapping_sub(tsval) as i32 >= 0,
            "not older: {taken} vs {tsval}"
        );
        assert!(
            env.dp.conntrack_entry(&env.forward_key(40000)).is_none(),
            "the closed pair went"
        );
        let key = CtKey4 {
            saddr: raw(third),
            ..env.forward_key(40000)
        };
        assert!(env.dp.half_open_entry(&key).is_some());
    });
}
