//! Which TCP ports have a listening socket in this network namespace: how the nginx datapath
//! tells that nginx holds the routed ports (an nginx that is not running, or did not load the
//! stream file, holds none) without opening a connection through it. Read from the kernel's
//! socket tables of the calling thread's namespace (`/proc/thread-self/net/tcp` and `tcp6`).

use std::collections::BTreeSet;
use std::io;

/// `TCP_LISTEN` in the `st` column.
const LISTEN: &str = "0A";

/// The local ports of every listening TCP socket (IPv4 and IPv6) in the calling thread's
/// network namespace.
pub fn listening_ports() -> io::Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => ports.extend(parse(&text)),
            // No IPv6 in this kernel: nothing listens there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {table}: {e}"))),
        }
    }
    Ok(ports)
}

/// The listening ports of one table: `sl local_address rem_address st ...` lines, the local
/// address as `HEXADDR:HEXPORT`.
fn parse(text: &str) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != LISTEN {
            return None;
        }
        let (_, port) = local.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:7531 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:23C8 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: garbage\n";
        assert_eq!(parse(table).collect::<Vec<_>>(), [30001]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse(v6).collect::<Vec<_>>(), [8080]);
    }

    #[test]
    fn a_socket_this_test_listens_on_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(listening_ports().expect("read").contains(&port));
        drop(listener);
        assert!(!listening_ports().expect("read").contains(&port));
    }
}
