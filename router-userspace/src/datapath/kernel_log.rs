//! Forwards aya-log records from the kernel programs into the daemon's log (via the `log`
//! bridge into `tracing`). Records are only emitted on rare paths, never per packet.

use aya::Ebpf;
use tokio::io::unix::AsyncFd;

/// Starts a task that drains the kernel log ring buffer as records arrive. Returns `None` (and
/// says why at debug level) when the object has no log map.
pub fn spawn(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::debug!(error = %e, "kernel log forwarding not started");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd for its whole life and always returns it.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the kernel log ring buffer");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
