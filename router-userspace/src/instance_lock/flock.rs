//! The instance locks: an exclusive `flock` on `<ROUTER_STATE_DIR>/task-router.lock`,
//! and another on the pin directory (`ROUTER_BPFFS`) itself, both held for the daemon's whole
//! life and taken by `task-router uninstall` too.
//!
//! Two daemons on the same instance would both adopt the pinned maps and links and fight (each
//! reconciles, writes back to ClearML and rewrites the nginx files); `uninstall` under a running
//! daemon would tear its datapath away. The locks stop the second one before it touches any of
//! that.
//!
//! Why two locks. The state directory's lock ([`InstanceLock`]) guards what lives there and in
//! the nginx directory, and records the holder's PID in the file: bpffs accepts only directories
//! and pins — creating a regular file there fails with `EPERM` (checked on this kernel) — so the
//! pin directory could hold no such file. It also exists in every datapath mode (nginx-only has
//! no pins). But two daemons given different state directories and the same `ROUTER_BPFFS` would
//! still share one pinned datapath: the pin directory's lock ([`PinDirLock`]) is a `flock` on a
//! descriptor of the directory itself (bpffs supports it like any filesystem: the kernel keeps
//! `flock` state on the inode), and its holder's PID is looked up in `/proc/locks` instead.
//! `uninstall` removes the pin directory while holding that lock; a daemon that opened the
//! directory before the removal and locked it after would hold a lock on a removed inode that the
//! next one no longer sees, so a lock is only kept when the path still names the locked
//! directory (otherwise taken again), as for the file.
//!
//! The `flock` is the truth: the kernel drops it when the holder's last descriptor closes, so a
//! daemon killed with SIGKILL leaves a file that blocks nobody. The PID written into the file
//! after locking is informative only (for the error message). The descriptors are close-on-exec
//! (Rust opens every file with `O_CLOEXEC`), so children (a managed nginx, `EXTRA_BASH_COMMAND`)
//! never inherit a lock and keep it after the daemon is gone.

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
    /// Another process holds the pin directory's lock; `pid` as `/proc/locks` shows it.
    #[error("the pin directory {path} is locked by {}", dir_holder(*.pid))]
    PinDirHeld { path: PathBuf, pid: Option<u32> },
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

fn dir_holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("another task-router, PID {pid}"),
        None => "another task-router (its PID is not visible in /proc/locks here)".to_string(),
    }
}

impl LockError {
    /// The PID of the holder, when the lock is held and the PID is known.
    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            LockError::Held { pid, .. } | LockError::PinDirHeld { pid, .. } => *pid,
            LockError::Io { .. } => None,
        }
    }

    /// Whether another process holds the lock (as opposed to the lock failing).
    pub fn is_held(&self) -> bool {
        !matches!(self, LockError::Io { .. })
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

/// The exclusive lock on the pin directory (`ROUTER_BPFFS`) itself, held until dropped.
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
    path: PathBuf,
}

impl PinDirLock {
    /// The daemon's side: creates `root` (and its missing parents) if needed, then locks it
    /// without waiting, or says who holds it. The caller checks first that `root` belongs on
    /// bpffs (nothing is created elsewhere).
    pub fn acquire(root: &Path) -> Result<PinDirLock, LockError> {
        match lock_dir(root, true)? {
            Some(lock) => Ok(lock),
            // Created just above: only a removal racing us every round gets here.
            None => Err(io("lock", root)(std::io::Error::other(
                "the directory keeps being removed while it is locked",
            ))),
        }
    }

    /// `uninstall`'s side: locks `root` if it exists (`None`: nothing is pinned, nobody can
    /// hold it), or says who holds it.
    pub fn acquire_existing(root: &Path) -> Result<Option<PinDirLock>, LockError> {
        lock_dir(root, false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_dir(root: &Path, create: bool) -> Result<Option<PinDirLock>, LockError> {
    // Bounded: only a directory removed or replaced between open and lock takes another round.
    for _ in 0..8 {
        if create {
            std::fs::create_dir_all(root).map_err(io("create", root))?;
        }
        let dir = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)
        {
            Ok(dir) => dir,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", root)(e)),
        };
        let locked = dir.metadata().map_err(io("stat", root))?;
        if !try_flock(&dir, root)? {
            return Err(LockError::PinDirHeld {
                path: root.to_path_buf(),
                pid: flock_holder(locked.dev(), locked.ino()),
            });
        }
        match std::fs::metadata(root) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                return Ok(Some(PinDirLock {
                    _dir: dir,
                    path: root.to_path_buf(),
                }));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("stat", root)(e)),
        }
    }
    Err(io("lock", root)(std::io::Error::other(
        "the directory keeps being replaced while it is locked",
    )))
}

/// The PID holding an exclusive `flock` on the file or directory at `path` (see
/// [`flock_holder`]); `None` also when `path` cannot be read.
pub fn flock_holder_of(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    flock_holder(meta.dev(), meta.ino())
}

/// The PID holding an exclusive `flock` on the inode `(dev, ino)`, from `/proc/locks` (`None`
/// when it cannot be read or does not show one, e.g. a holder in another PID namespace).
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in_proc_locks(&text, libc::major(dev), libc::minor(dev), ino)
}

/// Parses `/proc/locks` lines such as `1: FLOCK  ADVISORY  WRITE 27818 00:27:1 0 EOF` (device
/// major and minor in hex); waiters (`1: -> FLOCK ...`) hold nothing and are skipped.
fn holder_in_proc_locks(text: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, "WRITE", pid, file, ..] = fields.as_slice() else {
            return None;
        };
        let mut parts = file.split(':');
        let same = u32::from_str_radix(parts.next()?, 16).ok()? == major
            && u32::from_str_radix(parts.next()?, 16).ok()? == minor
            && parts.next()?.parse::<u64>().ok()? == ino;
        let pid: u32 = pid.parse().ok()?;
        (same && pid != 0).then_some(pid)
    })
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

    #[test]
    fn a_second_lock_on_the_pin_directory_fails_naming_it_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pins");
        let held = PinDirLock::acquire(&root).expect("first lock");
        assert!(root.is_dir(), "created by the daemon's side");
        assert_eq!(held.path(), root);
        // Another open file description conflicts as another process would; the holder is
        // found in /proc/locks.
        let err = PinDirLock::acquire(&root).expect_err("second lock must fail");
        assert!(err.is_held(), "{err}");
        assert_eq!(err.holder_pid(), Some(std::process::id()));
        let text = err.to_string();
        assert!(text.contains(&root.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("PID {}", std::process::id())),
            "{text}"
        );
        let err = PinDirLock::acquire_existing(&root).expect_err("uninstall's side too");
        assert!(matches!(err, LockError::PinDirHeld { .. }), "{err}");
    }

    #[test]
    fn the_pin_directory_lock_follows_the_directory_not_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pins");
        let held = PinDirLock::acquire(&root).expect("first lock");
        // Another spelling of the same directory is the same lock.
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&root, &alias).unwrap();
        let err = PinDirLock::acquire(&alias).expect_err("same directory via a symlink");
        assert!(
            err.to_string().contains(&alias.display().to_string()),
            "{err}"
        );
        // What `uninstall` does under a lock it holds: the directory goes. A new one at the
        // same path is a new inode, which the old lock does not cover.
        std::fs::remove_dir(&root).unwrap();
        let again = PinDirLock::acquire(&root).expect("a new directory is free");
        drop(held);
        drop(again);
    }

    #[test]
    fn the_pin_directory_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a").join("pins");
        let held = PinDirLock::acquire(&root).expect("missing parents created");
        assert!(PinDirLock::acquire(&root).is_err());
        drop(held);
        let again = PinDirLock::acquire_existing(&root)
            .expect("free after the holder dropped it")
            .expect("the directory exists");
        drop(again);
    }

    #[test]
    fn uninstall_locks_nothing_and_creates_nothing_without_a_pin_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pins");
        assert!(PinDirLock::acquire_existing(&root).unwrap().is_none());
        assert!(!root.exists(), "nothing created");
    }

    #[test]
    fn a_pin_directory_that_is_a_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pins");
        std::fs::write(&root, "").unwrap();
        let err = PinDirLock::acquire_existing(&root).expect_err("not a directory");
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(!err.is_held());
        assert!(
            err.to_string().contains(&root.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let text = "\
1: POSIX  ADVISORY  WRITE 100 00:27:7 0 EOF
2: FLOCK  ADVISORY  READ 200 00:27:7 0 EOF
3: -> FLOCK  ADVISORY  WRITE 300 00:27:7 0 EOF
4: FLOCK  ADVISORY  WRITE 400 00:27:8 0 EOF
5: FLOCK  ADVISORY  WRITE 500 fe:00:7 0 EOF
6: FLOCK  ADVISORY  WRITE 600 00:27:7 0 EOF
";
        // Only an exclusive flock on that very inode of that device (minor 0x27 = 39).
        assert_eq!(holder_in_proc_locks(text, 0, 39, 7), Some(600));
        assert_eq!(holder_in_proc_locks(text, 0, 39, 8), Some(400));
        assert_eq!(holder_in_proc_locks(text, 0xfe, 0, 7), Some(500));
        assert_eq!(holder_in_proc_locks(text, 0, 39, 9), None);
        // A holder outside our PID namespace shows as 0.
        assert_eq!(
            holder_in_proc_locks("1: FLOCK  ADVISORY  WRITE 0 00:27:7 0 EOF", 0, 39, 7),
            None
        );
        assert_eq!(holder_in_proc_locks("garbage\n\n1:", 0, 39, 7), None);
    }
}
