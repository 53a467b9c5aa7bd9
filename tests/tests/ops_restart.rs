//! Hitless restart and upgrade, in namespaces: a long TCP transfer and an interactive
//! (request/response) connection through the router, every byte checked end to end, survive
//! SIGTERM of the daemon, SIGKILL of the daemon, the gaps while no daemon runs (traffic is
//! measured moving in each gap), restarts that adopt the pins (same maps, routes and connection
//! entries) and an upgrade to a rebuilt kernel object (the links then run another program).
//! Also: an incompatible pinned layout is refused untouched, a pin directory outside bpffs is
//! refused, `--detach-on-exit`, `uninstall` leaves nothing behind, and one daemon per instance (a
//! second daemon and `uninstall` are refused while one runs, with the same state directory or
//! only the same pins).

use nix::sys::signal::Signal;
use rand::RngCore;
use router_tests::daemon::Daemon;
use router_tests::pins::PinRoot;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_tests::{require_root, wait, workspace_root};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const PORT: u16 = 20100;
const BACKEND_PORT: u16 = 8080;
const MIB: u64 = 1 << 20;
/// Bytes (and round trips) that must move while no daemon runs, per gap.
const GAP_BYTES: u64 = 2 * MIB;
const GAP_ROUND_TRIPS: u64 = 20;
const READY: Duration = Duration::from_secs(30);

fn bpftool(args: &[&str]) -> Result<Value, String> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bpftool {args:?} output: {e}"))
}

fn map_id(path: &Path) -> u64 {
    let v = bpftool(&["map", "show", "pinned", &path.to_string_lossy()]).expect("map show");
    v["id"].as_u64().expect("map id")
}

/// `(link id, program id)` of a pinned link.
fn link(path: &Path) -> (u64, u64) {
    let v = bpftool(&["link", "show", "pinned", &path.to_string_lossy()]).expect("link show");
    (
        v["id"].as_u64().expect("link id"),
        v["prog_id"].as_u64().expect("prog id"),
    )
}

fn program_tag(id: u64) -> String {
    let v = bpftool(&["prog", "show", "id", &id.to_string()]).expect("prog show");
    v["tag"].as_str().expect("tag").to_string()
}

/// The keys in a pinned map.
fn map_keys(path: &Path) -> Vec<Value> {
    let v = bpftool(&["map", "dump", "pinned", &path.to_string_lossy()]).expect("map dump");
    v.as_array()
        .expect("dump is a list")
        .iter()
        .map(|e| e["key"].clone())
        .collect()
}

/// The rebuilt object an upgrade loads: the kernel crate built with its `upgrade-test`
/// feature (programs that do the same with other instructions), which `cargo xtask test`
/// builds next to the one the daemon embeds.
fn rebuilt_object() -> PathBuf {
    let path =
        workspace_root().join("target/ebpf-upgrade-test/bpfel-unknown-none/release/router-ebpf");
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask test` builds it",
        path.display()
    );
    path
}

struct Setup {
    t: Topology,
    _server: EchoServer,
    dir: tempfile::TempDir,
    pins: PinRoot,
}

impl Setup {
    fn new() -> Setup {
        let t = Topology::new().expect("topology");
        let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "backend1")
            .expect("server");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("routes.toml"),
            format!(
                "[[tcp]]\nport = {PORT}\nupstream = \"{}:{BACKEND_PORT}\"\n",
                t.backend_end.addr
            ),
        )
        .expect("write routes file");
        Setup {
            t,
            _server: server,
            dir,
            pins: PinRoot::new("trhr"),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `task-router <sub>` with this setup's interfaces (client side in generic XDP, so an
    /// XDP link and a TCX link are both pinned), routes, state and pins.
    fn command(&self, sub: &str) -> Command {
        self.command_in(sub, &self.path("state"), &self.path("nginx"))
    }

    /// [`Setup::command`] with another state directory and nginx directory (the same pins).
    fn command_in(&self, sub: &str, state_dir: &str, nginx_dir: &str) -> Command {
        self.daemon(state_dir, nginx_dir).subcommand(sub).command()
    }

    fn daemon(&self, state_dir: &str, nginx_dir: &str) -> DaemonSetup<'_> {
        DaemonSetup::new(&self.t.router)
            .files_in(self.dir.path())
            .with_routes_file()
            .state_in(Path::new(state_dir))
            .interface_as(&self.t.router_client.dev, "xdp-generic")
            .interface_as(&self.t.router_backend.dev, "tc")
            .admin("127.0.0.1:0")
            .tcp_ports(PORT, PORT)
            .no_auth()
            .set("ROUTER_MAX_CONNECTIONS", 4096)
            .set("ROUTER_BPFFS", self.pins.path().display())
            .set("NGINX_CONF_DIR", nginx_dir)
    }

    fn start(&self, extra_env: &[(&str, &str)]) -> Daemon {
        let mut daemon = self.daemon(&self.path("state"), &self.path("nginx"));
        for (k, v) in extra_env {
            daemon = daemon.env(k, v);
        }
        daemon.start(READY)
    }

    fn router(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.t.router_addr(), PORT)
    }

    fn pin(&self, name: &str) -> PathBuf {
        self.pins.layout_dir().join(name)
    }

    fn link_pins(&self) -> [PathBuf; 2] {
        [
            self.pin(&format!("link-xdpgeneric-{}", self.t.router_client.dev)),
            self.pin(&format!("link-tc-{}", self.t.router_backend.dev)),
        ]
    }
}

/// A pattern whose length divides no chunk size, so a lost, repeated or reordered chunk shows
/// as a mismatch.
fn pattern() -> Arc<Vec<u8>> {
    let mut p = vec![0u8; (MIB + 13) as usize];
    rand::rng().fill_bytes(&mut p);
    Arc::new(p)
}

/// A long transfer: a paced sender and a reader that checks every echoed byte.
struct Bulk {
    stop: Arc<AtomicBool>,
    verified: Arc<AtomicU64>,
    sender: JoinHandle<std::io::Result<u64>>,
    reader: JoinHandle<Result<u64, String>>,
}

impl Bulk {
    fn start(client: Client) -> Bulk {
        let pattern = pattern();
        let stop = Arc::new(AtomicBool::new(false));
        let verified = Arc::new(AtomicU64::new(0));
        let mut writer = client.stream.try_clone().expect("clone stream");
        let mut reader = client.stream;
        let (p, st) = (Arc::clone(&pattern), Arc::clone(&stop));
        let sender = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut sent = 0u64;
            let chunk = 40_000usize;
            while !st.load(Ordering::Relaxed) {
                let mut buf = Vec::with_capacity(chunk);
                while buf.len() < chunk {
                    let at = ((sent + buf.len() as u64) % p.len() as u64) as usize;
                    let take = (chunk - buf.len()).min(p.len() - at);
                    buf.extend_from_slice(&p[at..at + take]);
                }
                writer.write_all(&buf)?;
                sent += buf.len() as u64;
                // Paced (about 4 MB/s): a long transfer, not a benchmark on shared cores.
                std::thread::sleep(Duration::from_millis(10));
            }
            writer.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        });
        let (p, v) = (pattern, Arc::clone(&verified));
        let reader = std::thread::spawn(move || -> Result<u64, String> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| format!("read after {got} bytes: {e}"))?;
                if n == 0 {
                    return Ok(got);
                }
                for (i, b) in buf[..n].iter().enumerate() {
                    let at = ((got + i as u64) % p.len() as u64) as usize;
                    if *b != p[at] {
                        return Err(format!(
                            "byte {} differs from what was sent",
                            got + i as u64
                        ));
                    }
                }
                got += n as u64;
                v.store(got, Ordering::Relaxed);
            }
        });
        Bulk {
            stop,
            verified,
            sender,
            reader,
        }
    }

    fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for the rest of the echo; returns the bytes sent, all verified.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .join()
            .expect("sender thread")
            .expect("send the transfer");
        let received = self
            .reader
            .join()
            .expect("reader thread")
            .expect("every echoed byte as sent");
        assert_eq!(received, sent, "echoed bytes vs sent");
        sent
    }
}

/// An interactive session: 64-byte requests, each echo checked before the next.
struct Interactive {
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    thread: JoinHandle<Result<u64, String>>,
}

impl Interactive {
    fn start(mut client: Client) -> Interactive {
        let stop = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let (st, rt) = (Arc::clone(&stop), Arc::clone(&round_trips));
        let thread = std::thread::spawn(move || -> Result<u64, String> {
            let mut n = 0u64;
            let mut request = [0u8; 64];
            let mut reply = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                rand::rng().fill_bytes(&mut request);
                client
                    .stream
                    .write_all(&request)
                    .map_err(|e| format!("request {n}: {e}"))?;
                client
                    .stream
                    .read_exact(&mut reply)
                    .map_err(|e| format!("reply {n}: {e}"))?;
                if reply != request {
                    return Err(format!("reply {n} differs from its request"));
                }
                n += 1;
                rt.store(n, Ordering::Relaxed);
                // A person typing, not a flood.
                std::thread::sleep(Duration::from_millis(20));
            }
            client.finish().map_err(|e| format!("close: {e}"))?;
            Ok(n)
        });
        Interactive {
            stop,
            round_trips,
            thread,
        }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("interactive thread")
            .expect("every reply as requested")
    }
}

/// Waits until both connections moved at least a gap's worth; returns what moved.
fn wait_for_traffic(what: &str, bulk: &Bulk, rr: &Interactive) -> (u64, u64) {
    let (b0, r0) = (bulk.verified(), rr.round_trips());
    wait::until(what, Duration::from_secs(60), || {
        let (b, r) = (bulk.verified() - b0, rr.round_trips() - r0);
        (b >= GAP_BYTES && r >= GAP_ROUND_TRIPS).then_some((b, r))
    })
}

#[test]
fn connections_survive_sigterm_sigkill_gaps_restarts_and_an_upgrade() {
    require_root();
    let s = Setup::new();
    let rebuilt = rebuilt_object();
    let daemon = s.start(&[]);

    let bulk = Bulk::start(Client::connect(&s.t.client, s.router()).expect("connect bulk"));
    let rr = Interactive::start(Client::connect(&s.t.client, s.router()).expect("connect rr"));
    wait_for_traffic("traffic through the first daemon", &bulk, &rr);

    let maps: Vec<(String, u64)> = [
        "ROUTES",
        "CT4",
        "CT_COUNT",
        "HALF_OPEN4",
        "HALF_OPEN_RING",
        "PORT_FLAGS",
        "STATS",
    ]
    .iter()
    .map(|m| (m.to_string(), map_id(&s.pin(m))))
    .collect();
    let links_before: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    let connections = map_keys(&s.pin("CT4"));
    assert!(
        connections.len() >= 4,
        "two connections, two entries each: {connections:?}"
    );

    // 1. SIGTERM: the daemon exits cleanly, leaving everything pinned and forwarding.
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status}");
    let (bytes, trips) = wait_for_traffic("traffic with no daemon after SIGTERM", &bulk, &rr);
    eprintln!("after SIGTERM, while down: {bytes} bytes, {trips} round trips, none lost");
    for p in s.link_pins() {
        assert!(p.exists(), "{} still pinned", p.display());
    }

    // 2. Restart: adopts the maps, routes and connections; replaces the programs in place.
    let mut daemon = s.start(&[]);
    let line = daemon.wait_for_log("adopted the pinned datapath", READY);
    assert!(line.contains("routes=1"), "{line}");
    for (name, id) in &maps {
        assert_eq!(map_id(&s.pin(name)), *id, "{name} is the same map");
    }
    let links_after: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    let tags_after: Vec<String> = links_after.iter().map(|l| program_tag(l.1)).collect();
    for (before, after) in links_before.iter().zip(&links_after) {
        assert_eq!(before.0, after.0, "the same link");
        assert_ne!(before.1, after.1, "the link runs the new daemon's program");
    }
    let kept = map_keys(&s.pin("CT4"));
    for key in &connections {
        assert!(kept.contains(key), "connection entry {key} kept");
    }
    assert_eq!(
        map_keys(&s.pin("ROUTES")).len(),
        1,
        "the route is still there"
    );
    let fresh = Client::connect(&s.t.client, s.router()).expect("a new connection");
    assert_eq!(fresh.banner, "backend1");
    fresh.finish().expect("close the new connection");
    wait_for_traffic("traffic through the restarted daemon", &bulk, &rr);

    // 3. SIGKILL: no clean-up at all, forwarding goes on.
    let status = daemon.stop(Signal::SIGKILL).expect("SIGKILL");
    assert!(!status.success());
    let (bytes, trips) = wait_for_traffic("traffic with no daemon after SIGKILL", &bulk, &rr);
    eprintln!("after SIGKILL, while down: {bytes} bytes, {trips} round trips, none lost");

    // 4. Upgrade to a rebuilt object: the same links now run a different program.
    let object = rebuilt.to_string_lossy().into_owned();
    let mut daemon = s.start(&[("TASK_ROUTER_TEST_OBJECT_FILE", object.as_str())]);
    daemon.wait_for_log("adopted the pinned datapath", READY);
    let links_upgraded: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    for ((before, after), tag) in links_after.iter().zip(&links_upgraded).zip(&tags_after) {
        assert_eq!(before.0, after.0, "the same link");
        assert_ne!(before.1, after.1, "another program id");
        assert_ne!(
            &program_tag(after.1),
            tag,
            "the rebuilt object's program differs"
        );
    }
    for (name, id) in &maps {
        assert_eq!(map_id(&s.pin(name)), *id, "{name} kept across the upgrade");
    }
    let (bytes, trips) = wait_for_traffic("traffic through the upgraded programs", &bulk, &rr);
    eprintln!("after the upgrade: {bytes} bytes, {trips} round trips");

    // 5. And a last SIGTERM: still forwarding; then both connections end cleanly, verified.
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());
    wait_for_traffic("traffic after the last SIGTERM", &bulk, &rr);
    let total = bulk.finish();
    let trips = rr.finish();
    eprintln!("total: {total} bytes and {trips} round trips, every byte verified");
}

#[test]
fn detach_on_exit_and_uninstall_leave_nothing_behind() {
    require_root();
    let s = Setup::new();
    // --detach-on-exit: SIGTERM removes the pins and the programs.
    let mut cmd = s.command("run");
    cmd.arg("--detach-on-exit");
    let mut daemon = Daemon::spawn(cmd).expect("start daemon");
    daemon.wait_for_log("ready", READY);
    let programs: Vec<u64> = s.link_pins().iter().map(|p| link(p).1).collect();
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());
    assert!(!s.pins.path().exists(), "pins removed on exit");
    assert_nothing_attached(&s, &programs);

    // A daemon stopped the default way, with an nginx it manages, then `uninstall`.
    std::fs::write(
        s.dir.path().join("routes.toml"),
        format!(
            "[[tcp]]\nport = {PORT}\nupstream = \"{}:{BACKEND_PORT}\"\n\n[[http]]\nname = \"web\"\nupstream = \"{}:{BACKEND_PORT}\"\n",
            s.t.backend_end.addr, s.t.backend_end.addr
        ),
    )
    .expect("routes file with an HTTP route");
    let mut daemon = s.start(&[("NGINX_MANAGED", "true")]);
    let nginx_dir = s.dir.path().join("nginx");
    let http_conf = nginx_dir.join("task-router-http.conf");
    wait::until("nginx serves the HTTP route", READY, || {
        std::fs::read_to_string(&http_conf)
            .ok()
            .filter(|c| c.contains(&format!("{}:{BACKEND_PORT}", s.t.backend_end.addr)))
    });
    daemon.wait_for_log("started managed nginx", READY);
    let programs: Vec<u64> = s.link_pins().iter().map(|p| link(p).1).collect();
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());
    assert!(s.pins.layout_dir().exists(), "a plain stop keeps the pins");

    let mut cmd = s.command("uninstall");
    cmd.env("NGINX_MANAGED", "true");
    let out = cmd.output().expect("uninstall");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("detached and unpinned"), "{text}");
    assert!(text.contains("stopped the managed nginx"), "{text}");
    assert!(!s.pins.path().exists(), "pin directory gone:\n{text}");
    assert_nothing_attached(&s, &programs);
    let left: Vec<_> = std::fs::read_dir(&nginx_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nginx files left: {left:?}");

    // Idempotent.
    let mut cmd = s.command("uninstall");
    cmd.env("NGINX_MANAGED", "true");
    let out = cmd.output().expect("uninstall again");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nothing pinned"), "{text}");
}

/// The names and modification times of the files in `dir` (empty if it does not exist).
fn file_times(dir: &Path) -> Vec<(std::ffi::OsString, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| Some((e.file_name(), e.metadata().ok()?.modified().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// One daemon per router instance: a second `run` on the same state directory and pins exits
/// at once (exit 1) naming the lock file and the first daemon's PID, touching nothing (same
/// links and maps, nginx files untouched, the first keeps forwarding); `uninstall` while the
/// daemon runs refuses and removes nothing; once the daemon has stopped, `uninstall` works.
#[test]
fn a_second_daemon_and_uninstall_are_refused_while_a_daemon_runs() {
    require_root();
    let s = Setup::new();
    let daemon = s.start(&[]);
    let pid = daemon.pid();
    let lock = Path::new(&s.path("state")).join("task-router.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        format!("{pid}\n"),
        "the lock file records the holder"
    );
    let mut client = Client::connect(&s.t.client, s.router()).expect("connect");
    client
        .echo_random(256 * 1024, 8192, |_| {})
        .expect("echo through the daemon");
    let links: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    let maps: Vec<u64> = ["ROUTES", "CT4", "PORT_FLAGS"]
        .iter()
        .map(|m| map_id(&s.pin(m)))
        .collect();
    let nginx_dir = s.dir.path().join("nginx");
    let nginx_files = file_times(&nginx_dir);

    // A second daemon on the same instance.
    let mut second = Daemon::spawn(s.command("run")).expect("start a second daemon");
    let (status, log) = second.wait_for_exit(READY);
    assert_eq!(status.code(), Some(1), "second daemon:\n{log}");
    assert!(
        log.contains(&lock.display().to_string()) && log.contains(&format!("PID {pid}")),
        "the error names the lock file and the holder:\n{log}"
    );
    assert!(log.contains("stop the daemon first"), "{log}");
    for never in ["adopt", "attached", "pinned", "listening", "nginx"] {
        assert!(
            !log.to_lowercase().contains(never),
            "the refused daemon went as far as {never:?}:\n{log}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file"),
        format!("{pid}\n"),
        "the refused daemon leaves the lock file alone"
    );
    let links_now: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    assert_eq!(links_now, links, "same links, same programs");
    assert_eq!(map_id(&s.pin("ROUTES")), maps[0]);
    assert_eq!(file_times(&nginx_dir), nginx_files, "nginx files untouched");
    client
        .echo_random(256 * 1024, 8192, |_| {})
        .expect("the established connection still forwards");
    let mut fresh = Client::connect(&s.t.client, s.router()).expect("a new connection");
    fresh
        .echo_random(64 * 1024, 8192, |_| {})
        .expect("echo on a new connection");

    // `uninstall` while the daemon runs.
    let out = s.command("uninstall").output().expect("uninstall");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("PID {pid}")), "{stderr}");
    assert!(stderr.contains("stop the daemon first"), "{stderr}");
    assert!(stderr.contains("nothing was removed"), "{stderr}");
    for path in s.link_pins() {
        assert!(path.exists(), "{} removed under the daemon", path.display());
    }
    let map_ids: Vec<u64> = ["ROUTES", "CT4", "PORT_FLAGS"]
        .iter()
        .map(|m| map_id(&s.pin(m)))
        .collect();
    assert_eq!(map_ids, maps, "maps still pinned, the same ones");
    assert_eq!(file_times(&nginx_dir), nginx_files, "nginx files untouched");
    client
        .echo_random(256 * 1024, 8192, |_| {})
        .expect("still forwarding after the refused uninstall");
    client.finish().expect("clean close");
    fresh.finish().expect("clean close");

    // Stopped: the lock goes with the daemon and `uninstall` proceeds.
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());
    let out = s
        .command("uninstall")
        .output()
        .expect("uninstall after the stop");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("detached and unpinned"), "{stdout}");
    assert!(!s.pins.path().exists(), "pin directory gone:\n{stdout}");
    let programs: Vec<u64> = links.iter().map(|l| l.1).collect();
    assert_nothing_attached(&s, &programs);
}

/// `flock(LOCK_EX | LOCK_NB)` on a new descriptor of `dir`: whether it was free (the lock is
/// released again when the descriptor closes).
fn dir_lock_is_free(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let fd = std::fs::File::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return true;
    }
    let e = std::io::Error::last_os_error();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EWOULDBLOCK),
        "flock {}: {e}",
        dir.display()
    );
    false
}

/// One pinned datapath, one daemon: a second `run` with ANOTHER state directory (and nginx
/// directory) but the same `ROUTER_BPFFS` exits at once (exit 1) naming the pin directory and the
/// first daemon's PID, touching nothing (same links and maps, no nginx file, no state written,
/// the first keeps forwarding); `uninstall` with that other state directory refuses and removes
/// nothing; once the daemon has stopped, it works. The lock is a `flock` on the bpffs directory
/// itself: checked here to hold on this kernel (the daemon's lock shows in `/proc/locks` and
/// blocks a `flock` of ours).
#[test]
fn a_daemon_and_uninstall_with_another_state_dir_are_refused_on_the_same_pins() {
    require_root();
    let s = Setup::new();
    let daemon = s.start(&[]);
    let pid = daemon.pid();
    let pin_root = s.pins.path().to_path_buf();
    router_userspace::datapath::pins::check_bpffs(&pin_root).expect("the pins are on bpffs");
    assert_eq!(
        router_userspace::instance_lock::flock_holder_of(&pin_root),
        Some(pid),
        "the daemon holds an exclusive flock on {}:\n{}",
        pin_root.display(),
        std::fs::read_to_string("/proc/locks").unwrap_or_default()
    );
    assert!(
        !dir_lock_is_free(&pin_root),
        "flock on the bpffs directory conflicts"
    );
    let mut client = Client::connect(&s.t.client, s.router()).expect("connect");
    client
        .echo_random(256 * 1024, 8192, |_| {})
        .expect("echo through the daemon");
    let links: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    let maps: Vec<u64> = ["ROUTES", "CT4", "PORT_FLAGS"]
        .iter()
        .map(|m| map_id(&s.pin(m)))
        .collect();
    let nginx_dir = s.dir.path().join("nginx");
    let nginx_files = file_times(&nginx_dir);
    let pins_before = file_times(&s.pins.layout_dir());

    // A second daemon: its own state and nginx directories, the same pins.
    let other_state = s.dir.path().join("other-state");
    let other_nginx = s.dir.path().join("other-nginx");
    let other = |sub: &str| {
        s.command_in(
            sub,
            other_state.to_str().expect("utf-8 path"),
            other_nginx.to_str().expect("utf-8 path"),
        )
    };
    let mut second = Daemon::spawn(other("run")).expect("start a second daemon");
    let (status, log) = second.wait_for_exit(READY);
    assert_eq!(status.code(), Some(1), "second daemon:\n{log}");
    assert!(
        log.contains(&format!("ROUTER_BPFFS={}", pin_root.display()))
            && log.contains(&format!("PID {pid}")),
        "the error names the pin directory and the holder:\n{log}"
    );
    assert!(log.contains("another task-router"), "{log}");
    assert!(log.contains("stop the daemon first"), "{log}");
    for never in [
        "adopt",
        "attached",
        "pinned a new",
        "replaced the program",
        "listening",
        "nginx",
    ] {
        assert!(
            !log.to_lowercase().contains(never),
            "the refused daemon went as far as {never:?}:\n{log}"
        );
    }
    let links_now: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    assert_eq!(links_now, links, "same links, same programs");
    let maps_now: Vec<u64> = ["ROUTES", "CT4", "PORT_FLAGS"]
        .iter()
        .map(|m| map_id(&s.pin(m)))
        .collect();
    assert_eq!(maps_now, maps, "same maps");
    assert_eq!(
        file_times(&s.pins.layout_dir()),
        pins_before,
        "pins untouched"
    );
    assert_eq!(file_times(&nginx_dir), nginx_files, "nginx files untouched");
    assert!(
        !other_nginx.exists(),
        "the refused daemon wrote no nginx file"
    );
    let written: Vec<_> = file_times(&other_state)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        written,
        vec![std::ffi::OsString::from("task-router.lock")],
        "the refused daemon saved no state"
    );
    assert_eq!(
        router_userspace::instance_lock::flock_holder_of(&pin_root),
        Some(pid),
        "the first still holds the pins"
    );
    client
        .echo_random(256 * 1024, 8192, |_| {})
        .expect("the established connection still forwards");
    let mut fresh = Client::connect(&s.t.client, s.router()).expect("a new connection");
    fresh
        .echo_random(64 * 1024, 8192, |_| {})
        .expect("echo on a new connection");

    // `uninstall` with the other state directory while the daemon runs.
    let out = other("uninstall").output().expect("uninstall");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("ROUTER_BPFFS={}", pin_root.display())),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("PID {pid}")), "{stderr}");
    assert!(stderr.contains("stop the daemon first"), "{stderr}");
    assert!(stderr.contains("nothing was removed"), "{stderr}");
    assert!(stdout.is_empty(), "uninstall reported removals:\n{stdout}");
    assert_eq!(
        file_times(&s.pins.layout_dir()),
        pins_before,
        "every pin still there"
    );
    let map_ids: Vec<u64> = ["ROUTES", "CT4", "PORT_FLAGS"]
        .iter()
        .map(|m| map_id(&s.pin(m)))
        .collect();
    assert_eq!(map_ids, maps, "maps still pinned, the same ones");
    let links_now: Vec<(u64, u64)> = s.link_pins().iter().map(|p| link(p)).collect();
    assert_eq!(links_now, links, "links still attached, the same ones");
    assert_eq!(file_times(&nginx_dir), nginx_files, "nginx files untouched");
    client
        .echo_random(256 * 1024, 8192, |_| {})
        .expect("still forwarding after the refused uninstall");
    client.finish().expect("clean close");
    fresh.finish().expect("clean close");

    // Stopped: the pin directory's lock goes with the daemon and that `uninstall` proceeds.
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());
    assert!(dir_lock_is_free(&pin_root), "released with the daemon");
    let out = other("uninstall")
        .output()
        .expect("uninstall after the stop");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("detached and unpinned"), "{stdout}");
    assert!(!pin_root.exists(), "pin directory gone:\n{stdout}");
    let programs: Vec<u64> = links.iter().map(|l| l.1).collect();
    assert_nothing_attached(&s, &programs);
}

/// No program of ours on the test interfaces (XDP and TCX hooks, asked of the kernel in the
/// router namespace) and the programs that ran there are gone from the kernel.
fn assert_nothing_attached(s: &Setup, programs: &[u64]) {
    for dev in [&s.t.router_client.dev, &s.t.router_backend.dev] {
        let names = router_tests::attached::program_names(&s.t.router, dev).expect("programs");
        assert!(
            !names.iter().any(|n| n.contains("task_router")),
            "still attached to {dev}: {names:?}"
        );
    }
    for id in programs {
        wait::until(
            &format!("program {id} to be freed"),
            Duration::from_secs(10),
            || {
                bpftool(&["prog", "show", "id", &id.to_string()])
                    .is_err()
                    .then_some(())
            },
        );
    }
}

/// Pins at `path` a `ROUTES` map of an older shape (24-byte values); returns its id.
fn pin_old_routes_map(path: &Path) -> u64 {
    let created = Command::new("bpftool")
        .args(["map", "create", &path.to_string_lossy()])
        .args([
            "type", "hash", "key", "4", "value", "24", "entries", "16", "name", "ROUTES",
        ])
        .status()
        .expect("bpftool map create");
    assert!(created.success());
    map_id(path)
}

#[test]
fn an_incompatible_pinned_layout_is_refused_untouched() {
    require_root();
    let s = Setup::new();
    // Pins of another layout version.
    let old = s.pins.path().join("layout-1");
    std::fs::create_dir_all(&old).expect("old layout dir");
    let old_map = old.join("ROUTES");
    let id = pin_old_routes_map(&old_map);
    let out = s.command("run").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let expected = router_common::LAYOUT_VERSION.to_string();
    for needle in [
        &s.pins.path().display().to_string(),
        "layout version 1",
        &format!("expects {expected}"),
        "task-router uninstall",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in:\n{stderr}");
    }
    assert_eq!(map_id(&old_map), id, "the pinned map is untouched");
    assert!(
        !s.pins.layout_dir().exists(),
        "nothing of this layout created"
    );

    // The right version number but a map of another shape: refused too.
    std::fs::create_dir_all(s.pins.layout_dir()).expect("layout dir");
    std::fs::remove_file(&old_map).expect("unpin the old map");
    std::fs::remove_dir(&old).expect("remove the old layout dir");
    let wrong = s.pin("ROUTES");
    let id = pin_old_routes_map(&wrong);
    let out = s.command("run").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("value size 24 (expected 32)"), "{stderr}");
    assert!(stderr.contains("task-router uninstall"), "{stderr}");
    assert_eq!(map_id(&wrong), id, "the pinned map is untouched");
    assert!(
        !s.link_pins()[1].exists(),
        "nothing attached after a refusal"
    );
}

#[test]
fn a_pin_directory_outside_bpffs_is_a_clear_error() {
    require_root();
    let s = Setup::new();
    let outside = s.dir.path().join("pins");
    let mut cmd = s.command("run");
    cmd.args(["--set", &format!("ROUTER_BPFFS={}", outside.display())]);
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is not on a bpffs mount"), "{stderr}");
    assert!(stderr.contains(&outside.display().to_string()), "{stderr}");
    assert!(!outside.exists(), "nothing created outside bpffs");

    // bpffs not mounted where the pins go: under `ip netns exec`, /sys is a fresh sysfs and
    // /sys/fs/bpf a plain directory of it, as on a host that never mounted bpffs.
    let unmounted = "/sys/fs/bpf/trhr-unmounted";
    let mut cmd = s.command("run");
    cmd.args(["--set", &format!("ROUTER_BPFFS={unmounted}")]);
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is not on a bpffs mount"), "{stderr}");
    assert!(stderr.contains("mount -t bpf"), "{stderr}");
    assert!(stderr.contains(unmounted), "{stderr}");
}

#[test]
fn a_restart_reconciles_the_pinned_routes_instead_of_rebuilding_them() {
    require_root();
    let s = Setup::new();
    let (b1, b2) = (s.t.backend_end.addr, s.t.backend2_end.addr);
    let _server2 =
        EchoServer::start(&s.t.backend2, b2, BACKEND_PORT, "backend2").expect("server 2");
    let routes = |entries: &[(u16, std::net::Ipv4Addr)]| {
        let text: String = entries
            .iter()
            .map(|(port, ip)| {
                format!("[[tcp]]\nport = {port}\nupstream = \"{ip}:{BACKEND_PORT}\"\n\n")
            })
            .collect();
        std::fs::write(s.dir.path().join("routes.toml"), text).expect("write routes file");
    };
    let (kept, removed, added) = (PORT, PORT + 1, PORT + 2);
    let start = |s: &Setup| {
        let mut cmd = s.command("run");
        cmd.args(["--set", &format!("TCP_PORT_END={}", PORT + 2)]);
        let mut daemon = Daemon::spawn(cmd).expect("start daemon");
        daemon.wait_for_log("ready", READY);
        daemon
    };
    routes(&[(kept, b1), (removed, b1)]);
    let daemon = start(&s);
    let entry = |port: u16| -> Option<Value> {
        let v = bpftool(&["map", "dump", "pinned", &s.pin("ROUTES").to_string_lossy()])
            .expect("dump ROUTES");
        v.as_array()?.iter().find_map(|e| {
            let key = e["key"].as_array()?;
            let lo =
                u16::from_str_radix(key.first()?.as_str()?.trim_start_matches("0x"), 16).ok()?;
            let hi =
                u16::from_str_radix(key.get(1)?.as_str()?.trim_start_matches("0x"), 16).ok()?;
            (lo | hi << 8 == port).then(|| e["value"].clone())
        })
    };
    let kept_before = entry(kept).expect("the kept route is programmed");
    assert!(entry(removed).is_some());
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());

    // While no daemon runs the operator edits the routes.
    routes(&[(kept, b1), (added, b1)]);
    let mut daemon = start(&s);
    let line = daemon.wait_for_log("adopted the pinned datapath", READY);
    assert!(line.contains("routes=2"), "{line}");
    wait::until("the routes reconciled", Duration::from_secs(20), || {
        (entry(removed).is_none() && entry(added).is_some()).then_some(())
    });
    // The unchanged route was taken as it was: same route id and version, not rewritten.
    assert_eq!(entry(kept), Some(kept_before));
    let c = Client::connect(&s.t.client, SocketAddrV4::new(s.t.router_addr(), added))
        .expect("connect to the added route");
    assert_eq!(c.banner, "backend1");
    c.finish().expect("close");
    let c = Client::connect(&s.t.client, s.router()).expect("connect to the kept route");
    assert_eq!(c.banner, "backend1");
    c.finish().expect("close");
}

#[test]
fn a_pinned_connection_table_too_small_for_the_configuration_is_refused() {
    require_root();
    let s = Setup::new();
    let daemon = s.start(&[]);
    let status = daemon.stop(Signal::SIGTERM).expect("SIGTERM");
    assert!(status.success());
    let ct4 = map_id(&s.pin("CT4"));
    let mut cmd = s.command("run");
    cmd.args(["--set", "ROUTER_MAX_CONNECTIONS=65536"]);
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("ROUTER_MAX_CONNECTIONS=65536"), "{stderr}");
    assert!(stderr.contains("task-router uninstall"), "{stderr}");
    assert_eq!(map_id(&s.pin("CT4")), ct4, "the pinned table is untouched");
    // A smaller limit fits in the pinned table: adopted.
    let mut cmd = s.command("run");
    cmd.args(["--set", "ROUTER_MAX_CONNECTIONS=1024"]);
    let mut daemon = Daemon::spawn(cmd).expect("start daemon");
    daemon.wait_for_log("adopted the pinned datapath", READY);
    daemon.wait_for_log("ready", READY);
    assert_eq!(map_id(&s.pin("CT4")), ct4);
}
