//! A backend vanishing mid-connection, with the real daemon in namespaces: route A to a server
//! in `backend`, route B to an echo server in `backend2`, one open connection through each.
//!
//! Expected:
//! - the server of route A dies abruptly (its socket reset, as a killed process with unread data
//!   or an aborting one does): the client gets a reset, not a hang; the connection's conntrack
//!   entry goes (`task_router_route_active_connections` of A drops to 0 within the closing
//!   timeout plus a sweep) while route B's connection stays counted and keeps echoing;
//! - the backend host of route A goes away without a word (its link down): the client's data
//!   gets no answer and its read times out; when the client gives up (reset), the entry goes the
//!   same way; route B is untouched throughout, and a new connection through A, once the
//!   backend is back, is served;
//! - route C's backend is a container behind a bridge on the router host, and its network
//!   namespace dies mid-connection (its veth pair is destroyed, as the kernel does when the last
//!   process of a container's namespace exits): the same as a silent host — a read timeout, B
//!   untouched, the entry gone after the client's reset — and the daemon keeps running with a
//!   bridge that lost a port.

use router_tests::metrics::sample;
use router_tests::netns::Netns;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::Topology;
use router_tests::traffic::{BANNER_LEN, Client, EchoServer};
use router_tests::{require_root, wait};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

const PORT_A: u16 = 20300;
const PORT_B: u16 = 20301;
const PORT_C: u16 = 20302;
const BACKEND_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9113;
const WAIT: Duration = Duration::from_secs(40);

fn scrape(t: &Topology) -> String {
    router_tests::metrics::scrape(&t.router, ADMIN_PORT)
}

fn active(t: &Topology, port: u16, upstream: SocketAddrV4) -> f64 {
    let series =
        format!("task_router_route_active_connections{{port=\"{port}\",upstream=\"{upstream}\"}}");
    sample(&scrape(t), &series).unwrap_or(0.0)
}

/// A server for one connection in `ns`: sends a banner, echoes, and on a message resets the
/// connection (linger 0, then close), as a process dying abruptly would.
fn abortable_server(ns: &Netns, ip: Ipv4Addr, port: u16) -> mpsc::Sender<()> {
    let listener = ns
        .enter(move || TcpListener::bind((ip, port)))
        .expect("enter")
        .expect("bind the backend");
    let (abort_tx, abort_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut banner = [b' '; BANNER_LEN];
        banner[..5].copy_from_slice(b"dying");
        if conn.write_all(&banner).is_err() {
            return;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = [0u8; 4096];
        loop {
            if abort_rx.try_recv().is_ok() {
                let linger = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ =
                    nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &linger);
                drop(conn);
                return;
            }
            match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    });
    abort_tx
}

/// The (only) port of `bridge` in `ns`: the router end of the container's veth pair.
fn bridge_port(ns: &Netns, bridge: &str) -> String {
    let out = ns
        .ip(&["-o", "link", "show", "master", bridge])
        .expect("list the bridge's ports");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().expect("the bridge has a port");
    // `5: tvp123@if4: <...> ...`
    line.split(':')
        .nth(1)
        .and_then(|name| name.trim().split('@').next())
        .expect("a port name")
        .to_string()
}

/// Closes `stream` with a reset (linger 0), as a client giving up does.
fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
    drop(stream);
}

/// Sends `message` on `stream` and expects no answer from `peer` within 3 s (a read timeout,
/// neither data, nor an end, nor a reset).
fn expect_no_answer(stream: &mut TcpStream, message: &[u8], peer: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    stream.write_all(message).expect("send into the void");
    let mut buf = [0u8; 16];
    let err = match stream.read(&mut buf) {
        Ok(n) => panic!("no answer from {peer} expected, got {n} bytes"),
        Err(e) => e,
    };
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
}

#[test]
fn a_backend_vanishing_mid_connection_resets_or_times_out_and_frees_its_entry() {
    require_root();
    let mut t = Topology::new().expect("topology");
    let bridged = t.add_bridged_backend().expect("bridged backend");
    let bridge = bridged.bridge.clone();
    let upstream_c = SocketAddrV4::new(bridged.addr, BACKEND_PORT);
    let _echo_c =
        EchoServer::start(&bridged.ns, bridged.addr, BACKEND_PORT, "C").expect("echo server C");
    let upstream_a = SocketAddrV4::new(t.backend_end.addr, BACKEND_PORT);
    let upstream_b = SocketAddrV4::new(t.backend2_end.addr, BACKEND_PORT);
    let _echo_b = EchoServer::start(&t.backend2, t.backend2_end.addr, BACKEND_PORT, "B")
        .expect("echo server B");
    let daemon = DaemonSetup::tc_on(&t)
        .interface_as(&t.router_backend2.dev, "tc")
        .interface_as(&bridge, "tc")
        .tcp_route(PORT_A, upstream_a)
        .tcp_route(PORT_B, upstream_b)
        .tcp_route(PORT_C, upstream_c)
        .admin_port(ADMIN_PORT)
        .tcp_ports(PORT_A, PORT_C)
        .no_auth()
        .start(WAIT);
    let to_a = SocketAddrV4::new(t.router_addr(), PORT_A);
    let to_b = SocketAddrV4::new(t.router_addr(), PORT_B);

    // Route B's connection, kept open through everything below.
    let mut b = Client::connect(&t.client, to_b).expect("connect B");
    assert_eq!(b.banner, "B");
    b.echo_random(32 << 10, 8 << 10, |_| {}).expect("echo B");

    // 1. The server of A dies abruptly mid-connection.
    let abort = abortable_server(&t.backend, t.backend_end.addr, BACKEND_PORT);
    let mut a = Client::connect(&t.client, to_a).expect("connect A");
    assert_eq!(a.banner, "dying");
    a.echo_random(16 << 10, 4 << 10, |_| {}).expect("echo A");
    wait::until("A's connection counted", WAIT, || {
        (active(&t, PORT_A, upstream_a) >= 1.0).then_some(())
    });
    abort.send(()).expect("abort the backend");
    let mut buf = [0u8; 16];
    let err = a
        .stream
        .read(&mut buf)
        .expect_err("the client must see the reset, not data or EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    wait::until("A's entry to go after the reset", WAIT, || {
        (active(&t, PORT_A, upstream_a) == 0.0).then_some(())
    });
    assert_eq!(
        active(&t, PORT_B, upstream_b),
        1.0,
        "B's connection is untouched"
    );
    b.echo_random(32 << 10, 8 << 10, |_| {})
        .expect("B echoes after A's backend died");

    // 2. A's backend host goes away silently (its link down): no reset, no answer.
    let _echo_a = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "A")
        .expect("echo server A");
    let mut a = Client::connect(&t.client, to_a).expect("connect A again");
    a.echo_random(16 << 10, 4 << 10, |_| {}).expect("echo A");
    wait::until("A's second connection counted", WAIT, || {
        (active(&t, PORT_A, upstream_a) >= 1.0).then_some(())
    });
    t.backend
        .ip(&["link", "set", "dev", &t.backend_end.dev, "down"])
        .expect("A's backend link down");
    expect_no_answer(&mut a.stream, b"anyone there?", "a vanished backend");
    // New connections through B keep being forwarded meanwhile.
    let mut b2 = Client::connect(&t.client, to_b).expect("a new connection through B");
    b2.echo_random(8 << 10, 4 << 10, |_| {}).expect("echo B2");
    b2.finish().expect("close B2");
    // The client gives up: its reset reaches the router, the entry goes.
    reset(a.stream);
    wait::until("A's entry to go after the client's reset", WAIT, || {
        (active(&t, PORT_A, upstream_a) == 0.0).then_some(())
    });
    // Back: A is served again.
    t.backend
        .ip(&["link", "set", "dev", &t.backend_end.dev, "up"])
        .expect("A's backend link up");
    let a = wait::until("A served again", WAIT, || {
        Client::connect(&t.client, to_a).ok()
    });
    assert_eq!(a.banner, "A");
    a.finish().expect("close A");

    // 3. The container behind the bridge dies: its veth pair goes with its namespace.
    let to_c = SocketAddrV4::new(t.router_addr(), PORT_C);
    let mut c = Client::connect(&t.client, to_c).expect("connect C");
    assert_eq!(c.banner, "C");
    c.echo_random(16 << 10, 4 << 10, |_| {}).expect("echo C");
    wait::until("C's connection counted", WAIT, || {
        (active(&t, PORT_C, upstream_c) >= 1.0).then_some(())
    });
    let port_dev = bridge_port(&t.router, &bridge);
    t.router
        .ip(&["link", "del", "dev", &port_dev])
        .expect("destroy the container's veth pair");
    expect_no_answer(&mut c.stream, b"still there?", "a dead container");
    b.echo_random(32 << 10, 8 << 10, |_| {})
        .expect("B echoes after the container died");
    reset(c.stream);
    wait::until("C's entry to go after the client's reset", WAIT, || {
        (active(&t, PORT_C, upstream_c) == 0.0).then_some(())
    });

    b.echo_random(32 << 10, 8 << 10, |_| {})
        .expect("B's connection outlived everything");
    b.finish().expect("close B");
    daemon.terminate();
}
