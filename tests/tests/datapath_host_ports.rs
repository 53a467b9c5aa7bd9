//! The router host's own connections to a task and clients through the datapath (issue 19,
//! section 2). The host (nginx, health checks) connects to tasks from the router's address
//! with ports from its `net.ipv4.ip_local_port_range`; a client whose own port is that same
//! port must not be given the host's tuple toward the task: neither one the task still holds
//! in TIME_WAIT (its SYN would meet PAWS there and wait a 1 s retransmission) nor one in use
//! (the task would answer the client's SYN on the host's connection, and the datapath would
//! translate the host's replies to the client).

use router_tests::churn::{
    ANSWER, CloseFirstServer, connect_from, connect_without_stalling, syn_retransmits_and_paws,
};
use router_tests::flood_setup;
use router_tests::require_root;
use router_tests::topology::Topology;
use router_tests::traffic::{BANNER_LEN, EchoServer};
use router_userspace::datapath::Datapath;
use router_userspace::host_ephemeral::{self, PortRange};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

const PORT: u16 = 20700;
const BACKEND_PORT: u16 = 8700;

/// The router namespace's ephemeral range, as the datapath read it.
fn router_range(t: &Topology, dp: &Datapath) -> PortRange {
    let read = t
        .router
        .enter(host_ephemeral::read)
        .expect("enter the router namespace")
        .expect("read the router's range");
    assert_eq!(dp.host_ephemeral(), read, "the datapath follows the host");
    read
}

/// The NAT source port the datapath gave the client connection from `client`.
fn nat_port_of(dp: &mut Datapath, client: SocketAddrV4) -> u16 {
    dp.connections()
        .expect("connections")
        .iter()
        .find(|c| c.client == client)
        .unwrap_or_else(|| panic!("no connection from {client}"))
        .nat_source
        .port()
}

#[test]
fn a_client_on_the_port_of_a_host_connection_in_time_wait_connects_at_once() {
    require_root();
    let t = Topology::new().expect("topology");
    let backend = SocketAddrV4::new(t.backend_end.addr, BACKEND_PORT);
    let _server = CloseFirstServer::start(&t.backend, *backend.ip(), BACKEND_PORT, 1)
        .expect("close-first server");
    let mut dp = flood_setup::open_datapath(&t, 1024, &std::env::temp_dir(), PORT, backend)
        .expect("datapath");
    let range = router_range(&t, &dp);

    // The router host connects to the task itself; the task answers and closes first, so it
    // holds (task, router:port) in TIME_WAIT.
    let host_port = t
        .router
        .enter(move || -> std::io::Result<u16> {
            let mut s = TcpStream::connect(backend)?;
            let port = s.local_addr()?.port();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)?;
            assert_eq!(answer, ANSWER);
            Ok(port)
        })
        .expect("enter the router namespace")
        .expect("the host's own connection");
    assert!(
        (range.first..=range.last).contains(&host_port),
        "the host picked {host_port} from {range}"
    );

    // A client whose own port is that one.
    let before = syn_retransmits_and_paws(&t.client, &t.backend).expect("counters");
    let source = SocketAddrV4::new(t.client_end.addr, host_port);
    connect_without_stalling(&t.client, source, SocketAddrV4::new(t.router_addr(), PORT));
    assert_eq!(
        syn_retransmits_and_paws(&t.client, &t.backend).expect("counters"),
        before,
        "(SYN retransmissions, PAWS rejects at the task)"
    );
    let nat = nat_port_of(&mut dp, source);
    assert!(
        !(range.first..=range.last).contains(&nat),
        "NAT source port {nat} is one the host may pick ({range})"
    );
}

#[test]
fn a_host_connection_in_progress_is_never_translated_to_a_client_on_its_port() {
    require_root();
    let t = Topology::new().expect("topology");
    let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "task")
        .expect("echo server");
    let backend = server.addr;
    let mut dp = flood_setup::open_datapath(&t, 1024, &std::env::temp_dir(), PORT, backend)
        .expect("datapath");
    let range = router_range(&t, &dp);

    // The router host's connection to the task, open through the rest of the test.
    let mut host = t
        .router
        .enter(move || -> std::io::Result<TcpStream> {
            let mut s = TcpStream::connect(backend)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut banner = [0u8; BANNER_LEN];
            s.read_exact(&mut banner)?;
            Ok(s)
        })
        .expect("enter the router namespace")
        .expect("the host's own connection");
    let host_port = host.local_addr().expect("local address").port();
    assert!((range.first..=range.last).contains(&host_port));

    // A client on that port connects through the datapath and gets its own connection.
    let source = SocketAddrV4::new(t.client_end.addr, host_port);
    let target = SocketAddrV4::new(t.router_addr(), PORT);
    let mut client = t
        .client
        .enter(move || connect_from(source, target))
        .expect("enter the client namespace")
        .expect("the client's connection");
    let mut banner = [0u8; BANNER_LEN];
    client.read_exact(&mut banner).expect("the client's banner");
    assert_eq!(String::from_utf8_lossy(&banner).trim(), "task");
    let nat = nat_port_of(&mut dp, source);
    assert_ne!(nat, host_port, "the client was given the host's tuple");

    // Both connections carry their own bytes, each to its own end.
    for (name, stream) in [("host", &mut host), ("client", &mut client)] {
        stream.write_all(name.as_bytes()).expect("write");
        let mut back = vec![0u8; name.len()];
        stream.read_exact(&mut back).expect("read the echo");
        assert_eq!(back, name.as_bytes(), "{name}'s echo");
    }
    // The task saw two connections from the router's address, on two ports.
    let peers: Vec<u16> = server.peers().iter().map(SocketAddr::port).collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers.contains(&host_port) && peers.contains(&nat),
        "{peers:?}"
    );
}
