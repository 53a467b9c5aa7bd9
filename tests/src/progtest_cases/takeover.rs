//! A closed connection's tuple toward the backend handed to another client (both connections
//! translate TCP timestamps, so the backend accepts the new SYN on the tuple it holds in
//! TIME_WAIT): only once both FINs are acknowledged. Until the last ACK has passed, the tuple
//! stays the old connection's, so that ACK reaches the side that waits for it and never a new
//! client in SYN_SENT (which would answer it with a RST and send its SYN again). One NAT source
//! port, which is also the clients' port: a SYN that may not take the tuple finds no other.

use super::net::{BACKEND_PORT, PORT, handshake_timestamps};
use super::{Case, Checksums, Fields, Hooks, Net, Setup, Side, Table, Verdict};
use crate::packet::{TCP_ACK, TCP_FIN, TCP_SYN, Tcp4};
use router_common::stats::StatReason;
use router_userspace::datapath::options::NatSourcePorts;
use std::net::Ipv4Addr;

/// The only NAT source port, and every client's port.
pub const TUPLE_PORT: u16 = 61000;
/// The next client, and the one after it.
pub const NEXT_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 70, 1, 3);
pub const THIRD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 70, 1, 4);

/// Sequence numbers of the closing: the client's FIN is at `CLIENT_FIN`, the backend's at
/// `BACKEND_FIN` (each then takes one number).
const CLIENT_FIN: u32 = 3000;
const BACKEND_FIN: u32 = 5000;

fn setup() -> Setup {
    Setup {
        nat_source_ports: NatSourcePorts::Range(TUPLE_PORT, TUPLE_PORT),
        ..Setup::default()
    }
}

fn numbered(mut p: Tcp4, seq: u32, ack: u32) -> Vec<u8> {
    p.seq = seq;
    p.ack = ack;
    p.build()
}

fn client(net: &Net, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    numbered(net.client_packet(TUPLE_PORT, flags), seq, ack)
}

fn backend(net: &Net, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    numbered(net.backend_packet(TUPLE_PORT, flags), seq, ack)
}

/// A SYN with timestamps from `from`.
fn syn(net: &Net, from: Ipv4Addr, tsval: u32) -> Vec<u8> {
    let mut p = net.packet_from(from, TUPLE_PORT, TCP_SYN);
    p.tcp_options = handshake_timestamps(tsval, 0);
    p.build()
}

/// The first client's connection, with timestamps, confirmed.
fn connection(net: &Net) -> Vec<Case> {
    let mut synack = net.backend_packet(TUPLE_PORT, TCP_SYN | TCP_ACK);
    synack.tcp_options = handshake_timestamps(700, 1);
    vec![
        Case::new(
            "client SYN",
            Side::Client,
            syn(net, net.client, 100),
            Verdict::Redirect,
        )
        .fields(Fields {
            ports: Some((TUPLE_PORT, BACKEND_PORT)),
            ..Fields::default()
        }),
        Case::new(
            "backend SYN-ACK",
            Side::Backend,
            synack.build(),
            Verdict::Redirect,
        ),
        Case::new(
            "client ACK",
            Side::Client,
            net.client_packet(TUPLE_PORT, TCP_ACK).build(),
            Verdict::Redirect,
        )
        .counted(StatReason::HandshakeConfirmed),
    ]
}

/// The next client's SYN while the tuple is still the old connection's: no tuple for it.
fn refused_syn(net: &Net, name: &str) -> Case {
    Case::new(name, Side::Client, syn(net, NEXT_CLIENT, 1), Verdict::Drop)
        .counted(StatReason::DropNoSourcePort)
        .tracked(TUPLE_PORT, PORT, true)
}

/// What reaches the first client from the backend.
fn to_first_client(net: &Net) -> Fields {
    Fields {
        addrs: Some((net.router, net.client)),
        ports: Some((PORT, TUPLE_PORT)),
        checksums: Checksums::Tcp,
        ..Fields::default()
    }
}

/// What reaches the backend on the tuple.
fn to_backend(net: &Net) -> Fields {
    Fields {
        addrs: Some((net.nat_source, net.backend)),
        ports: Some((TUPLE_PORT, BACKEND_PORT)),
        checksums: Checksums::Tcp,
        ..Fields::default()
    }
}

/// A third client's SYN once the tuple is free: it takes it over; a late backend packet on the
/// tuple now goes to that client, counted as reaching a client in SYN_SENT.
fn taken_over(net: &Net) -> Vec<Case> {
    vec![
        Case::new(
            "a third client's SYN takes the tuple",
            Side::Client,
            syn(net, THIRD_CLIENT, 1),
            Verdict::Redirect,
        )
        .fields(to_backend(net))
        .counted(StatReason::NewConnection)
        .tracked(TUPLE_PORT, PORT, false),
        Case::new(
            "a late backend ACK on the new half-open connection",
            Side::Backend,
            backend(net, TCP_ACK, BACKEND_FIN + 1, CLIENT_FIN + 1),
            Verdict::Redirect,
        )
        .fields(Fields {
            addrs: Some((net.router, THIRD_CLIENT)),
            ..Fields::default()
        })
        .counted(StatReason::ForwardedBeforeHandshake)
        // XDP hands it to TC: the third client's address has no neighbour entry.
        .only(Hooks::TcOnly),
    ]
}

/// The task closes first (as HTTP servers do): its FIN, the client's ACK and FIN, then the
/// task's last ACK, which must reach the first client although another client's SYN came
/// before it; an ACK short of the client's FIN does not free the tuple.
pub fn the_task_closing_first_keeps_its_tuple_until_its_last_ack(net: &Net) -> Table {
    let mut cases = connection(net);
    cases.extend([
        Case::new(
            "backend FIN",
            Side::Backend,
            backend(net, TCP_FIN | TCP_ACK, BACKEND_FIN, CLIENT_FIN),
            Verdict::Redirect,
        ),
        Case::new(
            "client ACK of the FIN",
            Side::Client,
            client(net, TCP_ACK, CLIENT_FIN, BACKEND_FIN + 1),
            Verdict::Redirect,
        ),
        Case::new(
            "client FIN",
            Side::Client,
            client(net, TCP_FIN | TCP_ACK, CLIENT_FIN, BACKEND_FIN + 1),
            Verdict::Redirect,
        ),
        refused_syn(net, "another client's SYN before the last ACK"),
        Case::new(
            "a backend ACK short of the client's FIN",
            Side::Backend,
            backend(net, TCP_ACK, BACKEND_FIN + 1, CLIENT_FIN),
            Verdict::Redirect,
        )
        .fields(to_first_client(net)),
        refused_syn(net, "another client's SYN after an ACK short of the FIN"),
        Case::new(
            "the backend's last ACK",
            Side::Backend,
            backend(net, TCP_ACK, BACKEND_FIN + 1, CLIENT_FIN + 1),
            Verdict::Redirect,
        )
        .fields(to_first_client(net))
        .counted(StatReason::Forwarded),
    ]);
    cases.extend(taken_over(net));
    Table::with_setup(setup(), cases)
}

/// The client closes first: its FIN, the task's ACK and FIN, then the client's last ACK, which
/// must reach the task (in LAST_ACK) although another client's SYN came before it.
pub fn the_client_closing_first_keeps_its_tuple_until_its_last_ack(net: &Net) -> Table {
    let mut cases = connection(net);
    cases.extend([
        Case::new(
            "client FIN",
            Side::Client,
            client(net, TCP_FIN | TCP_ACK, CLIENT_FIN, BACKEND_FIN),
            Verdict::Redirect,
        ),
        Case::new(
            "backend FIN, acknowledging the client's",
            Side::Backend,
            backend(net, TCP_FIN | TCP_ACK, BACKEND_FIN, CLIENT_FIN + 1),
            Verdict::Redirect,
        )
        .fields(to_first_client(net)),
        refused_syn(net, "another client's SYN before the last ACK"),
        Case::new(
            "the client's last ACK",
            Side::Client,
            client(net, TCP_ACK, CLIENT_FIN + 1, BACKEND_FIN + 1),
            Verdict::Redirect,
        )
        .fields(to_backend(net))
        .counted(StatReason::Forwarded),
    ]);
    cases.extend(taken_over(net));
    Table::with_setup(setup(), cases)
}
