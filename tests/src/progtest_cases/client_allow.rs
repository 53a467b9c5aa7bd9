//! Client allow-lists: asked only when a SYN would open a connection. A refused SYN is a
//! counted drop; a connection opened before its client was taken off the list keeps flowing
//! both ways; a list change holds for the next SYN.

use super::net::{PORT, payload};
use super::{Case, Net, RouteChange, Side, Table, Verdict, client_opens};
use crate::packet::{TCP_ACK, TCP_PSH, TCP_SYN};
use router_common::stats::StatReason;
use std::net::Ipv4Addr;

/// A client address that is on no list below.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 70, 1, 99);

/// The table's routes with [`PORT`] admitting `allow` (empty: everyone).
fn allowing(net: &Net, allow: &str) -> RouteChange {
    RouteChange {
        routes: net.routes(),
        allow: vec![(PORT, allow.to_string())],
        report: (0, 0, 0),
        client_ip: router_userspace::routes::PreserveClientIp::Off,
    }
}

pub fn client_allow_is_asked_only_when_a_connection_opens(net: &Net) -> Table {
    let only_client = format!("{}/32, 192.0.2.0/24", net.client);
    Table::new(vec![
        client_opens(net, 40000).counted(StatReason::NewConnection),
        Case::new(
            "backend SYN-ACK",
            Side::Backend,
            net.backend_packet(40000, TCP_SYN | TCP_ACK).build(),
            Verdict::Redirect,
        ),
        Case::new(
            "client ACK",
            Side::Client,
            net.client_packet(40000, TCP_ACK).build(),
            Verdict::Redirect,
        ),
        Case::new(
            "a SYN from the client, now off the list",
            Side::Client,
            net.client_packet(40001, TCP_SYN).build(),
            Verdict::Drop,
        )
        .after_routes(allowing(net, "192.0.2.0/24"))
        .counted(StatReason::DropClientNotAllowed)
        .tracked(40001, PORT, false),
        Case::new(
            "data on the connection opened before the change",
            Side::Client,
            net.client_packet(40000, TCP_ACK | TCP_PSH)
                .payload(&payload(300))
                .build(),
            Verdict::Redirect,
        )
        .counted(StatReason::Forwarded),
        Case::new(
            "the backend's answer on it",
            Side::Backend,
            net.backend_packet(40000, TCP_ACK | TCP_PSH)
                .payload(&payload(200))
                .build(),
            Verdict::Redirect,
        )
        .counted(StatReason::Forwarded),
        Case::new(
            "a SYN from the client once the list names it",
            Side::Client,
            net.client_packet(40002, TCP_SYN).build(),
            Verdict::Redirect,
        )
        .after_routes(allowing(net, &only_client))
        .counted(StatReason::NewConnection),
        Case::new(
            "a SYN from an address the list does not name",
            Side::Client,
            net.packet_from(STRANGER, 40003, TCP_SYN).build(),
            Verdict::Drop,
        )
        .counted(StatReason::DropClientNotAllowed),
        Case::new(
            "that address once the route has no list",
            Side::Client,
            net.packet_from(STRANGER, 40004, TCP_SYN).build(),
            Verdict::Redirect,
        )
        .after_routes(allowing(net, ""))
        .counted(StatReason::NewConnection)
        .totals(&[(StatReason::DropClientNotAllowed, 2)]),
    ])
}
