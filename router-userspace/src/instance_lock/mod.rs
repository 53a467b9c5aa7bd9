//! One daemon per router instance: the locks `task-router run` takes for its whole life
//! ([`lock_instance`]) and `task-router uninstall` while it removes ([`lock_for_uninstall`]),
//! with what the person running the second one is told. How the locks work, and why there are
//! two, is in [`flock`].

mod flock;

pub use flock::{InstanceLock, LOCK_FILE_NAME, LockError, PinDirLock, flock_holder_of, lock_path};

use crate::config::{Config, DatapathKind};
use anyhow::{Context, Result, anyhow, bail};

/// What a second daemon, or `uninstall`, is told to do about the one running.
const STOP_THE_DAEMON: &str = "stop the daemon first (e.g. `systemctl stop task-router`)";

/// The locks of one router instance, held until dropped: the state directory's and, when pins
/// are in play, the pin directory's.
#[derive(Debug)]
pub struct InstanceLocks {
    pub state: Option<InstanceLock>,
    pub pins: Option<PinDirLock>,
}

/// Takes this router instance's locks for the daemon's lifetime:
/// `<ROUTER_STATE_DIR>/task-router.lock` and, for an eBPF datapath, the `ROUTER_BPFFS` directory
/// itself. The first thing `run` does, so a second daemon on the same state directory or the
/// same pins stops before it touches pins, maps, nginx files or ClearML.
pub fn lock_instance(cfg: &Config) -> Result<InstanceLocks> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create ROUTER_STATE_DIR={}", cfg.state_dir.display()))?;
    let path = lock_path(&cfg.state_dir);
    let state = InstanceLock::acquire(&path).map_err(|e| match e {
        LockError::Held { .. } => anyhow!(
            "another task-router daemon already runs this router instance ({e}; \
             ROUTER_STATE_DIR={}): {STOP_THE_DAEMON}, or give this one its own \
             ROUTER_STATE_DIR and ROUTER_BPFFS",
            cfg.state_dir.display()
        ),
        e => anyhow!(e),
    })?;
    tracing::info!(lock = %path.display(), pid = std::process::id(), "instance lock taken");
    let pins = match cfg.datapath.kind {
        // No pins: ROUTER_BPFFS is not this daemon's business.
        DatapathKind::Nginx => None,
        DatapathKind::Ebpf(_) => lock_pin_dir(cfg)?,
    };
    Ok(InstanceLocks {
        state: Some(state),
        pins,
    })
}

/// The daemon's lock on `ROUTER_BPFFS` (created if missing). `None` when it is not on bpffs:
/// no pins can live there to be shared, nothing is created outside bpffs, and the datapath
/// refuses the directory when it opens, with its own message and in its own order (a missing
/// interface is said first).
fn lock_pin_dir(cfg: &Config) -> Result<Option<PinDirLock>> {
    let root = &cfg.datapath.bpffs;
    if let Err(e) = crate::datapath::pins::check_bpffs(root) {
        tracing::debug!(error = %crate::error::error_chain(&e), "pin directory not locked");
        return Ok(None);
    }
    let lock = PinDirLock::acquire(root).map_err(|e| {
        if e.is_held() {
            anyhow!(
                "another task-router daemon already uses the pinned datapath in \
                 ROUTER_BPFFS={} ({e}; it may have another ROUTER_STATE_DIR): \
                 {STOP_THE_DAEMON}, or give this one its own ROUTER_BPFFS",
                root.display()
            )
        } else {
            anyhow!(e)
        }
    })?;
    tracing::info!(lock = %root.display(), "pin directory lock taken");
    Ok(Some(lock))
}

/// `uninstall`'s side of the locks, held while it removes: each is taken unless no daemon can
/// hold it — no state directory, or no lock file and none can be created (a daemon always has
/// one); no pin directory. Refuses, removing nothing, while a daemon runs on the same state
/// directory or the same `ROUTER_BPFFS` (whatever its state directory).
pub fn lock_for_uninstall(cfg: &Config) -> Result<InstanceLocks> {
    let state = if cfg.state_dir.is_dir() {
        let path = lock_path(&cfg.state_dir);
        match InstanceLock::acquire(&path) {
            Ok(lock) => Some(lock),
            Err(e @ LockError::Held { .. }) => bail!(
                "a task-router daemon is running on this router instance ({e}): \
                 {STOP_THE_DAEMON}; nothing was removed"
            ),
            Err(e) if !path.exists() => {
                tracing::warn!(error = %e, "no instance lock file and none can be created: no daemon holds it");
                None
            }
            Err(e) => return Err(anyhow!(e)),
        }
    } else {
        None
    };
    let root = &cfg.datapath.bpffs;
    let pins = PinDirLock::acquire_existing(root).map_err(|e| {
        if e.is_held() {
            anyhow!(
                "a task-router daemon is using the pinned datapath in ROUTER_BPFFS={} ({e}; \
                 it may have another ROUTER_STATE_DIR): {STOP_THE_DAEMON}; nothing was removed",
                root.display()
            )
        } else {
            anyhow!(e).context("nothing was removed")
        }
    })?;
    Ok(InstanceLocks { state, pins })
}
