//! The conntrack sweeper: a thread that sweeps the shared datapath at an interval, in the
//! network namespace the datapath serves, until dropped.

use super::{SharedDatapath, SweepReport};
use crate::error::error_chain;
use std::os::fd::AsFd;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Sweeps often enough that closing connections (10 s) go within seconds of their timeout.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `datapath` every `every`; `on_sweep` sees each report (metrics).
    pub fn spawn(
        datapath: SharedDatapath,
        every: Duration,
        mut on_sweep: impl FnMut(&SweepReport) + Send + 'static,
    ) -> std::io::Result<Sweeper> {
        let netns = match datapath.0.lock() {
            Ok(dp) => dp.netns().map(|fd| fd.try_clone()).transpose()?,
            Err(_) => None,
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("conntrack-sweeper".into())
            .spawn(move || {
                // setns needs CAP_SYS_ADMIN even into the namespace the thread is already in, and
                // the daemon runs without it (containers, the systemd unit): enter only another.
                if let Some(ns) = netns
                    && !is_current_netns(&ns)
                    && let Err(e) = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    tracing::error!(error = %e, "sweeper cannot enter the datapath's network namespace");
                    return;
                }
                loop {
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let Ok(mut dp) = datapath.0.lock() else {
                        return;
                    };
                    match dp.sweep() {
                        Ok(report) => {
                            tracing::debug!(
                                live = report.live,
                                capacity = report.capacity,
                                expired = report.expired,
                                evicted = report.evicted,
                                orphans = report.orphans,
                                took_ms = report.took.as_millis() as u64,
                                "conntrack sweep"
                            );
                            if report.evicted > 0 {
                                tracing::warn!(
                                    evicted = report.evicted,
                                    live = report.live,
                                    capacity = report.capacity,
                                    expired = report.expired,
                                    "connection table nearly full: evicted the longest-idle \
                                     connections before their timeout"
                                );
                            }
                            on_sweep(&report);
                        }
                        Err(e) => tracing::warn!(error = %error_chain(&e), "conntrack sweep failed"),
                    }
                }
            })?;
        Ok(Sweeper {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `ns` (a network namespace descriptor) is the calling thread's own network namespace
/// (same device and inode as `/proc/thread-self/ns/net`).
fn is_current_netns(ns: &impl AsFd) -> bool {
    let id = |st: nix::sys::stat::FileStat| (st.st_dev, st.st_ino);
    match (
        nix::sys::stat::fstat(ns.as_fd()),
        nix::sys::stat::stat("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => id(a) == id(b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_network_namespace_is_recognised() {
        let own = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        assert!(is_current_netns(&own));
        let not_a_namespace = std::fs::File::open("/proc/self/exe").expect("a file");
        assert!(!is_current_netns(&not_a_namespace));
    }
}
