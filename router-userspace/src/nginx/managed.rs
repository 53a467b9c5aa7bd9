//! The nginx the daemon runs itself (`NGINX_MANAGED=true`): its generated main configuration,
//! starting, adopting after a daemon restart, reloading, stopping.
//!
//! nginx daemonises, so it is not the daemon's child: a daemon restart leaves it serving, and
//! the next daemon adopts it through its PID file (checked against its command line, so a
//! recycled PID is never signalled).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::command::{self, COMMAND_TIMEOUT};
use super::error::NginxError;
use super::files::{Slot, write_synced};
use super::names::quote;
/// Not `*.conf`: a system nginx including the same directory's `*.conf` must not pick it up.
const MAIN_FILE: &str = "task-router-nginx.main";
const TEST_FILE: &str = ".task-router-nginx-test.main";
const PID_FILE: &str = "nginx.pid";
const ERROR_LOG: &str = "error.log";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reload may take to fork its new workers (it parses the files and binds first).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the binary can serve `stream` servers, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamModule {
    /// Compiled in.
    Static,
    /// A dynamic module to `load_module` (Debian's libnginx-mod-stream).
    Dynamic(PathBuf),
    Missing,
}

pub struct Managed {
    pub binary: PathBuf,
    pub stream: StreamModule,
    dir: PathBuf,
}

impl Managed {
    /// Checks the binary and finds its stream module.
    pub fn prepare(binary: &Path, dir: &Path) -> Result<Managed, NginxError> {
        let mut v = Command::new(binary);
        v.arg("-V");
        let out = command::run(v, Duration::from_secs(10))?;
        if !out.status.success() {
            return Err(NginxError::Start(format!(
                "`{} -V` failed: {}",
                binary.display(),
                out.output
            )));
        }
        let stream = stream_module(&out.output);
        std::fs::create_dir_all(dir.join("tmp")).map_err(|source| NginxError::Io {
            op: "create",
            path: dir.join("tmp"),
            source,
        })?;
        Ok(Managed {
            binary: binary.to_path_buf(),
            stream,
            dir: dir.to_path_buf(),
        })
    }

    fn main_path(&self) -> PathBuf {
        self.dir.join(MAIN_FILE)
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }

    /// Tests the main configuration with the slot files on disk and writes it; `false` when it
    /// was already in place.
    pub fn install_main(&self, dir: &Path) -> Result<bool, NginxError> {
        let main = render_main(
            dir,
            &dir.join(Slot::Http.file_name()),
            &dir.join(Slot::Stream.file_name()),
            &self.stream,
        )?;
        let path = self.main_path();
        // Tested even when unchanged: the slot files beside it may be stale.
        self.test_with(
            dir,
            &dir.join(Slot::Http.file_name()),
            &dir.join(Slot::Stream.file_name()),
        )
        .map_err(|e| NginxError::Rejected {
            slot: "main",
            error: e,
        })?;
        if std::fs::read_to_string(&path).is_ok_and(|c| c == main) {
            return Ok(false);
        }
        let tmp = dir.join(format!(".{MAIN_FILE}.tmp"));
        write_synced(&tmp, &main).map_err(|source| NginxError::Io {
            op: "write",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| NginxError::Io {
            op: "rename into place",
            path: path.clone(),
            source,
        })?;
        Ok(true)
    }

    /// `nginx -t` on a main configuration that includes `http` and `stream` as the slot files.
    pub fn test_with(&self, dir: &Path, http: &Path, stream: &Path) -> Result<(), String> {
        let main = render_main(dir, http, stream, &self.stream).map_err(|e| e.to_string())?;
        let test_path = dir.join(TEST_FILE);
        write_synced(&test_path, &main)
            .map_err(|e| format!("write {}: {e}", test_path.display()))?;
        let mut cmd = self.command();
        cmd.arg("-t").arg("-q").arg("-c").arg(&test_path);
        let result = match command::run(cmd, COMMAND_TIMEOUT) {
            Ok(f) if f.status.success() => Ok(()),
            Ok(f) => Err(f.output),
            Err(e) => Err(crate::error::error_chain(&e)),
        };
        let _ = std::fs::remove_file(&test_path);
        result
    }

    /// The nginx command with the prefix and start-up error log in our directory.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join(ERROR_LOG));
        cmd
    }

    /// The PID of the master running our main configuration, if there is one.
    pub fn running_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let main = self.main_path();
        let ours = cmdline.contains("nginx") && cmdline.contains(&*main.to_string_lossy());
        // A zombie has an empty command line; a live master keeps its arguments.
        ours.then_some(pid)
    }

    /// A master left running by a previous daemon.
    pub fn adopt(&self) -> Option<u32> {
        self.running_pid()
    }

    /// Starts nginx; returns the master's PID once it has written its PID file. Workers left
    /// behind by a master that died (they keep its listening sockets) are told to finish their
    /// connections and go first, so the new master can bind.
    pub fn start(&self) -> Result<u32, NginxError> {
        let orphans = self.orphans();
        for &pid in &orphans {
            tracing::warn!(
                pid,
                "asking a worker of a dead nginx master to finish and exit"
            );
            let _ = signal(pid, Signal::SIGQUIT);
        }
        let _ = std::fs::remove_file(self.pid_path());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut cmd = self.command();
            cmd.arg("-c").arg(self.main_path());
            let out = command::run(cmd, START_TIMEOUT)?;
            if out.status.success() {
                break;
            }
            // Orphans close their listening sockets at once on SIGQUIT, but not instantly.
            let busy = out.output.contains("Address already in use");
            if !(busy && !orphans.is_empty() && Instant::now() < deadline) {
                return Err(NginxError::Start(format!(
                    "`{}` exited {}: {}",
                    self.binary.display(),
                    out.status,
                    out.output
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            if let Some(pid) = self.running_pid() {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(NginxError::Start(format!(
                    "nginx started but wrote no PID file to {} within {START_TIMEOUT:?}; see {}",
                    self.pid_path().display(),
                    self.dir.join(ERROR_LOG).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// nginx processes of this directory whose master is gone: they hold our error log open.
    /// Called only when no master runs and no test runs (the install lock is held).
    fn orphans(&self) -> Vec<u32> {
        let log = self.dir.join(ERROR_LOG);
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let is_nginx = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("nginx:"));
            if !is_nginx || pid == std::process::id() {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            if fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == log))
            {
                found.push(pid);
            }
        }
        found
    }

    /// Graceful reload: new workers with the new files; old ones finish their connections.
    ///
    /// Returns once the master runs a worker forked after the signal. nginx applies a reload
    /// asynchronously; it opens the new configuration's listening sockets before it forks the
    /// new workers, so from then on a client of a new route is accepted. Without this wait an
    /// endpoint could be written back before its port listens (the SDK's first request refused),
    /// and a reload the master gave up on (a port it could not bind) would pass for done.
    pub fn reload(&self, pid: u32) -> Result<(), NginxError> {
        let before = children_of(pid);
        signal(pid, Signal::SIGHUP)?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            if children_of(pid).iter().any(|c| !before.contains(c)) {
                return Ok(());
            }
            if self.running_pid() != Some(pid) {
                return Err(NginxError::ReloadNotTaken {
                    pid,
                    reason: "the master exited while reloading".into(),
                });
            }
            if Instant::now() >= deadline {
                return Err(NginxError::ReloadNotTaken {
                    pid,
                    reason: format!(
                        "no new worker within {RELOAD_TIMEOUT:?} (it keeps the previous \
                         configuration); see {}",
                        self.dir.join(ERROR_LOG).display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the master: SIGQUIT (graceful) or SIGTERM, then SIGKILL after `timeout`.
    pub fn stop(&self, pid: u32, graceful: bool, timeout: Duration) -> Result<(), NginxError> {
        signal(
            pid,
            if graceful {
                Signal::SIGQUIT
            } else {
                Signal::SIGTERM
            },
        )?;
        let deadline = Instant::now() + timeout;
        while self.running_pid() == Some(pid) {
            if Instant::now() >= deadline {
                signal(pid, Signal::SIGKILL)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// The processes whose parent is `pid` (nginx workers and cache helpers of a master).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|stat| parent_in_stat(&stat) == Some(pid))
        })
        .collect()
}

/// The parent PID from a `/proc/<pid>/stat` line: the second field after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `task-router uninstall` for a managed nginx in `dir`: stops the master running our main
/// file (gracefully, killed after `timeout`) and removes every file the daemon and that nginx
/// wrote there. Returns what it did, one line each; nothing when nothing was there.
pub fn uninstall(binary: &Path, dir: &Path, timeout: Duration) -> Result<Vec<String>, NginxError> {
    let mut done = Vec::new();
    let m = Managed {
        binary: binary.to_path_buf(),
        stream: StreamModule::Missing,
        dir: dir.to_path_buf(),
    };
    if let Some(pid) = m.running_pid() {
        m.stop(pid, true, timeout)?;
        done.push(format!("stopped the managed nginx (pid {pid})"));
    }
    for name in [MAIN_FILE, TEST_FILE, PID_FILE, ERROR_LOG] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| NginxError::Io {
                op: "remove",
                path: path.clone(),
                source,
            })?;
            done.push(format!("removed {}", path.display()));
        }
    }
    // Its temp files, and the cache of auth answers the HTTP configuration declares.
    for sub in ["tmp", super::http::AUTH_CACHE_DIR] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| NginxError::Io {
                op: "remove",
                path: path.clone(),
                source,
            })?;
            done.push(format!("removed {}", path.display()));
        }
    }
    Ok(done)
}

fn signal(pid: u32, sig: Signal) -> Result<(), NginxError> {
    let raw = i32::try_from(pid).map_err(|_| NginxError::Start(format!("bad PID {pid}")))?;
    kill(Pid::from_raw(raw), sig).map_err(|e| NginxError::Io {
        op: "signal nginx master",
        path: PathBuf::from(format!("/proc/{pid}")),
        source: std::io::Error::from(e),
    })
}

/// From `nginx -V`: how the stream module is built.
fn stream_module(version: &str) -> StreamModule {
    let args: Vec<&str> = version.split_whitespace().collect();
    if args.contains(&"--with-stream") {
        return StreamModule::Static;
    }
    if args.contains(&"--with-stream=dynamic") {
        let modules = args
            .iter()
            .find_map(|a| a.strip_prefix("--modules-path="))
            .unwrap_or("/usr/lib/nginx/modules");
        let so = Path::new(modules).join("ngx_stream_module.so");
        if so.exists() {
            return StreamModule::Dynamic(so);
        }
    }
    StreamModule::Missing
}

/// The managed nginx's main configuration: everything under `dir`, logs to `dir/error.log`,
/// the slot files included in their contexts.
pub fn render_main(
    dir: &Path,
    http: &Path,
    stream: &Path,
    module: &StreamModule,
) -> Result<String, super::names::NameError> {
    let p = |what: &'static str, path: &Path| quote(what, &path.to_string_lossy());
    let tmp = dir.join("tmp");
    let mut t = String::from("# Generated by task-router (NGINX_MANAGED=true). Do not edit.\n");
    if let StreamModule::Dynamic(so) = module {
        t.push_str(&format!("load_module {};\n", p("stream module", so)?));
    }
    t.push_str(&format!(
        "worker_processes auto;\nworker_rlimit_nofile 65536;\npcre_jit on;\npid {};\nerror_log {} warn;\n\nevents {{\n    worker_connections 16384;\n}}\n\n",
        p("NGINX_CONF_DIR", &dir.join(PID_FILE))?,
        p("NGINX_CONF_DIR", &dir.join(ERROR_LOG))?,
    ));
    t.push_str("http {\n    access_log off;\n    server_tokens off;\n    default_type application/octet-stream;\n");
    for (directive, sub) in [
        ("client_body_temp_path", "client_body"),
        ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"),
        ("uwsgi_temp_path", "uwsgi"),
        ("scgi_temp_path", "scgi"),
    ] {
        t.push_str(&format!(
            "    {directive} {};\n",
            p("NGINX_CONF_DIR", &tmp.join(sub))?
        ));
    }
    t.push_str(&format!(
        "    include {};\n}}\n",
        p("NGINX_CONF_DIR", http)?
    ));
    if *module != StreamModule::Missing {
        t.push_str(&format!(
            "\nstream {{\n    include {};\n}}\n",
            p("NGINX_CONF_DIR", stream)?
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_is_read_after_the_command_name() {
        assert_eq!(
            parent_in_stat("4242 (nginx: a (b) c) S 17 4242 4242 0 -1"),
            Some(17)
        );
        assert_eq!(parent_in_stat("garbage"), None);
        let me = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        assert_eq!(
            parent_in_stat(&me),
            Some(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn finds_the_stream_module() {
        let debian = "nginx version: nginx/1.22.1\nconfigure arguments: --prefix=/usr/share/nginx --modules-path=/nonexistent --with-stream=dynamic --with-http_ssl_module";
        assert_eq!(stream_module(debian), StreamModule::Missing);
        assert_eq!(
            stream_module("configure arguments: --with-stream --with-x"),
            StreamModule::Static
        );
        assert_eq!(
            stream_module("configure arguments: --with-http_ssl_module"),
            StreamModule::Missing
        );
    }

    #[test]
    fn main_config_includes_the_slots_and_keeps_state_in_dir() {
        let dir = Path::new("/var/lib/tr nginx");
        let t = render_main(
            dir,
            &dir.join("h.conf"),
            &dir.join("s.inc"),
            &StreamModule::Dynamic("/usr/lib/nginx/modules/ngx_stream_module.so".into()),
        )
        .unwrap();
        assert!(t.starts_with("# Generated"));
        assert!(t.contains("load_module \"/usr/lib/nginx/modules/ngx_stream_module.so\";"));
        assert!(t.contains("pid \"/var/lib/tr nginx/nginx.pid\";"));
        assert!(t.contains("include \"/var/lib/tr nginx/h.conf\";"));
        assert!(t.contains("stream {\n    include \"/var/lib/tr nginx/s.inc\";"));
        let t = render_main(dir, &dir.join("h"), &dir.join("s"), &StreamModule::Missing).unwrap();
        assert!(!t.contains("stream {"));
        assert!(
            render_main(
                Path::new("/x;y"),
                Path::new("/h"),
                Path::new("/s"),
                &StreamModule::Static
            )
            .is_err()
        );
    }
}
