//! The network namespace the datapath serves: recognising it, and running code in it. A
//! netlink socket answers for the namespace it was opened in, and `setns` needs CAP_SYS_ADMIN
//! even into the namespace a thread is already in (the daemon runs without it), so code enters
//! only another namespace, on a thread of its own.

use std::os::fd::AsFd;

/// Whether `ns` (a network namespace descriptor) is the calling thread's own network namespace
/// (same device and inode as `/proc/thread-self/ns/net`).
pub fn is_current_netns(ns: &impl AsFd) -> bool {
    let id = |st: nix::sys::stat::FileStat| (st.st_dev, st.st_ino);
    match (
        nix::sys::stat::fstat(ns.as_fd()),
        nix::sys::stat::stat("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => id(a) == id(b),
        _ => false,
    }
}

/// Runs `f` in network namespace `ns`: at once when that is the calling thread's, else on a
/// scoped thread that enters it first.
pub fn run_in<T: Send>(ns: &impl AsFd, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if is_current_netns(ns) {
        return Ok(f());
    }
    let fd = ns.as_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the datapath's network namespace: {e}"))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err("the thread in the datapath's namespace panicked".into()))
    })
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
        assert_eq!(run_in(&own, || 7), Ok(7));
    }
}
