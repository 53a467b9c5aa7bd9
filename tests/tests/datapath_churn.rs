//! Many clients, one task, the task closing first (issue 19, section 2): clients on different
//! addresses reuse one client port one after another through the datapath with a NAT source
//! range of one port. Each connection closes both ways before the next; the next client's SYN
//! takes the closed connection's tuple toward the task at once (the task holds it in TIME_WAIT)
//! and is accepted there, because the datapath translates TCP timestamps so that they are newer
//! than the last connection's: no SYN is dropped for want of a tuple, none meets PAWS at the
//! task, none is retransmitted. The throughput of this under load is the bench's
//! (`cargo xtask bench churn`), not this test's.

use router_common::stats::StatReason;
use router_tests::churn::{CloseFirstServer, connect_without_stalling, syn_retransmits_and_paws};
use router_tests::flood_setup;
use router_tests::require_root;
use router_tests::topology::Topology;
use router_userspace::datapath::options::NatSourcePorts;
use std::net::{Ipv4Addr, SocketAddrV4};

const PORT: u16 = 20600;
const BACKEND_PORT: u16 = 8600;
const CLIENT_PORT: u16 = 40000;
const CLIENTS: u32 = 8;

#[test]
fn clients_taking_turns_on_one_tuple_are_accepted_without_retransmissions() {
    require_root();
    let t = Topology::new().expect("topology");
    let backend = SocketAddrV4::new(t.backend_end.addr, BACKEND_PORT);
    let _server = CloseFirstServer::start(&t.backend, *backend.ip(), BACKEND_PORT, 1)
        .expect("close-first server");
    let base = u32::from(t.client_end.addr) & 0xffff_ff00;
    let clients: Vec<Ipv4Addr> = (0..CLIENTS)
        .map(|i| Ipv4Addr::from(base | (100 + i)))
        .collect();
    for a in &clients {
        t.client
            .ip(&["addr", "add", &format!("{a}/24"), "dev", &t.client_end.dev])
            .expect("client address");
    }
    let dp = flood_setup::open_datapath_with_nat_ports(
        &t,
        1024,
        &std::env::temp_dir(),
        PORT,
        backend,
        NatSourcePorts::Range(61000, 61000),
    )
    .expect("datapath");
    let counters = || syn_retransmits_and_paws(&t.client, &t.backend).expect("counters");
    let (retrans_before, paws_before) = counters();
    let target = SocketAddrV4::new(t.router_addr(), PORT);
    for a in clients {
        connect_without_stalling(&t.client, SocketAddrV4::new(a, CLIENT_PORT), target);
    }
    let (retrans_after, paws_after) = counters();
    assert_eq!(retrans_after - retrans_before, 0, "SYN retransmissions");
    assert_eq!(paws_after - paws_before, 0, "PAWS rejects at the task");
    let no_port: u64 = dp
        .stats()
        .expect("stats")
        .into_iter()
        .filter(|(_, reason, _)| *reason == StatReason::DropNoSourcePort)
        .map(|(_, _, v)| v.packets)
        .sum();
    assert_eq!(no_port, 0, "SYNs dropped for want of a tuple");
}
