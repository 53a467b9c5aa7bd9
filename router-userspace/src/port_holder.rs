//! Who holds a TCP port in this network namespace, as far as `/proc` tells: the listening
//! socket's inode (`/proc/thread-self/net/tcp`, `tcp6`), then the processes with a descriptor
//! on it (`/proc/<pid>/fd`). For start-up errors that name the port and its holder ("port 8080
//! is in use by pid 1234 (node)") instead of leaving a bind failure to be guessed at.

use std::path::Path;

/// A process with a descriptor on a listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)
    }
}

/// A port some other program listens on.
#[derive(Debug, thiserror::Error)]
#[error(
    "{variable}={port}: port {port} is already in use{}; free it or choose another port",
    held_by(holders)
)]
pub struct PortInUse {
    pub variable: &'static str,
    pub port: u16,
    pub holders: Vec<Holder>,
}

fn held_by(holders: &[Holder]) -> String {
    if holders.is_empty() {
        " (by a process /proc does not show here)".into()
    } else {
        let list: Vec<String> = holders.iter().map(Holder::to_string).collect();
        format!(" by {}", list.join(", "))
    }
}

/// Fails when a process other than those with a file open under `ours` (a managed nginx of a
/// previous run, which the daemon takes over) listens on `port`, which `variable` names.
pub fn ensure_free(port: u16, variable: &'static str, ours: &Path) -> Result<(), PortInUse> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Ok(());
    }
    let holders = holders_of(&inodes);
    let foreign: Vec<Holder> = holders
        .iter()
        .filter(|h| !has_file_under(h.pid, ours))
        .cloned()
        .collect();
    if !holders.is_empty() && foreign.is_empty() {
        return Ok(());
    }
    Err(PortInUse {
        variable,
        port,
        holders: foreign,
    })
}

/// `" (in use by pid 1234 (node))"` when something listens on `port`, else empty: for an error
/// of a bind that failed.
pub fn describe(port: u16) -> String {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return String::new();
    }
    format!(" (in use{})", held_by(&holders_of(&inodes)))
}

/// The inodes of the sockets listening on `port` (any address, IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    crate::tcp_listeners::listeners()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.port == port)
        .filter_map(|l| l.inode)
        .collect()
}

/// The processes with a descriptor on one of `inodes`.
fn holders_of(inodes: &[u64]) -> Vec<Holder> {
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    crate::procfs::pids()
        .into_iter()
        .filter(|&pid| {
            crate::procfs::holds_open(pid, |link| {
                targets.iter().any(|t| link.as_os_str() == t.as_str())
            })
        })
        .map(|pid| Holder {
            pid,
            command: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
        })
        .collect()
}

/// Whether process `pid` has a file open under `dir`.
fn has_file_under(pid: u32, dir: &Path) -> bool {
    crate::procfs::holds_open(pid, |link| link.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_this_test_holds_is_named_with_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let e = ensure_free(
            port,
            "ROUTER__WEBSERVER__SERVER_PORT",
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        let me = std::process::id();
        assert!(e.holders.iter().any(|h| h.pid == me), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "ROUTER__WEBSERVER__SERVER_PORT={port}: port {port} is already in use by pid {me} ("
            )),
            "{text}"
        );
        assert!(describe(port).contains(&format!("pid {me}")));
        // Held by a process of ours (it has a file open under the directory): free to take.
        let dir = tempfile::tempdir().expect("dir");
        let _open = std::fs::File::create(dir.path().join("error.log")).expect("file");
        assert!(ensure_free(port, "X", dir.path()).is_ok());
        drop(listener);
        assert!(ensure_free(port, "X", Path::new("/nonexistent")).is_ok());
        assert_eq!(describe(port), "");
    }
}
