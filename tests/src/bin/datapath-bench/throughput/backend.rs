//! The connections of the connection-rate and request/response phases: the backend's
//! servers and the client's one short connection.

use super::peers::Peer;
use anyhow::Result;
use router_tests::netns::Netns;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The size of one request/response message.
pub(super) const RR_MESSAGE: usize = 64;

/// Blocks until `listener` has a connection to accept, or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the duration of the call. Errors (EINTR) just return.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as libc::c_int) };
}

pub(super) fn one_connection(target: SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"c")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    // The server closes first, so the client's ports never sit in TIME_WAIT.
    let mut rest = [0u8; 1];
    let n = s.read(&mut rest)?;
    if n != 0 {
        return Err(std::io::Error::other("expected EOF"));
    }
    Ok(())
}

/// The backend's server for connection-rate and RR tests: threads blocking in accept. A
/// connection starting with `c` gets one byte and is closed; one starting with `r` is acked and
/// echoes fixed-size messages until EOF.
pub(super) fn start_server(
    ns: &Netns,
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    for peer in Peer::ALL {
        let port = peer.ports().3;
        let listener = ns.enter(move || {
            let l = TcpListener::bind((addr, port))?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })??;
        let listener = Arc::new(listener);
        for _ in 0..4 {
            let (l, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((conn, _)) => serve(conn),
                        // Wait for the next connection in poll(2), not a sleep: a sleeping
                        // server would add up to its sleep to every connection's time and
                        // quantise the connection rate. The timeout only bounds how late the
                        // thread sees `stop`.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            wait_readable(&l, Duration::from_millis(50))
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
    }
    Ok(threads)
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut first = [0u8; 1];
    if conn.read_exact(&mut first).is_err() {
        return;
    }
    if first[0] == b'c' {
        let _ = conn.write_all(b"k");
        return;
    }
    if conn.write_all(b"k").is_err() {
        return;
    }
    let mut buf = [0u8; RR_MESSAGE];
    while conn.read_exact(&mut buf).is_ok() {
        if conn.write_all(&buf).is_err() {
            return;
        }
    }
}
