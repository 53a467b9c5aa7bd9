//! The router host's own ephemeral ports (issue 19, section 2): a client whose port lies in
//! the host's `net.ipv4.ip_local_port_range` gets a NAT source port toward the task, since the
//! host's own connections to the task (nginx, health checks) may hold that tuple; a client
//! outside it keeps its own; a change of the host's range applies to the next SYN. Only full
//! NAT is concerned: destination-only NAT keeps the client's address, never the host's.

use super::net::BACKEND_PORT;
use super::{Checksums, Fields, Net, Setup, Table, client_opens};
use router_userspace::datapath::options::NatSourcePorts;
use router_userspace::host_ephemeral::PortRange;
use router_userspace::routes::PreserveClientIp;

/// Linux's default ephemeral range.
pub const LINUX_EPHEMERAL: PortRange = PortRange {
    first: 32768,
    last: 60999,
};

/// NAT source ports of these cases.
pub const NAT_PORTS: (u16, u16) = (61000, 61099);

/// The case after which the test sets the host's range to [`CHANGED_EPHEMERAL`].
pub const BEFORE_THE_CHANGE: &str = "client SYN from 20000";

/// The host's range after the change: now over 20001, no longer over 40001.
pub const CHANGED_EPHEMERAL: PortRange = PortRange {
    first: 10000,
    last: 29999,
};

fn nat_port(net: &Net) -> Fields {
    Fields {
        addrs: Some((net.nat_source, net.backend)),
        sport_in: Some(NAT_PORTS.0..=NAT_PORTS.1),
        dport: Some(BACKEND_PORT),
        checksums: Checksums::Tcp,
        ..Fields::default()
    }
}

fn own_port(net: &Net, port: u16) -> Fields {
    Fields {
        addrs: Some((net.nat_source, net.backend)),
        ports: Some((port, BACKEND_PORT)),
        checksums: Checksums::Tcp,
        ..Fields::default()
    }
}

/// Two clients with the host on Linux's default range, then two after it changed.
pub fn a_client_port_the_host_may_pick_is_never_used_toward_the_task(net: &Net) -> Table {
    let redirected = |port: u16, fields: Fields| client_opens(net, port).fields(fields);
    Table::with_setup(
        Setup {
            nat_source_ports: NatSourcePorts::Range(NAT_PORTS.0, NAT_PORTS.1),
            host_ephemeral: LINUX_EPHEMERAL,
            ..Setup::default()
        },
        vec![
            redirected(40000, nat_port(net)),
            redirected(20000, own_port(net, 20000)),
            redirected(20001, nat_port(net)),
            redirected(40001, own_port(net, 40001)),
        ],
    )
}

/// Destination-only NAT keeps the client's address toward the task, so no tuple of the
/// router host's is at stake: a client port inside the host's range is kept.
pub fn destination_only_nat_keeps_a_client_port_inside_the_host_range(net: &Net) -> Table {
    Table::with_setup(
        Setup {
            nat_source_ports: NatSourcePorts::Range(NAT_PORTS.0, NAT_PORTS.1),
            host_ephemeral: LINUX_EPHEMERAL,
            client_ip: PreserveClientIp::On,
            ..Setup::default()
        },
        vec![client_opens(net, 40000).fields(Fields {
            addrs: Some((net.client, net.backend)),
            ports: Some((40000, BACKEND_PORT)),
            checksums: Checksums::Tcp,
            ..Fields::default()
        })],
    )
}
