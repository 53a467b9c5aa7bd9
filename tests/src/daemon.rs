//! The daemon as a child process the test owns: killed by PID on drop, its stderr collected so
//! a test can wait for a log line and show the log when it fails.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `log` until the daemon closes it (joined by [`Daemon::wait_for_exit`]).
    reader: Option<std::thread::JoinHandle<()>>,
    /// The pin directory given when the test named none (dropped after the child is killed).
    _pins: Option<crate::pins::PinRoot>,
    /// Files the daemon was started with (routes file, state), removed after it is killed.
    _files: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts `cmd` (usually `task-router run ...`, possibly under `ip netns exec`). Unless the
    /// command names a `ROUTER_BPFFS` (in its environment or a `--set`), the daemon pins into a
    /// directory of this test's own, removed when the `Daemon` is dropped.
    pub fn spawn(mut cmd: Command) -> Result<Daemon> {
        let named = cmd.get_envs().any(|(k, _)| k == "ROUTER_BPFFS")
            || cmd
                .get_args()
                .any(|a| a.to_string_lossy().starts_with("ROUTER_BPFFS="));
        let pins = (!named).then(|| crate::pins::PinRoot::new("trpin"));
        if let Some(p) = &pins {
            cmd.env("ROUTER_BPFFS", p.path());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .spawn()
            .context("cannot start the daemon")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Ok(Daemon {
            child,
            log,
            reader: Some(reader),
            _pins: pins,
            _files: None,
        })
    }

    /// Keeps `files` (what the daemon was started with) until the daemon is gone.
    pub fn keeping(mut self, files: tempfile::TempDir) -> Daemon {
        self._files = Some(files);
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, one string.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until a log line contains `needle`; fails with the log if the daemon exits first
    /// or the time runs out.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let what = format!("daemon log line containing {needle:?}");
        let deadline = std::time::Instant::now() + timeout;
        crate::wait::until(&what, timeout + Duration::from_secs(1), || {
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the log:\n{}",
                    self.log()
                );
            }
            if let Some(line) = self
                .log
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|line| line.contains(needle)).cloned())
            {
                return Some(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            None
        })
    }

    /// Waits for the daemon to exit on its own (a start-up that must fail) and returns its exit
    /// status and its whole log (read to the end). Panics with the log if it is still running
    /// after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + timeout;
        let status = crate::wait::until("daemon exit", timeout + Duration::from_secs(1), || {
            if std::time::Instant::now() >= deadline {
                panic!(
                    "the daemon still runs after {timeout:?}; the log:\n{}",
                    self.log()
                );
            }
            self.child.try_wait().ok().flatten()
        });
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }

    /// Stops the daemon with SIGTERM and asserts that it exits 0, showing its log if not.
    pub fn terminate(self) {
        let log = self.log();
        let status = self
            .stop(nix::sys::signal::Signal::SIGTERM)
            .expect("stop the daemon");
        assert!(status.success(), "daemon exit {status}; log:\n{log}");
    }

    /// Sends `signal` and waits for the exit status.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).context("signal the daemon")?;
        let status = crate::wait::until("daemon exit", Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        });
        Ok(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
