//! Frames the programs hand to the stack untouched: segments of no connection, SYNs without a
//! route, truncated and malformed headers, traffic not for the router's ports, lengths that do
//! not hold the headers the programs would rewrite.

use super::net::{BACKEND_PORT, HOP, PORT_NEVER_ROUTED, PORT_UNRESOLVED};
use super::{Case, Checksums, Fields, Hooks, Net, RouteChange, Side, Table, Verdict, client_opens};
use crate::packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp4};
use router_common::stats::StatReason;
use router_userspace::routes::PreserveClientIp;
use std::net::Ipv4Addr;

/// A frame from the client handed to the stack as it came, counted as `reason`.
fn passed(name: &str, input: Vec<u8>, reason: StatReason) -> Case {
    Case::new(name, Side::Client, input, Verdict::Pass)
        .untouched()
        .counted(reason)
}

/// RSTs and segments other than a SYN open nothing: the stack gets them.
pub fn rst_and_stray_segments_never_create_connections(net: &Net) -> Table {
    let strays = [
        TCP_RST,
        TCP_RST | TCP_ACK,
        TCP_ACK,
        TCP_SYN | TCP_ACK,
        TCP_FIN | TCP_ACK,
    ];
    let mut cases: Vec<Case> = strays
        .iter()
        .map(|&flags| {
            passed(
                &format!("flags {flags:#x}"),
                net.client_packet(41000, flags).build(),
                StatReason::PassNoConnection,
            )
        })
        .collect();
    if let Some(last) = cases.pop() {
        cases.push(
            last.totals(&[
                (StatReason::PassNoConnection, 5),
                (StatReason::NewConnection, 0),
            ])
            .connections(0)
            .live(0),
        );
    }
    Table::new(cases)
}

/// A SYN to a port never routed goes to the stack; after a route is removed its open
/// connection carries on while new SYNs go to the stack.
pub fn syn_without_route_passes_to_the_stack(net: &Net) -> Table {
    Table::new(vec![
        Case::new(
            "SYN to a port never routed",
            Side::Client,
            Tcp4::new(net.client, 40000, net.router, PORT_NEVER_ROUTED, TCP_SYN).build(),
            Verdict::Pass,
        )
        .untouched()
        .totals(&[(StatReason::PassNotForRange, 1)]),
        client_opens(net, 40000),
        Case::new(
            "SYN to a removed route",
            Side::Client,
            net.client_packet(40001, TCP_SYN).build(),
            Verdict::Pass,
        )
        .after_routes(RouteChange {
            routes: vec![(PORT_UNRESOLVED, net.backend_unresolved, BACKEND_PORT)],
            allow: Vec::new(),
            report: (0, 0, 1),
            client_ip: PreserveClientIp::Off,
        })
        .untouched()
        .totals(&[(StatReason::PassNoRoute, 1)]),
        Case::new(
            "data on the connection opened before the removal",
            Side::Client,
            net.client_packet(40000, TCP_ACK)
                .payload(b"still here")
                .build(),
            Verdict::Redirect,
        ),
        Case::new(
            "the backend's SYN-ACK on it",
            Side::Backend,
            net.backend_packet(40000, TCP_SYN | TCP_ACK).build(),
            Verdict::Redirect,
        ),
    ])
}

/// Truncated and malformed headers, IP options, fragments and cut ICMP errors, each counted
/// by its reason. For TC, BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an IPv4 header.
pub fn truncated_and_malformed_headers_pass_untouched(net: &Net) -> Table {
    let good = net.client_packet(40000, TCP_SYN).build();
    let edited = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = good.clone();
        edit(&mut frame);
        frame
    };
    let with_ip_options = |mut p: Tcp4| {
        p.ip_options = vec![1, 1, 1, 0];
        p
    };
    let fragment = |frag: u16| {
        let mut p = net.client_packet(40000, TCP_SYN);
        p.frag = frag;
        p.build()
    };
    let ip_options = with_ip_options(net.client_packet(40000, TCP_SYN)).build();
    let mut icmp_short_quote =
        packet::icmp_error(net.backend, net.nat_source, 3, 4, 1400, &good, 0);
    icmp_short_quote.truncate(icmp_short_quote.len() - 6);
    let too_short_for_an_skb = |name: &str, frame: Vec<u8>| {
        [
            passed(name, frame.clone(), StatReason::PassMalformed).only(Hooks::XdpOnly),
            Case::new(name, Side::Client, frame, Verdict::Refused).only(Hooks::TcOnly),
        ]
    };
    let mut cases = vec![passed(
        "ethernet only",
        edited(&|f| {
            f.truncate(14);
            f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        }),
        StatReason::PassNotForRange,
    )];
    cases.extend(too_short_for_an_skb("no IPv4 header", good[..14].to_vec()));
    cases.extend(too_short_for_an_skb(
        "IPv4 header cut",
        good[..14 + 12].to_vec(),
    ));
    cases.extend([
        passed(
            "TCP header cut",
            good[..14 + 20 + 10].to_vec(),
            StatReason::PassMalformed,
        ),
        passed(
            "version 6",
            edited(&|f| f[14] = 0x65),
            StatReason::PassMalformed,
        ),
        passed(
            "IHL 4",
            edited(&|f| f[14] = 0x44),
            StatReason::PassMalformed,
        ),
        passed(
            "TCP data offset 2",
            edited(&|f| f[14 + 20 + 12] = 2 << 4),
            StatReason::PassMalformed,
        ),
        passed("IP options", ip_options.clone(), StatReason::PassIpOptions),
        passed(
            "IP options, ports cut",
            ip_options[..14 + 24 + 2].to_vec(),
            StatReason::PassMalformed,
        ),
        passed(
            "IP options, port 22",
            with_ip_options(Tcp4::new(net.client, 40000, net.router, 22, TCP_SYN)).build(),
            StatReason::PassNotForRange,
        ),
        passed("first fragment", fragment(0x2000), StatReason::PassFragment),
        passed("later fragment", fragment(0x0010), StatReason::PassFragment),
        passed(
            "ICMP header cut",
            packet::ipv4_frame(
                net.backend_mac,
                net.backend_dev_mac,
                net.backend,
                net.nat_source,
                1,
                64,
                0,
                &[],
                &[3, 4, 0, 0],
            ),
            StatReason::PassMalformed,
        ),
        passed(
            "ICMP quote cut",
            icmp_short_quote,
            StatReason::PassNotForRange,
        )
        .connections(0),
    ]);
    Table::new(cases)
}

/// Traffic for the router itself, other hosts and other protocols passes untouched, counted
/// as not for the range; the open connection stays the only one.
pub fn traffic_not_for_the_range_passes_untouched(net: &Net) -> Table {
    let to_router = |sport: u16, dport: u16, flags: u8| {
        Tcp4::new(net.client, sport, net.router, dport, flags).build()
    };
    let from_client = |proto: u8, body: &[u8]| {
        packet::ipv4_frame(
            net.client_mac,
            net.client_dev_mac,
            net.client,
            net.router,
            proto,
            64,
            0,
            &[],
            body,
        )
    };
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&net.client_mac);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let mut v6 = vec![0u8; 14 + 40 + 20];
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    v6[14] = 0x60;
    let frames = [
        ("ssh to the router", to_router(50000, 22, TCP_SYN)),
        ("https to the router", to_router(50000, 443, TCP_ACK)),
        (
            "router port on another host",
            Tcp4::new(
                net.client,
                50001,
                Ipv4Addr::new(10, 70, 1, 99),
                super::net::PORT,
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
            from_client(17, &[0x9c, 0x40, 0x4e, 0x20, 0, 8, 0, 0]),
        ),
        ("icmp echo", from_client(1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0])),
        ("arp", arp),
        ("ipv6", v6),
    ];
    let mut cases = vec![client_opens(net, 40000)];
    cases.extend(
        frames
            .into_iter()
            .map(|(name, frame)| passed(name, frame, StatReason::PassNotForRange)),
    );
    if let Some(last) = cases.pop() {
        cases.push(last.connections(1));
    }
    Table::new(cases)
}

/// `frame` with its IPv4 total length set to `total` (header checksum recomputed).
fn with_total_length(mut frame: Vec<u8>, total: u16) -> Vec<u8> {
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}

/// Found by the packet fuzzer (`datapath_fuzz`): segments and ICMP errors whose IPv4 total
/// length does not hold the headers the programs rewrite were translated, with ports and
/// checksums rewritten outside the bytes the receiver checks. They now pass untouched; Ethernet
/// padding after a well-formed packet is fine (still translated).
pub fn lengths_that_do_not_hold_the_headers_pass_untouched(net: &Net) -> Table {
    let ack = net.client_packet(40000, TCP_ACK).build();
    let mut options_past_end = ack.clone();
    options_past_end[14 + 20 + 12] = 15 << 4;
    let icmp = packet::icmp_error(HOP, net.nat_source, 3, 4, 1400, &net.sent_syn(40000), 0);
    let from_backend = |name: &str, frame: Vec<u8>, reason: StatReason| {
        Case::new(name, Side::Backend, frame, Verdict::Pass)
            .untouched()
            .counted(reason)
    };
    let mut padded = ack.clone();
    padded.extend_from_slice(&[0; 6]);
    Table::new(vec![
        client_opens(net, 40000),
        passed(
            "TCP header past the total length",
            with_total_length(ack.clone(), 30),
            StatReason::PassMalformed,
        ),
        passed(
            "total length past the frame",
            with_total_length(ack, 400),
            StatReason::PassMalformed,
        ),
        passed(
            "TCP options past the total length",
            options_past_end,
            StatReason::PassMalformed,
        ),
        from_backend(
            "ICMP quote past the total length",
            with_total_length(icmp.clone(), 20 + 8 + 20),
            StatReason::PassNotForRange,
        ),
        from_backend(
            "ICMP total length past the frame",
            with_total_length(icmp, 200),
            StatReason::PassMalformed,
        ),
        Case::new("padded frame", Side::Client, padded, Verdict::Redirect).fields(Fields {
            checksums: Checksums::Tcp,
            padding: 6,
            ..Fields::default()
        }),
    ])
}
