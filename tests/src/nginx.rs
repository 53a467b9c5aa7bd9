//! nginx for the HTTP-route tests: the Debian binary, never the system instance. Each test runs
//! inside its own network namespace ([`in_netns`]), so nginx listens on a fixed port there
//! without colliding with anything on the host, and keeps every file in a temp prefix. Whatever
//! nginx a test started is stopped by PID when its guard drops, also when the test fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use router_userspace::config::NginxConfig;

use crate::netns::Netns;

/// The port nginx serves HTTP routes on inside a test namespace.
pub const HTTP_PORT: u16 = 8080;

/// Runs `f` on a thread inside a fresh network namespace (loopback up) and returns its result;
/// servers, nginx and clients started by `f` live in that namespace. A panic in `f` fails the
/// calling test after the namespace and everything `f` owned are cleaned up.
pub fn in_netns<T: Send + 'static>(prefix: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    crate::require_root();
    let ns = Netns::new(prefix).expect("create the test namespace");
    match ns.enter(f) {
        Ok(v) => v,
        Err(e) => panic!("the test body failed inside {}: {e:#}", ns.name),
    }
}

/// A temp directory for a managed nginx (`NGINX_MANAGED=true`); stops the nginx running from it
/// on drop.
pub struct ManagedDir {
    dir: tempfile::TempDir,
}

impl ManagedDir {
    pub fn new() -> Result<ManagedDir> {
        Ok(ManagedDir {
            dir: tempfile::Builder::new()
                .prefix("task-router-nginx-")
                .tempdir()
                .context("temp dir for nginx")?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> NginxConfig {
        NginxConfig {
            managed: true,
            binary: PathBuf::from("nginx"),
            conf_dir: self.dir.path().to_path_buf(),
            reload_cmd: String::new(),
            test_cmd: String::new(),
        }
    }

    /// The managed master's PID, from its PID file.
    pub fn pid(&self) -> Option<u32> {
        master_pid(&self.dir.path().join("nginx.pid"), self.dir.path())
    }
}

impl Drop for ManagedDir {
    fn drop(&mut self) {
        stop_master(&self.dir.path().join("nginx.pid"), self.dir.path());
    }
}

/// An nginx the test starts itself from a hand-written main configuration that includes
/// `conf.d/*.conf` in `http` and `conf.d/*.inc` in `stream`, like a packaged nginx in its own
/// container sharing a config volume: the "existing nginx" the daemon drives through
/// `NGINX_CONF_DIR`, `NGINX_TEST_CMD` and `NGINX_RELOAD_CMD`.
pub struct ExternalNginx {
    dir: tempfile::TempDir,
    main: PathBuf,
}

impl ExternalNginx {
    /// Starts it; `conf.d` may be filled first through `prepare`.
    pub fn start(prepare: impl FnOnce(&Path) -> Result<()>) -> Result<ExternalNginx> {
        let dir = tempfile::Builder::new()
            .prefix("task-router-ext-nginx-")
            .tempdir()
            .context("temp dir for nginx")?;
        let root = dir.path();
        let conf_d = root.join("conf.d");
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(&conf_d)?;
        let main = root.join("nginx.conf");
        let r = root.display();
        std::fs::write(
            &main,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 worker_processes 2;\npid {r}/nginx.pid;\nerror_log {r}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {r}/tmp/body;\n  \
                 proxy_temp_path {r}/tmp/proxy;\n  fastcgi_temp_path {r}/tmp/fcgi;\n  \
                 uwsgi_temp_path {r}/tmp/uwsgi;\n  scgi_temp_path {r}/tmp/scgi;\n  \
                 include {r}/conf.d/*.conf;\n}}\n\
                 stream {{\n  include {r}/conf.d/*.inc;\n}}\n"
            ),
        )?;
        prepare(&conf_d)?;
        let nginx = ExternalNginx { dir, main };
        let out = std::process::Command::new("nginx")
            .args(nginx.args())
            .output()
            .context("start nginx")?;
        if !out.status.success() {
            bail!(
                "nginx did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while nginx.pid().is_none() {
            if Instant::now() > deadline {
                bail!("nginx wrote no PID file");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(nginx)
    }

    fn args(&self) -> Vec<String> {
        let root = self.dir.path().display().to_string();
        vec![
            "-p".into(),
            root.clone(),
            "-e".into(),
            format!("{root}/error.log"),
            "-c".into(),
            self.main.display().to_string(),
        ]
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("conf.d")
    }

    /// The daemon's view of this nginx: an existing one, driven by commands.
    pub fn config(&self) -> NginxConfig {
        let args = self.args().join(" ");
        NginxConfig {
            managed: false,
            binary: PathBuf::from("nginx"),
            conf_dir: self.conf_dir(),
            reload_cmd: format!("nginx {args} -s reload"),
            test_cmd: format!("nginx {args} -t -q"),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        master_pid(&self.dir.path().join("nginx.pid"), self.dir.path())
    }

    /// Reloads by hand (after the test edited `conf.d`).
    pub fn reload(&self) -> Result<()> {
        let out = std::process::Command::new("nginx")
            .args(self.args())
            .args(["-s", "reload"])
            .output()?;
        if !out.status.success() {
            bail!("reload: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for ExternalNginx {
    fn drop(&mut self) {
        stop_master(&self.dir.path().join("nginx.pid"), self.dir.path());
    }
}

/// The PID in `pid_file` if that process is an nginx master started with paths under `dir`.
fn master_pid(pid_file: &Path, dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("nginx") && cmdline.contains(&*dir.to_string_lossy())).then_some(pid)
}

/// Stops the nginx master this test started (TERM, then KILL after 5 s), and any worker of
/// it left behind by a master the test killed (they hold files under `dir` open).
fn stop_master(pid_file: &Path, dir: &Path) {
    stop_pid(pid_file, dir);
    for pid in holders_of(dir) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// nginx processes with a file under `dir` open.
fn holders_of(dir: &Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("nginx"))
        })
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
            })
        })
        .collect()
}

fn stop_pid(pid_file: &Path, dir: &Path) {
    let Some(pid) = master_pid(pid_file, dir) else {
        return;
    };
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while master_pid(pid_file, dir) == Some(pid) {
        if Instant::now() > deadline {
            let _ = kill(p, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything an HTTP-route test needs inside its namespace: test servers, a managed nginx and
/// the daemon's HTTP router on it (with the auth endpoint served when asked).
pub struct Rig {
    pub router: router_userspace::nginx::NginxHttpRouter,
    pub nginx: router_userspace::nginx::Nginx,
    pub servers: crate::http_backend::Servers,
    /// Last: stops nginx after everything else is gone.
    pub dir: ManagedDir,
}

/// The domain subdomain routes use in tests.
pub const DOMAIN: &str = "apps.test";

impl Rig {
    /// A managed nginx; with `auth`, nginx asks the auth endpoint (served here) first.
    pub fn managed(auth: Option<router_userspace::config::AuthConfig>) -> Result<Rig> {
        let servers = crate::http_backend::Servers::new()?;
        let auth_upstream = match auth {
            Some(cfg) => {
                let state = router_userspace::auth::Authenticator::shared(&cfg)?;
                Some(servers.serve(router_userspace::auth::router(state))?)
            }
            None => None,
        };
        let dir = ManagedDir::new()?;
        let nginx = router_userspace::nginx::Nginx::managed(&dir.config())?;
        let router = router_userspace::nginx::NginxHttpRouter::with_settings(
            nginx.clone(),
            settings(auth_upstream),
        );
        Ok(Rig {
            router,
            nginx,
            servers,
            dir,
        })
    }

    /// Where nginx serves HTTP routes.
    pub fn addr(&self) -> std::net::SocketAddr {
        http_addr()
    }
}

/// The settings the tests generate with: port [`HTTP_PORT`], domain [`DOMAIN`], users reach
/// the router over https.
pub fn settings(
    auth_upstream: Option<std::net::SocketAddr>,
) -> router_userspace::nginx::HttpSettings {
    router_userspace::nginx::HttpSettings {
        listen_port: HTTP_PORT,
        domain: Some(DOMAIN.to_string()),
        forwarded_proto: Some("https"),
        auth_upstream,
    }
}

/// nginx's HTTP address inside the test namespace.
pub fn http_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, HTTP_PORT))
}

/// An HTTP route for a test.
pub fn route(
    key: &str,
    upstream: std::net::SocketAddrV4,
    mode: router_userspace::routes::HttpMode,
) -> router_userspace::routes::HttpRoute {
    let (task, endpoint) = key.split_once("__").unwrap_or((key, ""));
    router_userspace::routes::HttpRoute {
        key: key.to_string(),
        upstream,
        mode,
        owner: router_userspace::routes::RouteOwner::new(
            router_userspace::endpoint::EndpointId::new(task.to_string(), endpoint.to_string()),
            format!("test task {task}"),
        ),
    }
}

/// A wanted set from routes.
pub fn wanted(
    routes: &[router_userspace::routes::HttpRoute],
) -> std::collections::BTreeMap<String, router_userspace::routes::HttpRoute> {
    routes.iter().map(|r| (r.key.clone(), r.clone())).collect()
}
