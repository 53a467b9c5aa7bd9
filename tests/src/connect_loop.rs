//! A legitimate client connecting in a loop from a namespace (what a flood must not lock out):
//! each attempt connects with a timeout, reads the echo server's banner (the backend accepted
//! it), and closes; every attempt's start and connect time are recorded.

use crate::netns::Netns;
use crate::traffic::BANNER_LEN;
use anyhow::{Context, Result};
use std::io::Read;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One connection attempt.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Attempt {
    /// When it started, since the loop started.
    pub at: Duration,
    /// How long `connect` took; `None`: it failed or timed out, or the banner did not come.
    pub connect: Option<Duration>,
}

/// Attempts in a slice: how many completed within `limit`.
pub fn completed_within(attempts: &[Attempt], limit: Duration) -> usize {
    attempts
        .iter()
        .filter(|a| a.connect.is_some_and(|c| c <= limit))
        .count()
}

pub struct ConnectLoop {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<Vec<Attempt>>>>,
}

fn attempt(to: SocketAddrV4, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(to), timeout).ok()?;
    let connect = started.elapsed();
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut banner = [0u8; BANNER_LEN];
    stream.read_exact(&mut banner).ok()?;
    Some(connect)
}

impl ConnectLoop {
    /// Starts connecting from `ns` to `to`, one attempt after another with `pause` between
    /// them, each given `timeout`.
    pub fn start(
        ns: &Netns,
        to: SocketAddrV4,
        timeout: Duration,
        pause: Duration,
    ) -> Result<ConnectLoop> {
        let path = format!("/run/netns/{}", ns.name);
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (st, dn) = (Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::Builder::new()
            .name("connect-loop".into())
            .spawn(move || -> Result<Vec<Attempt>> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into the client namespace")?;
                let started = Instant::now();
                let mut attempts = Vec::new();
                while !st.load(Ordering::Relaxed) {
                    let at = started.elapsed();
                    attempts.push(Attempt {
                        at,
                        connect: attempt(to, timeout),
                    });
                    dn.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(pause);
                }
                Ok(attempts)
            })?;
        Ok(ConnectLoop {
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// Attempts finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops after the attempt under way and returns every attempt.
    pub fn stop(mut self) -> Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the connect loop panicked"))?,
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for ConnectLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
