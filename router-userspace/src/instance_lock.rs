//! One daemon per router instance: an exclusive `flock` on `<ROUTER_STATE_DIR>/task-router.lock`,
//! held for the daemon's whole life and taken by `task-router uninstall` too.
//!
//! Two daemons on the same instance would both adopt the pinned maps and links and fight (each
//! reconciles, writes back to ClearML and rewrites the nginx files); `uninstall` under a running
//! daemon would tear its datapath away. The lock stops the second one before it touches any of
//! that.
//!
//! Why the state directory and not the pin root (`ROUTER_BPFFS`): bpffs accepts only
//! directories and pins — creating a regular file there fails with `EPERM` (checked on this
//! kernel), so no file could record the holder's PID; and `uninstall` removes the pin root, so a
//! lock on that directory would end up on a removed inode that a new daemon no longer sees. The
//! state directory is per instance too (its `ports.json`/`routes.json` are the instance's
//! allocations), survives `uninstall`, and exists in every datapath mode (nginx-only has no
//! pins).
//!
//! The `flock` is the truth: the kernel drops it when the holder's last descriptor closes, so a
//! daemon killed with SIGKILL leaves a file that blocks nobody. The PID written into the file
//! after locking is informative only (for the error message). The descriptor is close-on-exec
//! (Rust opens every file with `O_CLOEXEC`), so children (a managed nginx, `EXTRA_BASH_COMMAND`)
//! never inherit the lock and keep it after the daemon is gone.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name inside `ROUTER_STATE_DIR`.
pub const LOCK_FILE_NAME: &str = "task-router.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("the instance lock {path} is held by {}", holder(*.pid))]
    Held { path: PathBuf, pid: Option<u32> },
    #[error("cannot {operation} the instance lock {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("PID {pid}"),
        None => "another process (its PID is not recorded in the file)".to_string(),
    }
}

impl LockError {
    /// The PID recorded by the holder, when the lock is held.
    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            LockError::Held { pid, .. } => *pid,
            LockError::Io { .. } => None,
        }
    }
}

/// The lock, held until dropped (the descriptor closes).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
    /// The PID could be written (the file is open for writing): cleared again on drop.
    recorded: bool,
}

/// The lock file of the instance whose state directory is `state_dir`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE_NAME)
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LockError {
    let path = path.to_path_buf();
    move |source| LockError::Io {
        operation,
        path,
        source,
    }
}

/// Opens `path` for writing (created if missing); a read-only directory still allows locking
/// an existing file, read-only (the PID then cannot be recorded).
fn open(path: &Path) -> Result<(File, bool), LockError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
    {
        Ok(file) => Ok((file, true)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EROFS | libc::EACCES | libc::EPERM)
            ) =>
        {
            File::open(path)
                .map(|file| (file, false))
                .map_err(|_| io("create", path)(e))
        }
        Err(e) => Err(io("create", path)(e)),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when someone else holds it.
fn try_flock(file: &File, path: &Path) -> Result<bool, LockError> {
    loop {
        // SAFETY: the descriptor is open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(io("lock", path)(e)),
        }
    }
}

/// The PID recorded in the file, if any.
fn recorded_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl InstanceLock {
    /// Takes the lock at `path` without waiting, or says who holds it. A file left by a dead
    /// holder is simply taken over.
    pub fn acquire(path: &Path) -> Result<InstanceLock, LockError> {
        // Bounded: only a file replaced under us between open and lock takes another round.
        for _ in 0..8 {
            let (mut file, writable) = open(path)?;
            if !try_flock(&file, path)? {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    pid: recorded_pid(&mut file),
                });
            }
            // The lock protects the file the path names now: if it was removed or replaced
            // between our open and our lock, we locked an orphan; try again.
            let locked = file.metadata().map_err(io("stat", path))?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat", path)(e)),
            }
            let recorded = writable && record_pid(&file, path);
            return Ok(InstanceLock {
                file,
                path: path.to_path_buf(),
                recorded,
            });
        }
        Err(io("lock", path)(std::io::Error::other(
            "the file keeps being replaced while it is locked",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes this process's PID into the locked file; a failure (disk full) is only logged: the
/// lock holds without it.
fn record_pid(file: &File, path: &Path) -> bool {
    let text = format!("{}\n", std::process::id());
    match file
        .set_len(0)
        .and_then(|()| file.write_all_at(text.as_bytes(), 0))
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(lock = %path.display(), error = %e, "cannot record the PID in the instance lock (the lock holds)");
            false
        }
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Cleared while still locked, so the file never names a process that no longer holds
        // it after a clean exit (the close below releases the lock).
        if self.recorded {
            let _ = self.file.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_another_descriptor_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path());
        let held = InstanceLock::acquire(&path).expect("first lock");
        assert_eq!(held.path(), path);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // flock locks belong to the open file description: another open in the same process
        // conflicts exactly as another process would.
        let err = InstanceLock::acquire(&path).expect_err("second lock must fail");
        assert_eq!(err.holder_pid(), Some(std::process::id()));
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("PID {}", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path());
        let held = InstanceLock::acquire(&path).expect("first lock");
        assert!(InstanceLock::acquire(&path).is_err());
        drop(held);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "PID cleared");
        let again = InstanceLock::acquire(&path).expect("lock after the holder dropped it");
        drop(again);
    }

    #[test]
    fn a_stale_file_without_a_holder_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path());
        // What a SIGKILLed daemon leaves: its PID, no lock.
        std::fs::write(&path, "4194303\n").unwrap();
        let held = InstanceLock::acquire(&path).expect("stale file taken");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(held);
    }

    #[test]
    fn a_holder_without_a_recorded_pid_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(dir.path());
        let holder = File::create(&path).unwrap();
        // SAFETY: the descriptor is open.
        assert_eq!(
            unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let err = InstanceLock::acquire(&path).expect_err("held");
        assert!(matches!(err, LockError::Held { pid: None, .. }), "{err}");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir.path().join("missing"));
        let err = InstanceLock::acquire(&path).expect_err("no directory");
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}
