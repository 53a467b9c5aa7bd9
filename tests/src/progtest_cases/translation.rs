//! Connections translated both ways: the SYN that opens one, the handshake and data after it,
//! ICMP errors about it, a route moving under it, the MSS of its handshake, a NAT source port
//! taken by another client.

use super::net::{BACKEND_PORT, HOP, MOVED_BACKEND_PORT, PORT, PORT_UNRESOLVED, payload};
use super::{
    Case, Checksums, Fields, Hooks, Net, RouteChange, Setup, Side, Table, Verdict, client_opens,
    frag_needed_at_client,
};
use crate::packet::{self, TCP_ACK, TCP_PSH, TCP_SYN, Tcp4};
use router_common::stats::StatReason;
use router_userspace::datapath::options::NatSourcePorts;
use router_userspace::routes::PreserveClientIp;
use std::net::Ipv4Addr;

/// The client's SYN leaves toward the backend from the NAT source, keeping the client's port;
/// the connection is half-open (not counted live) until the handshake completes; a
/// retransmission follows the same entry.
pub fn new_connection_is_translated_and_tracked(net: &Net) -> Table {
    let syn = net.client_packet(40000, TCP_SYN).build();
    Table::new(vec![
        Case::new("client SYN", Side::Client, syn.clone(), Verdict::Redirect)
            .fields(Fields {
                macs: Some((net.backend_mac, net.backend_dev_mac)),
                addrs: Some((net.nat_source, net.backend)),
                ports: Some((40000, BACKEND_PORT)),
                ttl: Some(63),
                flags: Some(TCP_SYN),
                payload: Some(Vec::new()),
                checksums: Checksums::Tcp,
                ..Fields::default()
            })
            .totals(&[(StatReason::NewConnection, 1)])
            .live(0)
            .half_open_entries(2),
        Case::new("retransmitted SYN", Side::Client, syn, Verdict::Redirect)
            .same_as("client SYN")
            .totals(&[(StatReason::NewConnection, 1), (StatReason::Forwarded, 1)]),
    ])
}

/// The handshake and data both ways, each side seeing only the other's public address.
pub fn established_connection_is_translated_both_ways(net: &Net) -> Table {
    let (data, answer) = (payload(1001), payload(777));
    Table::new(vec![
        client_opens(net, 40000),
        Case::new(
            "backend SYN-ACK",
            Side::Backend,
            net.backend_packet(40000, TCP_SYN | TCP_ACK).build(),
            Verdict::Redirect,
        )
        .fields(Fields {
            macs: Some((net.client_mac, net.client_dev_mac)),
            addrs: Some((net.router, net.client)),
            ports: Some((PORT, 40000)),
            ttl: Some(63),
            checksums: Checksums::Tcp,
            ..Fields::default()
        }),
        Case::new(
            "client data",
            Side::Client,
            net.client_packet(40000, TCP_ACK | TCP_PSH)
                .payload(&data)
                .build(),
            Verdict::Redirect,
        )
        .fields(Fields {
            addrs: Some((net.nat_source, net.backend)),
            ports: Some((40000, BACKEND_PORT)),
            payload: Some(data.clone()),
            checksums: Checksums::Tcp,
            ..Fields::default()
        }),
        Case::new(
            "backend data",
            Side::Backend,
            net.backend_packet(40000, TCP_ACK | TCP_PSH)
                .payload(&answer)
                .build(),
            Verdict::Redirect,
        )
        .fields(Fields {
            addrs: Some((net.router, net.client)),
            ports: Some((PORT, 40000)),
            payload: Some(answer.clone()),
            checksums: Checksums::Tcp,
            ..Fields::default()
        })
        // The client's first segment acknowledged the SYN-ACK: it confirmed the connection.
        .totals(&[
            (StatReason::Forwarded, 2),
            (StatReason::HandshakeConfirmed, 1),
        ]),
    ])
}

/// "Fragmentation needed" from a router on the backend's path, about the SYN the router sent
/// there, goes to the client as if about the packet it sent; an error about a connection the
/// router does not track passes untouched.
pub fn icmp_errors_are_translated_back(net: &Net) -> Table {
    let mut frag_needed =
        packet::icmp_error(HOP, net.nat_source, 3, 4, 1400, &net.sent_syn(40000), 8);
    frag_needed[0..6].copy_from_slice(&net.backend_dev_mac);
    let stranger = Tcp4::new(net.nat_source, 45555, net.backend, 22, TCP_SYN).build();
    Table::new(vec![
        client_opens(net, 40000).frame(net.sent_syn(40000)),
        Case::new(
            "fragmentation needed about the SYN sent",
            Side::Backend,
            frag_needed,
            Verdict::Redirect,
        )
        .fields(Fields {
            ttl: Some(63),
            ..frag_needed_at_client(net, 40000)
        })
        .totals(&[(StatReason::IcmpTranslated, 1)]),
        Case::new(
            "an error about a connection not tracked",
            Side::Backend,
            packet::icmp_error(HOP, net.nat_source, 3, 1, 0, &stranger, 8),
            Verdict::Pass,
        )
        .untouched(),
    ])
}

/// A route moved to another backend port: the open connection keeps its backend, new ones
/// go to the new port.
pub fn route_change_affects_new_connections_only(net: &Net) -> Table {
    Table::new(vec![
        client_opens(net, 40000),
        Case::new(
            "the open connection's ACK after the route moved",
            Side::Client,
            net.client_packet(40000, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .after_routes(RouteChange {
            routes: net.moved_routes(),
            allow: Vec::new(),
            report: (0, 1, 0),
            client_ip: PreserveClientIp::Off,
        })
        .fields(Fields {
            dport: Some(BACKEND_PORT),
            ..Fields::default()
        }),
        Case::new(
            "a new connection's SYN",
            Side::Client,
            net.client_packet(40001, TCP_SYN).build(),
            Verdict::Redirect,
        )
        .fields(Fields {
            dport: Some(MOVED_BACKEND_PORT),
            checksums: Checksums::Tcp,
            ..Fields::default()
        }),
        // Replies of the old connection still come back from the old backend port.
        Case::new(
            "the open connection's reply",
            Side::Backend,
            net.backend_packet(40000, TCP_ACK).build(),
            Verdict::Redirect,
        ),
    ])
}

/// With a 1400-byte link toward the backend, a client SYN asking for MSS 1460 leaves asking for
/// 1360, and so does the backend's SYN-ACK toward the client: no end sends a segment the
/// router's links cannot carry (it could not fragment it, and the kernel's "fragmentation
/// needed" would go to the NAT address). Smaller MSS values pass unchanged; checksums stay
/// valid.
pub fn handshake_mss_is_clamped_to_the_links(net: &Net) -> Table {
    let clamped = |mss: u16| Fields {
        mss: Some(Some(mss)),
        checksums: Checksums::Tcp,
        ..Fields::default()
    };
    // No neighbour entry for the backend yet: TC sends the SYN through the neighbour path,
    // clamped to the device's MTU; XDP hands it to TC untouched.
    let unresolved = Tcp4::new(net.client, 40002, net.router, PORT_UNRESOLVED, TCP_SYN)
        .macs(net.client_mac, net.client_dev_mac)
        .mss(1460)
        .build();
    let looks_like_mss = [2, 4, 0x05, 0xb4];
    Table::with_setup(
        Setup {
            backend_mtu: Some(1400),
            ..Setup::default()
        },
        vec![
            Case::new(
                "client SYN with MSS 1460",
                Side::Client,
                net.client_packet(40000, TCP_SYN).mss(1460).build(),
                Verdict::Redirect,
            )
            .fields(clamped(1360)),
            Case::new(
                "backend SYN-ACK with MSS 1460: the backend link is the smaller",
                Side::Backend,
                net.backend_packet(40000, TCP_SYN | TCP_ACK)
                    .mss(1460)
                    .build(),
                Verdict::Redirect,
            )
            .fields(clamped(1360)),
            Case::new(
                "client SYN with MSS 1460 through the neighbour path",
                Side::Client,
                unresolved.clone(),
                Verdict::Redirect,
            )
            .only(Hooks::TcOnly)
            .fields(clamped(1360)),
            Case::new(
                "client SYN with MSS 1460 handed to TC",
                Side::Client,
                unresolved,
                Verdict::Pass,
            )
            .only(Hooks::XdpOnly)
            .untouched(),
            Case::new(
                "client SYN with MSS 1200, small enough",
                Side::Client,
                net.client_packet(40001, TCP_SYN).mss(1200).build(),
                Verdict::Redirect,
            )
            .fields(clamped(1200)),
            // Data segments are never touched even if their first bytes look like an MSS option.
            Case::new(
                "data that looks like an MSS option",
                Side::Client,
                net.client_packet(40001, TCP_ACK)
                    .payload(&looks_like_mss)
                    .build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                payload: Some(looks_like_mss.to_vec()),
                checksums: Checksums::Tcp,
                ..Fields::default()
            }),
        ],
    )
}

/// With one NAT source port, another client on the same port to the same backend gets it
/// (its own is taken there); a third finds none free and is dropped, counted.
pub fn taken_source_port_is_probed_and_exhaustion_counted(net: &Net) -> Table {
    Table::with_setup(
        Setup {
            nat_source_ports: NatSourcePorts::Range(61000, 61000),
            ..Setup::default()
        },
        vec![
            client_opens(net, 40000),
            Case::new(
                "another client on the same port: probed within the NAT source range",
                Side::Client,
                net.packet_from(Ipv4Addr::new(10, 70, 1, 3), 40000, TCP_SYN)
                    .build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                sport: Some(61000),
                checksums: Checksums::Tcp,
                ..Fields::default()
            }),
            Case::new(
                "a third client: neither its own port nor the range free",
                Side::Client,
                Tcp4::new(
                    Ipv4Addr::new(10, 70, 1, 4),
                    40000,
                    net.router,
                    PORT,
                    TCP_SYN,
                )
                .build(),
                Verdict::Drop,
            )
            // Both connections are half-open: their tuples are held in the half-open table.
            .totals(&[(StatReason::DropNoSourcePort, 1)])
            .live(0)
            .half_open_entries(4),
        ],
    )
}
