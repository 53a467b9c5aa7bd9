//! Where forwarding stops short: a next hop without a neighbour entry (TC resolves it, XDP
//! hands the packet on), an interface XDP cannot redirect to, a TTL that would expire, a frame
//! larger than the egress link.

use super::net::{PORT_UNRESOLVED, payload};
use super::{Case, Checksums, Fields, Hooks, Net, Setup, Side, Table, Verdict, client_opens};
use crate::packet::{TCP_ACK, TCP_SYN, Tcp4};
use router_common::stats::StatReason;

/// A SYN to a backend without a neighbour entry: TC sends it through `bpf_redirect_neigh`,
/// XDP (which cannot resolve neighbours) hands it to the TC program behind it.
pub fn unresolved_neighbour_goes_through_the_neighbour_path(net: &Net) -> Table {
    let syn = Tcp4::new(net.client, 40000, net.router, PORT_UNRESOLVED, TCP_SYN)
        .macs(net.client_mac, net.client_dev_mac)
        .build();
    Table::new(vec![
        Case::new(
            "SYN to a backend without a neighbour entry, handed to TC",
            Side::Client,
            syn.clone(),
            Verdict::Pass,
        )
        .only(Hooks::XdpOnly)
        .untouched()
        .totals(&[(StatReason::XdpToTcNoNeigh, 1)])
        .tracked(40000, PORT_UNRESOLVED, false),
        Case::new(
            "SYN to a backend without a neighbour entry, through bpf_redirect_neigh",
            Side::Client,
            syn,
            Verdict::Redirect,
        )
        .only(Hooks::TcOnly)
        .fields(Fields {
            addrs: Some((net.nat_source, net.backend_unresolved)),
            checksums: Checksums::Tcp,
            ..Fields::default()
        })
        .totals(&[(StatReason::NewConnection, 1)])
        .tracked(40000, PORT_UNRESOLVED, true),
    ])
}

/// XDP also hands over what it cannot redirect to: an egress that is no XDP target.
pub fn xdp_hands_over_what_it_cannot_redirect_to(net: &Net) -> Table {
    Table::with_setup(
        Setup {
            xdp_targets: false,
            ..Setup::default()
        },
        vec![
            Case::new(
                "SYN toward an interface that is no XDP target",
                Side::Client,
                net.client_packet(40000, TCP_SYN).build(),
                Verdict::Pass,
            )
            .only(Hooks::XdpOnly)
            .untouched()
            .totals(&[(StatReason::XdpToTcNotXdpTarget, 1)]),
        ],
    )
}

/// A TTL that would expire on the way is dropped and counted, for a SYN (which opens nothing)
/// and on an open connection.
pub fn ttl_that_would_expire_is_dropped(net: &Net) -> Table {
    let ttl_1 = |mut p: Tcp4| {
        p.ttl = 1;
        p.build()
    };
    Table::new(vec![
        Case::new(
            "SYN with TTL 1",
            Side::Client,
            ttl_1(net.client_packet(40000, TCP_SYN)),
            Verdict::Drop,
        )
        .totals(&[(StatReason::DropTtlExceeded, 1)])
        .connections(0),
        client_opens(net, 40000),
        Case::new(
            "ACK with TTL 1 on the open connection",
            Side::Client,
            ttl_1(net.client_packet(40000, TCP_ACK)),
            Verdict::Drop,
        )
        .totals(&[(StatReason::DropTtlExceeded, 2)]),
    ])
}

/// A frame larger than the egress link: XDP hands it to TC, TC drops it (counted); one that
/// fits is forwarded.
pub fn oversized_frames_are_not_forwarded_blindly(net: &Net) -> Table {
    let big = net
        .client_packet(40000, TCP_ACK)
        .payload(&payload(1600))
        .build();
    Table::new(vec![
        client_opens(net, 40000),
        Case::new(
            "1600 bytes of payload, handed to TC",
            Side::Client,
            big.clone(),
            Verdict::Pass,
        )
        .only(Hooks::XdpOnly)
        .untouched()
        .totals(&[(StatReason::XdpToTcTooBig, 1)]),
        Case::new(
            "1600 bytes of payload, dropped",
            Side::Client,
            big,
            Verdict::Drop,
        )
        .only(Hooks::TcOnly)
        .totals(&[(StatReason::DropTooBig, 1)]),
        Case::new(
            "1460 bytes of payload",
            Side::Client,
            net.client_packet(40000, TCP_ACK)
                .payload(&payload(1460))
                .build(),
            Verdict::Redirect,
        ),
    ])
}
