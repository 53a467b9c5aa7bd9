//! Many clients churning short connections to one task port, the task closing first (as HTTP
//! servers do, so the task holds every tuple in TIME_WAIT): a server that answers each
//! connection with a few bytes and closes, and client workers in a namespace, each bound to one
//! of several source addresses, connecting in a loop. Every connection's connect time is kept
//! in a histogram: one that took a second or more waited for a SYN retransmission.

use crate::netns::Netns;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server answers before it closes.
pub const ANSWER: &[u8] = b"ok\n";
/// A connect that took this long waited for at least one SYN retransmission (the first comes
/// after 1 s).
pub const STALLED: Duration = Duration::from_millis(900);

/// A server in a namespace that answers [`ANSWER`] and closes first; stops on drop.
pub struct CloseFirstServer {
    pub addr: SocketAddrV4,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl CloseFirstServer {
    /// Listens on `ip:port` in `ns` with `acceptors` threads accepting.
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16, acceptors: usize) -> Result<Self> {
        let listener = ns
            .enter(move || TcpListener::bind((ip, port)))?
            .with_context(|| format!("bind the close-first server on {ip}:{port}"))?;
        // Accepting threads block in accept(); the drop shuts the listener down to wake them.
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..acceptors.max(1))
            .map(|_| {
                let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
                std::thread::spawn(move || serve(&listener, &stop))
            })
            .collect();
        Ok(CloseFirstServer {
            addr: SocketAddrV4::new(ip, port),
            listener,
            stop,
            threads,
        })
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // An accept error is a connection aborted before it was taken, or the drop's
        // shutdown (then `stop` is set).
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.write_all(ANSWER);
            // Dropped here: the server's FIN goes first.
        }
    }
}

impl Drop for CloseFirstServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Linux wakes every accept() blocked on a listener shut down for reading (EINVAL).
        // SAFETY: shutdown(2) on a descriptor this server owns; no memory is passed.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RD);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connect times in buckets of 1 ms up to 4 s (the last bucket holds everything slower), and
/// the connections that failed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConnectTimes {
    pub completed: u64,
    pub failed: u64,
    /// Completed connections whose connect took [`STALLED`] or more.
    pub stalled: u64,
    #[serde(skip)]
    pub buckets: Vec<u64>,
}

const BUCKETS: usize = 4001;

impl ConnectTimes {
    fn new() -> Self {
        ConnectTimes {
            buckets: vec![0; BUCKETS],
            ..ConnectTimes::default()
        }
    }

    fn record(&mut self, took: Option<Duration>) {
        let Some(took) = took else {
            self.failed += 1;
            return;
        };
        self.completed += 1;
        if took >= STALLED {
            self.stalled += 1;
        }
        let i = (took.as_millis() as usize).min(BUCKETS - 1);
        self.buckets[i] += 1;
    }

    fn merge(&mut self, other: &ConnectTimes) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.stalled += other.stalled;
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// The connect time at fraction `p` of the completed connections, in ms (bucket bound).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let want = (self.completed as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return ms as f64 + 1.0;
            }
        }
        f64::NAN
    }
}

/// Client workers in a namespace; each binds one source address (round robin over the list)
/// and connects, reads the answer to its end and closes, until stopped.
pub struct Churn {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Result<ConnectTimes>>>,
}

impl Churn {
    pub fn start(
        ns: &Netns,
        sources: &[Ipv4Addr],
        to: SocketAddrV4,
        workers: usize,
    ) -> Result<Churn> {
        if sources.is_empty() {
            bail!("churn needs at least one source address");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let path = format!("/run/netns/{}", ns.name);
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            let source = sources[i % sources.len()];
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            handles.push(std::thread::spawn(move || -> Result<ConnectTimes> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into the client namespace")?;
                let mut times = ConnectTimes::new();
                while !stop.load(Ordering::Relaxed) {
                    times.record(one_connection(source, to));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(times)
            }));
        }
        Ok(Churn {
            stop,
            done,
            workers: handles,
        })
    }

    /// Connections finished so far (completed or failed).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the workers after their connection under way; every connection's outcome.
    pub fn stop(mut self) -> Result<ConnectTimes> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = ConnectTimes::new();
        for w in self.workers.drain(..) {
            let times = w
                .join()
                .map_err(|_| anyhow::anyhow!("a churn worker panicked"))??;
            all.merge(&times);
        }
        Ok(all)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Gives up on a connect (and a read) after this long: three SYN retransmissions.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// One connection from `source` (port chosen by the kernel at connect, per destination) to
/// `to`: its connect time, `None` when it failed or the answer did not come whole.
fn one_connection(source: Ipv4Addr, to: SocketAddrV4) -> Option<Duration> {
    connect_and_read(SocketAddrV4::new(source, 0), to)
}

/// One connection from `source` (port 0: chosen at connect) to `to`, made by the calling
/// thread (in its namespace): connects, reads the answer to its end and closes. Its connect
/// time; `None` when it failed or the answer did not come whole.
pub fn connect_and_read(source: SocketAddrV4, to: SocketAddrV4) -> Option<Duration> {
    let mut stream = bound_socket(source).ok()?;
    let started = Instant::now();
    connect(&stream, to).ok()?;
    let took = started.elapsed();
    let mut answer = Vec::with_capacity(ANSWER.len());
    stream.read_to_end(&mut answer).ok()?;
    (answer == ANSWER).then_some(took)
}

/// SYN retransmissions of the clients in `client` and PAWS rejects at the task in `task` so far
/// (`nstat`'s `TcpExt.TCPSynRetrans` and `TcpExt.PAWS*`): a test compares them before and
/// after its connections.
pub fn syn_retransmits_and_paws(client: &Netns, task: &Netns) -> Result<(u64, u64)> {
    Ok(syn_retransmits_and_paws_in(
        &client.tcp_counters()?,
        &task.tcp_counters()?,
    ))
}

/// [`syn_retransmits_and_paws`] read from counters already taken ([`Netns::tcp_counters`] of
/// the client and the task namespace, or their growth over a run).
pub fn syn_retransmits_and_paws_in(
    client: &BTreeMap<String, u64>,
    task: &BTreeMap<String, u64>,
) -> (u64, u64) {
    let sum = |counters: &BTreeMap<String, u64>, prefix: &str| -> u64 {
        counters
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    (
        sum(client, "TcpExt.TCPSynRetrans"),
        sum(task, "TcpExt.PAWS"),
    )
}

/// One [`connect_and_read`] from `source` in `ns` to `to`; panics unless it completed without
/// waiting for a SYN retransmission ([`STALLED`]).
pub fn connect_without_stalling(ns: &Netns, source: SocketAddrV4, to: SocketAddrV4) {
    let took = ns
        .enter(move || connect_and_read(source, to))
        .expect("enter the client namespace")
        .unwrap_or_else(|| panic!("{source}: no connection"));
    assert!(took < STALLED, "{source}: connect took {took:?}");
}

/// A connection from `source` to `to` made by the calling thread (in its namespace), with the
/// timeouts of [`connect_and_read`]; the caller reads and writes.
pub fn connect_from(source: SocketAddrV4, to: SocketAddrV4) -> Result<TcpStream> {
    let stream = bound_socket(source)?;
    connect(&stream, to)?;
    Ok(stream)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn check(ret: libc::c_int, what: &str) -> Result<()> {
    if ret < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP socket bound to `source`; port 0 is left to `connect` (`IP_BIND_ADDRESS_NO_PORT`, as a
/// client with many addresses binds). With send and receive timeouts.
fn bound_socket(source: SocketAddrV4) -> Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor owned by the returned stream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        check(fd, "socket")?;
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        check(
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ),
            "IP_BIND_ADDRESS_NO_PORT",
        )?;
        let addr = sockaddr(source);
        check(
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            "bind",
        )?;
        // A blocking connect gives up after the send timeout.
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        Ok(stream)
    }
}

fn connect(stream: &TcpStream, to: SocketAddrV4) -> Result<()> {
    use std::os::fd::AsRawFd;
    let addr = sockaddr(to);
    // SAFETY: connect on the stream's own descriptor with a valid address.
    let ret = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(ret, "connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets_and_slow_connects_count_as_stalled() {
        let mut t = ConnectTimes::new();
        for ms in [0u64, 0, 1, 2, 1000] {
            t.record(Some(Duration::from_millis(ms)));
        }
        t.record(None);
        assert_eq!((t.completed, t.failed, t.stalled), (5, 1, 1));
        // Upper bounds of 1 ms buckets: the third of five completed took 1 ms, so ≤ 2 ms.
        assert_eq!(t.percentile_ms(0.5), 2.0);
        assert_eq!(t.percentile_ms(0.99), 1001.0);
    }
}
