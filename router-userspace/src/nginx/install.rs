//! Installing generated files into a running nginx: write a temp file, have nginx test the
//! whole configuration with it, rename it into place, reload gracefully, only when the content
//! changed. A candidate nginx rejects is never installed: the old file stays, and stays live.
//!
//! Two ways to drive nginx:
//! - managed (`NGINX_MANAGED=true`): the daemon writes nginx's main configuration too, starts
//!   nginx (which daemonises, so it outlives a daemon restart and is adopted by the next one),
//!   restarts it when it dies, reloads it with SIGHUP. The candidate is tested through a second
//!   main file that includes it in place of the live file, so the live file is only ever
//!   replaced by a tested one (rename).
//! - external (`NGINX_CONF_DIR`, `NGINX_TEST_CMD`, `NGINX_RELOAD_CMD`): nginx belongs to someone
//!   else (another container sharing the config volume) and its main file is unknown, so the
//!   candidate is renamed into place, tested with the operator's command, and the previous file
//!   renamed back if the test fails — all before any reload, so nginx never loads it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::config::NginxConfig;

use super::command::{self, COMMAND_TIMEOUT};
use super::error::{NginxError, io};
use super::files::{EMPTY_SLOT, Slot, sync_dir, write_synced};
use super::managed::{self, StreamModule};
use super::status::{NginxStatus, set_rejection, unix_now};

/// How often the supervisor checks the managed nginx.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// What `install` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The content is what nginx already runs: nothing written, no reload.
    Unchanged,
    /// Tested, renamed into place, nginx reloaded.
    Reloaded,
    /// Tested and in place; nginx already ran exactly this file (first install after a daemon
    /// restart), so no reload.
    AlreadyLive,
}

enum Mode {
    Managed(managed::Managed),
    External {
        test_cmd: String,
        reload_cmd: String,
    },
}

#[derive(Default)]
struct SlotState {
    /// Content known to be what nginx runs.
    live: Option<String>,
    /// The last rejected candidate and nginx's words about it (to log a repeat only once).
    rejected: Option<(String, String)>,
}

#[derive(Default)]
struct State {
    slots: [SlotState; 2],
    /// A file was put in place but the reload failed: the next install reloads even if the
    /// content is unchanged.
    reload_pending: bool,
    status: NginxStatus,
}

struct Shared {
    dir: PathBuf,
    mode: Mode,
    state: Mutex<State>,
    stopping: AtomicBool,
}

/// A handle on the nginx the daemon drives; clones share it (the HTTP router and the stream
/// forwarder use one nginx, and installs are serialised so each test sees a consistent whole).
#[derive(Clone)]
pub struct Nginx {
    shared: Arc<Shared>,
}

impl Nginx {
    /// Drives nginx as configured: [`Nginx::managed`] when `NGINX_MANAGED`, else
    /// [`Nginx::external`].
    pub fn from_config(cfg: &NginxConfig) -> Result<Nginx, NginxError> {
        if cfg.managed {
            Nginx::managed(cfg)
        } else {
            Nginx::external(cfg)
        }
    }

    /// Starts (or adopts, after a daemon restart) an nginx running on a main configuration
    /// generated into `NGINX_CONF_DIR`, and supervises it from a background thread.
    pub fn managed(cfg: &NginxConfig) -> Result<Nginx, NginxError> {
        let dir = cfg.conf_dir.clone();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        for slot in [Slot::Http, Slot::Stream] {
            let path = dir.join(slot.file_name());
            if !path.exists() {
                write_synced(&path, EMPTY_SLOT).map_err(io("write", &path))?;
            }
        }
        let m = managed::Managed::prepare(&cfg.binary, &dir)?;
        let nginx = Nginx {
            shared: Arc::new(Shared {
                dir,
                mode: Mode::Managed(m),
                state: Mutex::new(State::default()),
                stopping: AtomicBool::new(false),
            }),
        };
        {
            let mut st = nginx.lock();
            st.status.managed = true;
            let Mode::Managed(m) = &nginx.shared.mode else {
                unreachable!("constructed as managed")
            };
            let main_changed = match m.install_main(&nginx.shared.dir) {
                Ok(changed) => changed,
                Err(NginxError::Rejected { error, .. }) => {
                    // Files a previous daemon left that this nginx no longer accepts (a package
                    // upgrade, say): start from empty ones; the first apply fills them again.
                    tracing::warn!(%error, "the generated files left in NGINX_CONF_DIR are rejected; starting from empty ones");
                    for slot in [Slot::Http, Slot::Stream] {
                        let path = nginx.path(slot);
                        write_synced(&path, EMPTY_SLOT).map_err(io("write", &path))?;
                    }
                    m.install_main(&nginx.shared.dir)?
                }
                Err(e) => return Err(e),
            };
            match m.adopt() {
                Some(pid) => {
                    tracing::info!(pid, "adopted the running managed nginx");
                    if main_changed {
                        m.reload(pid)?;
                        st.status.reloads += 1;
                    }
                    st.status.pid = Some(pid);
                }
                None => {
                    let pid = m.start()?;
                    tracing::info!(pid, "started managed nginx");
                    st.status.pid = Some(pid);
                }
            }
            st.status.running = Some(true);
        }
        let weak = Arc::downgrade(&nginx.shared);
        std::thread::Builder::new()
            .name("nginx-supervisor".into())
            .spawn(move || supervise(weak))
            .map_err(io("spawn the supervisor thread for", &cfg.conf_dir))?;
        Ok(nginx)
    }

    /// Drives an nginx someone else runs: files go to `NGINX_CONF_DIR`, tested with
    /// `NGINX_TEST_CMD`, loaded with `NGINX_RELOAD_CMD`.
    pub fn external(cfg: &NginxConfig) -> Result<Nginx, NginxError> {
        let dir = cfg.conf_dir.clone();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        // An nginx.conf naming the files explicitly needs them before the first route.
        for slot in [Slot::Http, Slot::Stream] {
            let path = dir.join(slot.file_name());
            if !path.exists() {
                write_synced(&path, EMPTY_SLOT).map_err(io("write", &path))?;
            }
        }
        Ok(Nginx {
            shared: Arc::new(Shared {
                dir,
                mode: Mode::External {
                    test_cmd: cfg.test_cmd.clone(),
                    reload_cmd: cfg.reload_cmd.clone(),
                },
                state: Mutex::new(State::default()),
                stopping: AtomicBool::new(false),
            }),
        })
    }

    /// Where the generated file of `slot` lives.
    pub fn path(&self, slot: Slot) -> PathBuf {
        self.shared.dir.join(slot.file_name())
    }

    /// A snapshot for health and `status`.
    pub fn status(&self) -> NginxStatus {
        self.lock().status.clone()
    }

    /// Whether `stream` servers can be served. An external nginx is trusted to include
    /// [`Slot::Stream`]'s file in a `stream {}` block (see the deploy docs).
    pub fn require_stream(&self) -> Result<(), NginxError> {
        match &self.shared.mode {
            Mode::Managed(m) if m.stream == StreamModule::Missing => {
                Err(NginxError::NoStream(m.binary.display().to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Makes nginx serve `content` as `slot`'s file: at most one test and one reload, none when
    /// the content is what nginx already runs. On rejection the previous file stays in place and
    /// live, and the error is kept in [`NginxStatus::rejected`].
    pub fn install(&self, slot: Slot, content: &str) -> Result<Installed, NginxError> {
        let mut st = self.lock();
        let s = &st.slots[slot.index()];
        if !st.reload_pending && s.live.as_deref() == Some(content) {
            return Ok(Installed::Unchanged);
        }
        let live = self.path(slot);
        let on_disk_same = std::fs::read_to_string(&live).is_ok_and(|c| c == content);
        let tmp = self.shared.dir.join(format!(".{}.tmp", slot.file_name()));
        write_synced(&tmp, content).map_err(io("write", &tmp))?;

        let tested = match &self.shared.mode {
            Mode::Managed(m) => self.test_managed(m, slot, &tmp),
            Mode::External { test_cmd, .. } => self.test_external(test_cmd, &tmp, &live),
        };
        if let Err(error) = tested {
            let _ = std::fs::remove_file(&tmp);
            // The same candidate is tested again each cycle (the cause may be outside it, in
            // another file of a shared conf dir), but said loudly only once.
            let repeated = st.slots[slot.index()]
                .rejected
                .as_ref()
                .is_some_and(|(c, e)| c == content && *e == error);
            if repeated {
                tracing::debug!(slot = slot.name(), %error, "nginx still rejects the generated configuration");
            } else {
                tracing::error!(slot = slot.name(), %error, "nginx rejected the generated configuration; the previous one stays live");
            }
            st.slots[slot.index()].rejected = Some((content.to_string(), error.clone()));
            set_rejection(&mut st.status, slot, Some(&error));
            return Err(NginxError::Rejected {
                slot: slot.name(),
                error,
            });
        }
        st.slots[slot.index()].rejected = None;
        set_rejection(&mut st.status, slot, None);

        let outcome = if on_disk_same && !st.reload_pending && st.slots[slot.index()].live.is_none()
        {
            Installed::AlreadyLive
        } else {
            match self.reload_locked(&mut st) {
                Ok(()) => Installed::Reloaded,
                Err(error) => {
                    st.reload_pending = true;
                    st.slots[slot.index()].live = None;
                    st.status.last_error = Some(error.clone());
                    tracing::error!(slot = slot.name(), %error, "reloading nginx failed");
                    return Err(NginxError::Reload {
                        slot: slot.name(),
                        error,
                    });
                }
            }
        };
        st.reload_pending = false;
        st.status.last_error = None;
        st.slots[slot.index()].live = Some(content.to_string());
        if outcome == Installed::Reloaded {
            st.status.reloads += 1;
            st.status.last_reload_unix = Some(unix_now());
            tracing::info!(
                slot = slot.name(),
                "nginx reloaded with the new configuration"
            );
        }
        Ok(outcome)
    }

    /// Stops the managed nginx (graceful: established connections finish first, up to
    /// `timeout`, then it is killed) and the supervisor. Does nothing for an external nginx.
    /// Not called on a daemon restart: nginx outlives the daemon and is adopted again.
    pub fn stop(&self, graceful: bool, timeout: Duration) -> Result<(), NginxError> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut st = self.lock();
        if let Mode::Managed(m) = &self.shared.mode {
            if let Some(pid) = m.running_pid() {
                m.stop(pid, graceful, timeout)?;
            }
            st.status.running = Some(false);
            st.status.pid = None;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    fn test_managed(&self, m: &managed::Managed, slot: Slot, tmp: &Path) -> Result<(), String> {
        let (http, stream) = match slot {
            Slot::Http => (tmp.to_path_buf(), self.path(Slot::Stream)),
            Slot::Stream => (self.path(Slot::Http), tmp.to_path_buf()),
        };
        m.test_with(&self.shared.dir, &http, &stream)?;
        std::fs::rename(tmp, self.path(slot))
            .map_err(|e| format!("rename {} into place: {e}", tmp.display()))?;
        sync_dir(&self.shared.dir);
        Ok(())
    }

    fn test_external(&self, test_cmd: &str, tmp: &Path, live: &Path) -> Result<(), String> {
        let prev = tmp.with_extension("prev");
        let had_live = live.exists();
        if had_live {
            let _ = std::fs::remove_file(&prev);
            std::fs::hard_link(live, &prev)
                .or_else(|_| std::fs::copy(live, &prev).map(|_| ()))
                .map_err(|e| format!("keep a copy of {}: {e}", live.display()))?;
        }
        std::fs::rename(tmp, live)
            .map_err(|e| format!("rename {} into place: {e}", tmp.display()))?;
        sync_dir(&self.shared.dir);
        let verdict = match command::run(command::shell(test_cmd), COMMAND_TIMEOUT) {
            Ok(f) if f.status.success() => Ok(()),
            Ok(f) => Err(format!("`{test_cmd}` failed ({}): {}", f.status, f.output)),
            Err(e) => Err(crate::error::error_chain(&e)),
        };
        let restored = match (&verdict, had_live) {
            (Ok(()), true) => std::fs::remove_file(&prev).or(Ok(())),
            (Ok(()), false) => Ok(()),
            (Err(_), true) => std::fs::rename(&prev, live),
            (Err(_), false) => std::fs::remove_file(live),
        };
        sync_dir(&self.shared.dir);
        if let Err(e) = restored {
            tracing::error!(error = %e, file = %live.display(), "could not restore the previous nginx file");
        }
        verdict
    }

    fn reload_locked(&self, st: &mut State) -> Result<(), String> {
        match &self.shared.mode {
            Mode::Managed(m) => {
                let pid = match m.running_pid() {
                    Some(pid) => pid,
                    None => {
                        // Died since the supervisor last looked: starting it loads the files.
                        let pid = m.start().map_err(|e| crate::error::error_chain(&e))?;
                        st.status.restarts += 1;
                        st.status.pid = Some(pid);
                        st.status.running = Some(true);
                        return Ok(());
                    }
                };
                m.reload(pid).map_err(|e| crate::error::error_chain(&e))
            }
            Mode::External { reload_cmd, .. } => {
                match command::run(command::shell(reload_cmd), COMMAND_TIMEOUT) {
                    Ok(f) if f.status.success() => Ok(()),
                    Ok(f) => Err(format!(
                        "`{reload_cmd}` failed ({}): {}",
                        f.status, f.output
                    )),
                    Err(e) => Err(crate::error::error_chain(&e)),
                }
            }
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data (every field is set whole).
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Restarts the managed nginx when it dies, until the handle is dropped or stopped.
fn supervise(weak: Weak<Shared>) {
    let mut backoff = SUPERVISE_EVERY;
    loop {
        std::thread::sleep(backoff);
        let Some(shared) = weak.upgrade() else { return };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Mode::Managed(m) = &shared.mode else {
            return;
        };
        let mut st = lock(&shared);
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if m.running_pid().is_some() {
            st.status.running = Some(true);
            backoff = SUPERVISE_EVERY;
            continue;
        }
        st.status.running = Some(false);
        tracing::error!("managed nginx is not running; starting it again");
        match m.start() {
            Ok(pid) => {
                tracing::info!(pid, "managed nginx started again");
                st.status.restarts += 1;
                st.status.pid = Some(pid);
                st.status.running = Some(true);
                st.status.last_error = None;
                backoff = SUPERVISE_EVERY;
            }
            Err(e) => {
                let error = crate::error::error_chain(&e);
                tracing::error!(%error, "cannot start managed nginx");
                st.status.last_error = Some(error);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn external(dir: &Path, test_cmd: &str, reload_cmd: &str) -> Nginx {
        Nginx::external(&NginxConfig {
            managed: false,
            binary: "nginx".into(),
            conf_dir: dir.to_path_buf(),
            reload_cmd: reload_cmd.into(),
            test_cmd: test_cmd.into(),
        })
        .unwrap()
    }

    fn count(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
    }

    #[test]
    fn installs_tests_and_reloads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let reloads = dir.path().join("reloads");
        let n = external(
            dir.path(),
            "true",
            &format!("echo r >> {}", reloads.display()),
        );
        assert_eq!(n.install(Slot::Http, "a").unwrap(), Installed::Reloaded);
        assert_eq!(n.install(Slot::Http, "a").unwrap(), Installed::Unchanged);
        assert_eq!(n.install(Slot::Http, "b").unwrap(), Installed::Reloaded);
        assert_eq!(std::fs::read_to_string(n.path(Slot::Http)).unwrap(), "b");
        assert_eq!(count(&reloads), 2);
        assert_eq!(n.status().reloads, 2);
        // No temp or backup file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|f| !f.starts_with('.')), "{names:?}");
    }

    #[test]
    fn a_rejected_candidate_never_replaces_the_live_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(Slot::Http.file_name());
        let reloads = dir.path().join("reloads");
        // The "test" refuses any file containing BAD, as nginx refuses a broken config.
        let test = format!("! grep -q BAD {} && echo ok", live.display());
        let n = external(
            dir.path(),
            &test,
            &format!("echo r >> {}", reloads.display()),
        );
        n.install(Slot::Http, "good").unwrap();
        let e = n.install(Slot::Http, "BAD one").unwrap_err();
        assert!(matches!(e, NginxError::Rejected { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "good");
        assert_eq!(count(&reloads), 1, "no reload for a rejected candidate");
        let st = n.status();
        assert_eq!(st.rejected.len(), 1);
        assert!(!st.healthy());
        // The same candidate again is tested again and refused again.
        assert!(n.install(Slot::Http, "BAD one").is_err());
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "good");
        // A good one clears the rejection.
        n.install(Slot::Http, "good 2").unwrap();
        assert!(n.status().rejected.is_empty());
        assert_eq!(count(&reloads), 2);
    }

    #[test]
    fn first_rejected_candidate_leaves_the_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let n = external(dir.path(), "false", "true");
        let placeholder = std::fs::read_to_string(n.path(Slot::Stream)).unwrap();
        assert_eq!(placeholder, EMPTY_SLOT);
        assert!(n.install(Slot::Stream, "x").is_err());
        assert_eq!(
            std::fs::read_to_string(n.path(Slot::Stream)).unwrap(),
            placeholder
        );
    }

    #[test]
    fn a_failed_reload_is_retried_with_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("reload-ok");
        let n = external(dir.path(), "true", &format!("test -e {}", flag.display()));
        let e = n.install(Slot::Http, "a").unwrap_err();
        assert!(matches!(e, NginxError::Reload { .. }), "{e}");
        assert!(n.status().last_error.is_some());
        std::fs::write(&flag, "").unwrap();
        assert_eq!(n.install(Slot::Http, "a").unwrap(), Installed::Reloaded);
        assert!(n.status().healthy());
    }

    #[test]
    fn content_already_on_disk_is_not_reloaded_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let reloads = dir.path().join("reloads");
        std::fs::write(dir.path().join(Slot::Http.file_name()), "a").unwrap();
        let n = external(
            dir.path(),
            "true",
            &format!("echo r >> {}", reloads.display()),
        );
        assert_eq!(n.install(Slot::Http, "a").unwrap(), Installed::AlreadyLive);
        assert_eq!(count(&reloads), 0);
    }
}
