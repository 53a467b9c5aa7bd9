//! The listening TCP sockets of this network namespace, from the kernel's socket tables of the
//! calling thread's namespace (`/proc/thread-self/net/tcp` and `tcp6`): which ports something
//! listens on (the nginx datapath's readiness) and the sockets' inodes (who holds a port).

use std::collections::BTreeSet;
use std::io;

/// `TCP_LISTEN` in the `st` column.
const LISTEN: &str = "0A";

/// One listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// The socket's inode (`None` where the table's line lacks the column).
    pub inode: Option<u64>,
}

/// Every listening TCP socket (IPv4 and IPv6) in the calling thread's network namespace.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => out.extend(parse(&text)),
            // No IPv6 in this kernel: nothing listens there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table.ends_with('6') => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {table}: {e}"))),
        }
    }
    Ok(out)
}

/// The local ports of every listening TCP socket in the calling thread's network namespace.
pub fn listening_ports() -> io::Result<BTreeSet<u16>> {
    Ok(listeners()?.into_iter().map(|l| l.port).collect())
}

/// The listening sockets of one table: `sl local_address rem_address st tx:rx tr:when retrnsmt
/// uid timeout inode ...` lines, the local address as `HEXADDR:HEXPORT`.
fn parse(text: &str) -> impl Iterator<Item = Listener> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if *fields.get(3)? != LISTEN {
            return None;
        }
        let (_, port) = fields.get(1)?.rsplit_once(':')?;
        Some(Listener {
            port: u16::from_str_radix(port, 16).ok()?,
            inode: fields.get(9).and_then(|i| i.parse().ok()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(text: &str) -> Vec<u16> {
        parse(text).map(|l| l.port).collect()
    }

    fn inodes_of(text: &str, port: u16) -> Vec<u64> {
        parse(text)
            .filter(|l| l.port == port)
            .filter_map(|l| l.inode)
            .collect()
    }

    #[test]
    fn only_listening_sockets_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:7531 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:23C8 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: garbage\n";
        assert_eq!(ports(table), [30001]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(ports(v6), [8080]);
    }

    #[test]
    fn the_inodes_of_a_ports_listening_sockets_are_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:1F92 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0 20 4 30 10 -1\n\
   2: garbage\n";
        assert_eq!(inodes_of(table, 8082), [4242]);
        assert!(inodes_of(table, 8083).is_empty());
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
