//! Destination-only NAT (`preserve_client_ip`): the task sees the client's address; only the
//! destination is rewritten toward it and only the source back toward the client. A route
//! switched between modes changes new connections only.

use super::net::{BACKEND_PORT, HOP, PORT, payload};
use super::{
    Case, Checksums, Fields, Net, RouteChange, Setup, Side, Table, Verdict, client_opens,
    frag_needed_at_client,
};
use crate::packet::{self, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN};
use router_common::stats::StatReason;
use router_userspace::routes::PreserveClientIp;
use std::net::Ipv4Addr;

/// What leaves toward the backend: from `from` (the client's address in destination-only
/// mode, the NAT source otherwise) and client port `sport`.
fn toward_backend(net: &Net, from: Ipv4Addr, sport: u16) -> Fields {
    Fields {
        macs: Some((net.backend_mac, net.backend_dev_mac)),
        addrs: Some((from, net.backend)),
        ports: Some((sport, BACKEND_PORT)),
        checksums: Checksums::Tcp,
        ..Fields::default()
    }
}

/// What leaves toward the client: from the router's address and port, whatever the mode.
fn toward_client(net: &Net, dport: u16) -> Fields {
    Fields {
        macs: Some((net.client_mac, net.client_dev_mac)),
        addrs: Some((net.router, net.client)),
        ports: Some((PORT, dport)),
        checksums: Checksums::Tcp,
        ..Fields::default()
    }
}

/// A route with `preserve_client_ip = on`: the SYN leaves with the client's address and port;
/// the backend answers the client's address and the router sends that on from its own address
/// and the router port; the handshake completes, data flows both ways; an ICMP error about the
/// SYN, addressed to the client, reaches it as an error about what it sent; another client on
/// the same source port keeps its port (its address differs).
pub fn destination_only_nat_keeps_the_client_address_both_ways(net: &Net) -> Table {
    let (data, answer) = (payload(1001), payload(777));
    let mut frag_needed = packet::icmp_error(
        HOP,
        net.client,
        3,
        4,
        1400,
        &net.sent_syn_keeping_the_client(40000),
        8,
    );
    frag_needed[0..6].copy_from_slice(&net.backend_dev_mac);
    let other_client = Ipv4Addr::new(10, 70, 1, 3);
    Table::with_setup(
        Setup {
            client_ip: PreserveClientIp::On,
            ..Setup::default()
        },
        vec![
            client_opens(net, 40000)
                .fields(Fields {
                    ttl: Some(63),
                    flags: Some(TCP_SYN),
                    ..toward_backend(net, net.client, 40000)
                })
                .totals(&[(StatReason::NewConnection, 1)]),
            Case::new(
                "backend SYN-ACK to the client's address",
                Side::Backend,
                net.backend_packet_to_client(40000, TCP_SYN | TCP_ACK)
                    .build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                ttl: Some(63),
                ..toward_client(net, 40000)
            }),
            Case::new(
                "client ACK completes the handshake",
                Side::Client,
                net.client_packet(40000, TCP_ACK).build(),
                Verdict::Redirect,
            )
            .fields(toward_backend(net, net.client, 40000))
            .counted(StatReason::HandshakeConfirmed),
            Case::new(
                "client data",
                Side::Client,
                net.client_packet(40000, TCP_ACK | TCP_PSH)
                    .payload(&data)
                    .build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                payload: Some(data.clone()),
                ..toward_backend(net, net.client, 40000)
            }),
            Case::new(
                "backend data",
                Side::Backend,
                net.backend_packet_to_client(40000, TCP_ACK | TCP_PSH)
                    .payload(&answer)
                    .build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                payload: Some(answer.clone()),
                ..toward_client(net, 40000)
            })
            .totals(&[(StatReason::Forwarded, 3)]),
            Case::new(
                "fragmentation needed about the SYN sent, addressed to the client",
                Side::Backend,
                frag_needed,
                Verdict::Redirect,
            )
            .fields(frag_needed_at_client(net, 40000))
            .counted(StatReason::IcmpTranslated),
            Case::new(
                "another client on the same port keeps its address and port",
                Side::Client,
                net.packet_from(other_client, 40000, TCP_SYN).build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                addrs: Some((other_client, net.backend)),
                ports: Some((40000, BACKEND_PORT)),
                checksums: Checksums::Tcp,
                ..Fields::default()
            })
            .counted(StatReason::NewConnection),
        ],
    )
}

/// The table's routes programmed again in mode `client_ip` (both change).
fn switch(net: &Net, client_ip: PreserveClientIp) -> RouteChange {
    RouteChange {
        routes: net.routes(),
        report: (0, 2, 0),
        client_ip,
        allow: Vec::new(),
    }
}

/// The open connection (port 40000, full NAT) keeps its tuple after its route switched to
/// destination-only; the next one (40001) keeps the client's address, and keeps it after the
/// route switched back; the one after that (40002) is full NAT again.
pub fn a_route_switched_between_modes_keeps_its_connections(net: &Net) -> Table {
    let switch = |client_ip| switch(net, client_ip);
    Table::new(vec![
        client_opens(net, 40000).fields(toward_backend(net, net.nat_source, 40000)),
        Case::new(
            "backend SYN-ACK to the NAT source",
            Side::Backend,
            net.backend_packet(40000, TCP_SYN | TCP_ACK).build(),
            Verdict::Redirect,
        )
        .fields(toward_client(net, 40000)),
        Case::new(
            "client ACK completes the full-NAT handshake",
            Side::Client,
            net.client_packet(40000, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .counted(StatReason::HandshakeConfirmed),
        Case::new(
            "the open connection's data after the route switched to destination-only",
            Side::Client,
            net.client_packet(40000, TCP_ACK | TCP_PSH)
                .payload(&payload(100))
                .build(),
            Verdict::Redirect,
        )
        .after_routes(switch(PreserveClientIp::On))
        .fields(toward_backend(net, net.nat_source, 40000)),
        Case::new(
            "the open connection's reply, still to the NAT source",
            Side::Backend,
            net.backend_packet(40000, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .fields(toward_client(net, 40000)),
        client_opens(net, 40001).fields(toward_backend(net, net.client, 40001)),
        Case::new(
            "backend SYN-ACK to the client's address",
            Side::Backend,
            net.backend_packet_to_client(40001, TCP_SYN | TCP_ACK)
                .build(),
            Verdict::Redirect,
        )
        .fields(toward_client(net, 40001)),
        Case::new(
            "client ACK completes the destination-only handshake",
            Side::Client,
            net.client_packet(40001, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .counted(StatReason::HandshakeConfirmed),
        Case::new(
            "the destination-only connection's data after the route switched back",
            Side::Client,
            net.client_packet(40001, TCP_ACK | TCP_PSH)
                .payload(&payload(100))
                .build(),
            Verdict::Redirect,
        )
        .after_routes(switch(PreserveClientIp::Off))
        .fields(toward_backend(net, net.client, 40001)),
        Case::new(
            "its reply, still to the client's address",
            Side::Backend,
            net.backend_packet_to_client(40001, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .fields(toward_client(net, 40001)),
        Case::new(
            "the full-NAT connection's reply",
            Side::Backend,
            net.backend_packet(40000, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .fields(toward_client(net, 40000)),
        client_opens(net, 40002).fields(toward_backend(net, net.nat_source, 40002)),
    ])
}

/// How a connection in one mode or the other looks from both ends: the source address its
/// packets carry toward the backend (the NAT source or the client's), and the backend's
/// packet to that address.
struct Mode {
    name: &'static str,
    source: Ipv4Addr,
    setting: PreserveClientIp,
}

impl Mode {
    fn full(net: &Net) -> Mode {
        Mode {
            name: "full-NAT",
            source: net.nat_source,
            setting: PreserveClientIp::Off,
        }
    }

    fn destination_only(net: &Net) -> Mode {
        Mode {
            name: "destination-only",
            source: net.client,
            setting: PreserveClientIp::On,
        }
    }

    /// The backend's packet from its port to this mode's source address and port `dport`.
    fn backend_packet(&self, net: &Net, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = net.backend_packet(dport, flags);
        p.daddr = self.source;
        p.build()
    }
}

/// A client reusing its port 40000 after the connection on it ended (FIN both ways, the pair
/// still tracked while closing) and its route switched from mode `old` to mode `new`: the SYN
/// opens a connection in `new` (its source toward the backend is `new`'s) instead of restarting
/// the ended pair in place (`restart_in_place` refuses a pair of the other mode); the old pair
/// is gone with it, so the backend's packets to the old tuple are not translated; the new
/// connection completes its handshake and carries data.
fn a_reused_tuple_opens_in_the_routes_current_mode(net: &Net, old: Mode, new: Mode) -> Table {
    let data = payload(300);
    Table::with_setup(
        Setup {
            client_ip: old.setting,
            ..Setup::default()
        },
        vec![
            client_opens(net, 40000).fields(toward_backend(net, old.source, 40000)),
            Case::new(
                format!("backend SYN-ACK of the {} connection", old.name),
                Side::Backend,
                old.backend_packet(net, 40000, TCP_SYN | TCP_ACK),
                Verdict::Redirect,
            )
            .fields(toward_client(net, 40000)),
            Case::new(
                format!("client ACK completes the {} handshake", old.name),
                Side::Client,
                net.client_packet(40000, TCP_ACK).build(),
                Verdict::Redirect,
            )
            .counted(StatReason::HandshakeConfirmed),
            Case::new(
                "client FIN",
                Side::Client,
                net.client_packet(40000, TCP_FIN | TCP_ACK).build(),
                Verdict::Redirect,
            )
            .fields(toward_backend(net, old.source, 40000)),
            Case::new(
                "backend FIN",
                Side::Backend,
                old.backend_packet(net, 40000, TCP_FIN | TCP_ACK),
                Verdict::Redirect,
            )
            .fields(toward_client(net, 40000))
            .connections(1),
            Case::new(
                format!(
                    "the client reuses its port after the route switched to {}",
                    new.name
                ),
                Side::Client,
                net.client_packet(40000, TCP_SYN).build(),
                Verdict::Redirect,
            )
            .after_routes(switch(net, new.setting))
            .fields(Fields {
                flags: Some(TCP_SYN),
                ..toward_backend(net, new.source, 40000)
            })
            .counted(StatReason::NewConnection)
            .connections(1)
            .half_open_entries(2),
            Case::new(
                format!("the backend's segment to the ended {} tuple", old.name),
                Side::Backend,
                old.backend_packet(net, 40000, TCP_ACK),
                Verdict::Pass,
            )
            .untouched(),
            Case::new(
                format!("backend SYN-ACK of the {} connection", new.name),
                Side::Backend,
                new.backend_packet(net, 40000, TCP_SYN | TCP_ACK),
                Verdict::Redirect,
            )
            .fields(Fields {
                flags: Some(TCP_SYN | TCP_ACK),
                ..toward_client(net, 40000)
            }),
            Case::new(
                format!("client ACK completes the {} handshake", new.name),
                Side::Client,
                net.client_packet(40000, TCP_ACK).build(),
                Verdict::Redirect,
            )
            .fields(toward_backend(net, new.source, 40000))
            .counted(StatReason::HandshakeConfirmed)
            .connections(1)
            .half_open_entries(0),
            Case::new(
                format!("client data on the {} connection", new.name),
                Side::Client,
                net.client_packet(40000, TCP_ACK | TCP_PSH)
                    .payload(&data)
                    .build(),
                Verdict::Redirect,
            )
            .fields(Fields {
                payload: Some(data.clone()),
                ..toward_backend(net, new.source, 40000)
            }),
            Case::new(
                format!("backend data on the {} connection", new.name),
                Side::Backend,
                new.backend_packet(net, 40000, TCP_ACK | TCP_PSH),
                Verdict::Redirect,
            )
            .fields(toward_client(net, 40000)),
        ],
    )
}

/// [`a_reused_tuple_opens_in_the_routes_current_mode`] from full NAT to destination-only.
pub fn a_reused_tuple_after_a_switch_to_destination_only_keeps_the_client_address(
    net: &Net,
) -> Table {
    a_reused_tuple_opens_in_the_routes_current_mode(
        net,
        Mode::full(net),
        Mode::destination_only(net),
    )
}

/// [`a_reused_tuple_opens_in_the_routes_current_mode`] from destination-only back to full NAT.
pub fn a_reused_tuple_after_a_switch_to_full_nat_takes_the_nat_source(net: &Net) -> Table {
    a_reused_tuple_opens_in_the_routes_current_mode(
        net,
        Mode::destination_only(net),
        Mode::full(net),
    )
}
