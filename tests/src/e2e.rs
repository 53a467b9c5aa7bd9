//! The whole system on one machine, for the end-to-end test and `cargo xtask demo`: network
//! namespaces for a client, the router and two task hosts; the ClearML test server and the
//! `task-router` daemon (with its managed nginx) in the router namespace; the real SDK, a TCP
//! echo server and a web app on the task hosts. Everything is removed on drop: the daemon is
//! stopped with SIGTERM, what still runs in the namespaces (started by us) is killed by PID,
//! the bpffs pins and temporary files go, then the namespaces.
//!
//! ```text
//!  client 10.77.1.1 ── 10.77.1.2 router 10.77.2.1 ── 10.77.2.2 host1 (TCP task)
//!                                       10.77.3.1 ── 10.77.3.2 host2 (HTTP task)
//! ```
//! The ClearML server listens on 0.0.0.0 in the router namespace: the daemon reaches it on
//! loopback, each task host on its router-side address.

use crate::clearml_server::sdk::{SdkEnv, SdkTask};
use crate::clearml_server::{ClearmlServer, ServerOptions};
use crate::daemon::Daemon;
use crate::netns::{Netns, VethEnd, veth};
use anyhow::{Context, Result, bail};
use base64::Engine;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The router's public side: `TCP_ROUTER_ADDRESS`, and the host of `ROUTER_URL`.
pub const ROUTER_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const ROUTER_TO_HOST1: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const HOST1: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
pub const ROUTER_TO_HOST2: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 1);
pub const HOST2: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 2);
/// nginx's port for HTTP routes (`ROUTER__WEBSERVER__SERVER_PORT`).
pub const WEB_PORT: u16 = 8080;
pub const TCP_PORT_START: u16 = 31000;
pub const TCP_PORT_END: u16 = 31099;
/// The daemon's admin endpoint, inside the router namespace.
pub const ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));
pub const ROUTER_NAME: &str = "e2e-router";

/// Knobs of a testbed; the defaults suit a test (short poll and grace).
#[derive(Clone, Debug)]
pub struct TestbedOptions {
    pub poll_interval: String,
    pub port_grace: String,
    /// `ROUTER_DATAPATH`; `auto` picks TC on the veths.
    pub datapath: String,
    pub log_level: String,
    /// Start the daemon (false: only the network, the server and the hosts, e.g. to test the
    /// harness itself).
    pub daemon: bool,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            poll_interval: "500ms".into(),
            port_grace: "2s".into(),
            datapath: "auto".into(),
            log_level: "info".into(),
            daemon: true,
        }
    }
}

pub struct Testbed {
    daemon: Option<Daemon>,
    pub server: ClearmlServer,
    pub client: Netns,
    pub router: Netns,
    pub host1: Netns,
    pub host2: Netns,
    /// Router-side ends of the links: to the client, host1, host2.
    pub router_ends: Vec<VethEnd>,
    pub router_url: String,
    /// A bpffs of its own for the daemon's pins (`ip netns exec` hides the host's).
    bpffs: crate::pins::PinRoot,
    dir: tempfile::TempDir,
}

impl Testbed {
    /// Builds everything and waits until the daemon says it is ready. `step` is told what is
    /// being done (the demo prints it).
    pub fn up(opts: &TestbedOptions, step: &mut dyn FnMut(&str)) -> Result<Testbed> {
        step("network namespaces: client, router, host1, host2");
        let client = Netns::new("e2c")?;
        let router = Netns::new("e2r")?;
        let host1 = Netns::new("e2h")?;
        let host2 = Netns::new("e2h")?;
        let (_, r_client) = veth(&client, CLIENT, &router, ROUTER_PUBLIC)?;
        let (r_h1, _) = veth(&router, ROUTER_TO_HOST1, &host1, HOST1)?;
        let (r_h2, _) = veth(&router, ROUTER_TO_HOST2, &host2, HOST2)?;
        router.sysctl("net.ipv4.ip_forward=1")?;

        step("ClearML test server in the router namespace");
        let listener = router
            .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?
            .context("bind the ClearML server in the router namespace")?;
        let server = ClearmlServer::start_with(ServerOptions {
            listener: Some(listener),
            ..ServerOptions::default().advanced()
        })?;

        let dir = tempfile::tempdir().context("temporary directory")?;
        let bpffs = crate::pins::PinRoot::new("e2e");
        let router_url = format!("http://{ROUTER_PUBLIC}:{WEB_PORT}");
        let mut bed = Testbed {
            daemon: None,
            server,
            client,
            router,
            host1,
            host2,
            router_ends: vec![r_client, r_h1, r_h2],
            router_url,
            bpffs,
            dir,
        };

        if opts.daemon {
            step("task-router daemon (and its nginx) in the router namespace");
            bed.daemon = Some(bed.start_daemon(opts)?);
            bed.wait_ready(Duration::from_secs(60))?;
        }
        Ok(bed)
    }

    fn start_daemon(&self, opts: &TestbedOptions) -> Result<Daemon> {
        let creds = self.server.credentials();
        let secret = self.server.admin().token_secret();
        let jwks = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret);
        let interfaces: Vec<String> = self.router_ends.iter().map(|e| e.dev.clone()).collect();
        let state = self.dir.path().join("state");
        let nginx = self.dir.path().join("nginx");
        std::fs::create_dir_all(&state).context("state dir")?;
        std::fs::create_dir_all(&nginx).context("nginx dir")?;
        let port = self.server.addr().port();
        let mut cmd = self
            .router
            .command(&crate::daemon_binary().to_string_lossy());
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CLEARML_API_HOST", format!("http://127.0.0.1:{port}"))
            .env("CLEARML_API_ACCESS_KEY", &creds.access_key)
            .env("CLEARML_API_SECRET_KEY", &creds.secret_key)
            .env("ROUTER_NAME", ROUTER_NAME)
            .env("ROUTER_URL", &self.router_url)
            .env("TCP_ROUTER_ADDRESS", ROUTER_PUBLIC.to_string())
            .env("TCP_PORT_START", TCP_PORT_START.to_string())
            .env("TCP_PORT_END", TCP_PORT_END.to_string())
            .env("ROUTER_POLL_INTERVAL", &opts.poll_interval)
            .env("ROUTER_PORT_GRACE", &opts.port_grace)
            .env("ROUTER_DATAPATH", &opts.datapath)
            .env("ROUTER_INTERFACES", interfaces.join(","))
            .env("ROUTER_BPFFS", self.bpffs.path())
            .env("ROUTER_STATE_DIR", &state)
            .env("ROUTER_ADMIN_ADDR", ADMIN.to_string())
            .env("ROUTER__WEBSERVER__SERVER_PORT", WEB_PORT.to_string())
            .env("AUTH_ENABLED", "true")
            .env("AUTH_SECURE_ENABLED", "false")
            .env("AUTH_BASE64_JWKS_KEY", jwks)
            .env("NGINX_MANAGED", "true")
            .env("NGINX_CONF_DIR", &nginx)
            .env("LOGGER_LEVEL", &opts.log_level);
        Daemon::spawn(cmd)
    }

    /// The PID of the managed nginx master the daemon started (from its pid file), if running.
    pub fn nginx_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("nginx").join("nginx.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(pid)
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    fn daemon_exited(&self) -> bool {
        let Some(d) = &self.daemon else { return true };
        match std::fs::read_to_string(format!("/proc/{}/stat", d.pid())) {
            // Field 3 is the state; Z = exited, not yet reaped.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_none_or(|s| s == "Z" || s == "X"),
            Err(_) => true,
        }
    }

    /// Waits for `/readyz` = 200, failing early (with the log) if the daemon exits.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(reply) = crate::http_client::get_in(&self.router, ADMIN, "/readyz", &[])
                && reply.status == 200
            {
                return Ok(());
            }
            if self.daemon_exited() {
                bail!(
                    "the daemon exited during start-up; its log:\n{}",
                    self.daemon_log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon was not ready within {timeout:?}; its log:\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's `/status` JSON.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let reply = crate::http_client::get_in(&self.router, ADMIN, "/status", &[])?;
        serde_json::from_slice(&reply.body).context("/status is not JSON")
    }

    /// `task-router status` as an operator runs it on the router host.
    pub fn status_table(&self) -> Result<String> {
        let out = self
            .router
            .command(&crate::daemon_binary().to_string_lossy())
            .args(["status", "--admin-addr", &ADMIN.to_string()])
            .output()
            .context("task-router status")?;
        if !out.status.success() {
            bail!(
                "task-router status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What an SDK task on host `n` (1 or 2) is given: the server at the router's address on
    /// that link, and the host's own address as `CLEARML_AGENT_HOST_IP`.
    pub fn sdk_env(&self, host: u8) -> SdkEnv {
        let (via, own) = if host == 1 {
            (ROUTER_TO_HOST1, HOST1)
        } else {
            (ROUTER_TO_HOST2, HOST2)
        };
        SdkEnv {
            api_host: format!("http://{via}:{}", self.server.addr().port()),
            host_ip: Some(own.to_string()),
            ..SdkEnv::for_server(&self.server)
        }
    }

    pub fn host(&self, n: u8) -> &Netns {
        if n == 1 { &self.host1 } else { &self.host2 }
    }

    /// Starts the real SDK (release `version`) as a task on host `n`.
    pub fn sdk_task(&self, version: &str, host: u8, name: &str) -> Result<SdkTask> {
        SdkTask::start(version, &self.sdk_env(host), Some(self.host(host)), name)
    }

    /// A browser's ClearML cookie (`clearml_token_basic=<JWT>`) for routed HTTP requests.
    pub fn auth_cookie(&self) -> String {
        let token = self.server.admin().issue_token(Duration::from_secs(3600));
        format!("{}={token}", crate::clearml_server::AUTH_COOKIE)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let pid = d.pid();
            if let Err(e) = d.stop(nix::sys::signal::Signal::SIGTERM) {
                eprintln!("cleanup: stopping the daemon ({pid}): {e:#}");
            }
        }
        // Whatever still runs in our namespaces was started by this testbed (nginx, SDK tasks).
        for ns in [&self.router, &self.host1, &self.host2, &self.client] {
            kill_all_in(ns);
        }
    }
}

fn kill_all_in(ns: &Netns) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", &ns.name])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Sends `payload` to `addr` from `ns`, half-closes, and returns everything that came back.
pub fn echo_through(ns: &Netns, addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let mut stream = ns.connect(addr, Duration::from_secs(5))?;
    stream
        .write_all(payload)
        .with_context(|| format!("send to {addr}"))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("half-close")?;
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .with_context(|| format!("read from {addr}"))?;
    Ok(back)
}

/// A server on a thread, accepting on a listener made inside a namespace; stops on drop.
pub struct ServerThread {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    fn start(
        ns: &Netns,
        addr: SocketAddr,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Result<ServerThread> {
        let listener = ns
            .enter(move || TcpListener::bind(addr))?
            .with_context(|| format!("listen on {addr} in {}", ns.name))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = Arc::new(handle);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let h = Arc::clone(&handle);
                        std::thread::spawn(move || h(conn));
                    }
                    // Nothing to accept: look at the stop flag again shortly.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(ServerThread {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// A TCP echo server (the "task's server" of a TCP endpoint).
    pub fn echo(ns: &Netns, addr: SocketAddr) -> Result<ServerThread> {
        Self::banner_echo(ns, addr, "")
    }

    /// An echo server that first sends `banner`, so a client can tell which server it reached.
    pub fn banner_echo(ns: &Netns, addr: SocketAddr, banner: &str) -> Result<ServerThread> {
        let banner = banner.as_bytes().to_vec();
        Self::start(ns, addr, move |mut conn| {
            if conn.write_all(&banner).is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    }

    /// A web app that answers every request with `app <name>`, the request line and the
    /// `X-Forwarded-Prefix` it got, so a test sees what reached it.
    pub fn web(ns: &Netns, addr: SocketAddr, name: &str) -> Result<ServerThread> {
        let name = name.to_string();
        Self::start(ns, addr, move |mut conn| {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&head);
            let request_line = text.lines().next().unwrap_or_default().to_string();
            let prefix = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-forwarded-prefix"))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default();
            let body = format!("app {name}\nrequest: {request_line}\nprefix: {prefix}\n");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `"ADDR:PORT"` (as the SDK reports a TCP endpoint) to a socket address.
pub fn parse_endpoint(endpoint: &str) -> Result<SocketAddr> {
    endpoint
        .parse()
        .with_context(|| format!("{endpoint:?} is not ADDR:PORT"))
}
