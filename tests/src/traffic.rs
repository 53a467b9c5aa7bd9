//! Real TCP traffic through the router: an echo server that names itself, and a client that
//! sends random data and checks every byte that comes back.

use crate::netns::Netns;
use anyhow::{Context, Result, bail};
use rand::RngCore;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of the banner a server sends first: its name, padded.
pub const BANNER_LEN: usize = 16;

/// An echo server in a namespace: sends a 16-byte banner, then echoes until EOF. Stops (and
/// closes its socket) on drop.
pub struct EchoServer {
    pub addr: SocketAddrV4,
    accepted: Arc<AtomicU64>,
    /// The address each accepted connection came from, in order.
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16, name: &str) -> Result<EchoServer> {
        let listener = ns
            .enter(move || TcpListener::bind((ip, port)))?
            .with_context(|| format!("bind echo server {ip}:{port}"))?;
        listener.set_nonblocking(true)?;
        let addr = match listener.local_addr()? {
            SocketAddr::V4(a) => a,
            other => bail!("unexpected listener address {other}"),
        };
        let mut banner = [b' '; BANNER_LEN];
        banner[..name.len().min(BANNER_LEN)]
            .copy_from_slice(&name.as_bytes()[..name.len().min(BANNER_LEN)]);
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (acc, st, seen) = (Arc::clone(&accepted), Arc::clone(&stop), Arc::clone(&peers));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        if let Ok(mut seen) = seen.lock() {
                            seen.push(peer);
                        }
                        acc.fetch_add(1, Ordering::Relaxed);
                        std::thread::spawn(move || echo(conn, banner));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(EchoServer {
            addr,
            accepted,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Where the connections accepted so far came from, as the server saw them.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection from `from` (bound with `SO_REUSEADDR`) to `to`; the connect gives up
/// after 5 s (the send timeout bounds a blocking connect).
fn connect_bound(from: SocketAddrV4, to: SocketAddrV4) -> Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket")?;
    setsockopt(&fd, ReuseAddr, &true).context("SO_REUSEADDR")?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(from)).with_context(|| format!("bind {from}"))?;
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    connect(stream.as_raw_fd(), &SockaddrIn::from(to)).context("connect")?;
    Ok(stream)
}

fn echo(mut conn: TcpStream, banner: [u8; BANNER_LEN]) {
    let _ = conn.set_nonblocking(false);
    if conn.write_all(&banner).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A connection from a namespace to `to` (through the router), banner read.
pub struct Client {
    pub stream: TcpStream,
    pub banner: String,
}

impl Client {
    pub fn connect(ns: &Netns, to: SocketAddrV4) -> Result<Client> {
        let stream = ns
            .enter(move || TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(5)))?
            .with_context(|| format!("connect to {to} through the router"))?;
        Client::greeted(stream)
    }

    /// As [`Client::connect`], from source address and port `from` (a client reusing its port).
    pub fn connect_from(ns: &Netns, from: SocketAddrV4, to: SocketAddrV4) -> Result<Client> {
        let stream = ns
            .enter(move || connect_bound(from, to))?
            .with_context(|| format!("connect from {from} to {to} through the router"))?;
        Client::greeted(stream)
    }

    /// Ends the connection with a RST (`SO_LINGER` 0): no TIME_WAIT here, so the source port
    /// is free for the next connection at once.
    pub fn abort(self) -> Result<()> {
        use nix::sys::socket::{setsockopt, sockopt::Linger};
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(&self.stream, Linger, &linger).context("SO_LINGER 0")?;
        drop(self.stream);
        Ok(())
    }

    /// The client of `stream`, its timeouts set and the server's banner read.
    fn greeted(mut stream: TcpStream) -> Result<Client> {
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut banner = [0u8; BANNER_LEN];
        stream
            .read_exact(&mut banner)
            .context("read the server's banner")?;
        Ok(Client {
            stream,
            banner: String::from_utf8_lossy(&banner).trim().to_string(),
        })
    }

    /// Sends `len` random bytes in `chunk`-sized writes (calling `between` after each) and
    /// checks the echo; returns the bytes verified.
    pub fn echo_random(
        &mut self,
        len: usize,
        chunk: usize,
        mut between: impl FnMut(usize),
    ) -> Result<usize> {
        let mut data = vec![0u8; len];
        rand::rng().fill_bytes(&mut data);
        let mut writer = self.stream.try_clone()?;
        let to_send = data.clone();
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            for (i, c) in to_send.chunks(chunk.max(1)).enumerate() {
                writer.write_all(c)?;
                let _ = tx.send(i);
            }
            Ok(())
        });
        let mut back = vec![0u8; len];
        let mut got = 0;
        while got < len {
            while let Ok(i) = rx.try_recv() {
                between(i);
            }
            // A blocking read with a timeout (SO_RCVTIMEO) is not restarted after a signal or
            // a freeze of the process: it fails with EINTR (seen once in CI), which is no
            // fault of the path under test.
            let n = match self.stream.read(&mut back[got..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => {
                    other.with_context(|| format!("read the echo after {got} of {len} bytes"))?
                }
            };
            if n == 0 {
                bail!("connection closed after {got} of {len} echoed bytes");
            }
            got += n;
        }
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))?
            .context("send")?;
        while let Ok(i) = rx.try_recv() {
            between(i);
        }
        if back != data {
            let at = back
                .iter()
                .zip(&data)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bail!("echoed data differs from what was sent, first at byte {at}");
        }
        Ok(len)
    }

    /// Half-closes, waits for the server's EOF.
    pub fn finish(mut self) -> Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            bail!("{} unexpected bytes before EOF", rest.len());
        }
        Ok(())
    }
}
