//! Every `ROUTER_DATAPATH` a user can choose forwards every byte, or refuses to start and says
//! why (issue 20). Each case runs the real daemon in a router namespace between a client and a
//! backend, against the ClearML test server: a task asks for a TCP endpoint (the runtime keys
//! the SDK's `request_external_endpoint` writes), the daemon routes it and writes the endpoint
//! back, and the client echoes 1 MiB through it the way SSH, rsync and `nc` end a session: it
//! sends everything, half-closes, and reads the backend's echo to the end, every byte checked.
//!
//! The matrix: auto, tc, xdp and xdp-generic with the senders' tx offload on (the default:
//! locally generated packets carry partial checksums) and off, xdp with veth peers that take
//! XDP redirects (GRO on) and partial checksums, nginx managed and external; the combinations
//! that cannot work refuse at start (exit 2) or report not ready, and the task gets the reason
//! instead of an endpoint.

use rand::RngCore;
use router_tests::clearml_server::{ClearmlServer, ServerOptions, TaskSpec};
use router_tests::daemon::Daemon;
use router_tests::e2e::ServerThread;
use router_tests::http_client;
use router_tests::metrics::{sample, scrape};
use router_tests::nginx::{ExternalNginx, ManagedDir};
use router_tests::topology::Topology;
use router_tests::wait::until;
use router_tests::{daemon_binary, require_root};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::time::Duration;

const BACKEND_PORT: u16 = 7000;
const ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));
const ROUTER_NAME: &str = "modes";
/// What a client echoes through each route.
const MIB: usize = 1 << 20;
/// Generous: the suite shares two cores.
const WAIT: Duration = Duration::from_secs(60);
/// The runtime key the daemon writes instead of an endpoint it cannot serve.
const ERROR_KEY: &str = "router_endpoint_error";

/// `ROUTER_DATAPATH` and, for nginx, who runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Auto,
    Tc,
    Xdp,
    XdpGeneric,
    NginxManaged,
    NginxExternal,
    /// An external nginx that is not running (its reload command cannot tell, as a reload
    /// through a shared stamp file in compose).
    NginxExternalStopped,
}

impl Mode {
    fn datapath(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
            Mode::XdpGeneric => "xdp-generic",
            Mode::NginxManaged | Mode::NginxExternal | Mode::NginxExternalStopped => "nginx",
        }
    }
}

/// How the client's and the backend's ends send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Senders {
    /// Default offloads: tx checksum and TSO on (partial checksums, GSO super-packets).
    OffloadOn,
    OffloadOff,
    /// GRO on, tx offload left on: the router's veths take XDP redirects, and what the
    /// senders send still carries partial checksums.
    PeersTakeRedirects,
}

/// A daemon in a router namespace with one task asking for a TCP endpoint to an echo server
/// on the backend. Fields drop in order: the daemon first, the namespaces last.
struct Rig {
    daemon: Daemon,
    server: ClearmlServer,
    task: String,
    /// The external nginx (also stopped ones: its files and any nginx started from them).
    external: Option<ExternalNginx>,
    _managed: Option<ManagedDir>,
    _backend: ServerThread,
    _state: tempfile::TempDir,
    t: Topology,
}

/// The one set-up of every case: topology (with a bridge among the daemon's interfaces when
/// `bridge`), senders' offloads, the ClearML server and the task in the router namespace, the
/// backend's echo server, nginx as `mode` wants it, and the daemon started (not waited for).
fn start(mode: Mode, senders: Senders, bridge: bool) -> Rig {
    require_root();
    let mut t = Topology::new().expect("topology");
    match senders {
        Senders::OffloadOn => {}
        Senders::OffloadOff => {
            for (ns, dev) in t.senders() {
                ns.tx_offload(dev, false).expect("tx off");
            }
        }
        Senders::PeersTakeRedirects => {
            for (ns, dev) in t.senders() {
                ns.run("ethtool", &["-K", dev, "gro", "on"])
                    .expect("gro on");
            }
        }
    }
    let mut interfaces = vec![t.router_client.dev.clone(), t.router_backend.dev.clone()];
    if bridge {
        interfaces.push(t.add_bridged_backend().expect("bridge").bridge.clone());
    }
    let listener = t
        .router
        .enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("enter the router namespace")
        .expect("bind the ClearML server");
    let server = ClearmlServer::start_with(ServerOptions {
        listener: Some(listener),
        ..ServerOptions::default()
    })
    .expect("ClearML test server");
    let backend_addr = SocketAddr::from((t.backend_end.addr, BACKEND_PORT));
    let backend = ServerThread::echo(&t.backend, backend_addr).expect("echo server");
    // What `Task.request_external_endpoint(7000, protocol="tcp")` writes (SDK 2.1).
    let task = server.admin().create_task(
        TaskSpec::new("tcp endpoint")
            .status("in_progress")
            .system_tags(&["external_service"])
            .runtime(json!({"_SERVICE": "EXTERNAL_TCP",
                "external_address": t.backend_end.addr.to_string(),
                "external_tcp_port": BACKEND_PORT, "upstream_task_port": BACKEND_PORT,
                "CLEARML VERSION": "2.1.12"})),
    );
    let state = tempfile::tempdir().expect("state dir");
    let creds = server.credentials();
    let mut cmd = t.router.command(daemon_binary().to_str().expect("utf-8"));
    cmd.arg("run")
        .env("CLEARML_API_HOST", server.url())
        .env("CLEARML_API_ACCESS_KEY", creds.access_key)
        .env("CLEARML_API_SECRET_KEY", creds.secret_key)
        .env("ROUTER_NAME", ROUTER_NAME)
        .env("TCP_ROUTER_ADDRESS", t.router_addr().to_string())
        .env("TCP_PORT_START", "31000")
        .env("TCP_PORT_END", "31099")
        .env("ROUTER_DATAPATH", mode.datapath())
        .env("ROUTER_INTERFACES", interfaces.join(","))
        .env("ROUTER_POLL_INTERVAL", "200ms")
        .env("ROUTER_API_TIMEOUT", "3s")
        .env("ROUTER_ADMIN_ADDR", ADMIN.to_string())
        .env("ROUTER_STATE_DIR", state.path())
        .env("AUTH_ENABLED", "false");
    let (mut external, mut managed) = (None, None);
    match mode {
        Mode::NginxManaged => {
            let dir = ManagedDir::new().expect("nginx dir");
            cmd.env("NGINX_MANAGED", "true")
                .env("NGINX_CONF_DIR", dir.path());
            managed = Some(dir);
        }
        Mode::NginxExternal | Mode::NginxExternalStopped => {
            let nginx = t
                .router
                .enter(|| ExternalNginx::start(|_| Ok(())))
                .expect("enter the router namespace")
                .expect("start nginx");
            let cfg = nginx.config();
            let mut reload = cfg.reload_cmd.clone();
            if mode == Mode::NginxExternalStopped {
                let pid = nginx.pid().expect("nginx runs");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .expect("stop nginx");
                until("nginx to stop", WAIT, || {
                    nginx.pid().is_none().then_some(())
                });
                // Asks for a reload through a stamp file, as compose does: it succeeds whether
                // or not an nginx is there to see it.
                reload = format!("date +%s.%N > {}/.reload", cfg.conf_dir.display());
            }
            cmd.env("NGINX_MANAGED", "false")
                .env("NGINX_CONF_DIR", &cfg.conf_dir)
                .env("NGINX_TEST_CMD", &cfg.test_cmd)
                .env("NGINX_RELOAD_CMD", reload);
            external = Some(nginx);
        }
        _ => {}
    }
    let daemon = Daemon::spawn(cmd).expect("start the daemon");
    Rig {
        daemon,
        server,
        task,
        external,
        _managed: managed,
        _backend: backend,
        _state: state,
        t,
    }
}

impl Rig {
    fn runtime(&self) -> serde_json::Map<String, Value> {
        self.server.admin().runtime(&self.task)
    }

    /// Waits until the endpoint is written back on the task; the router address clients use.
    fn endpoint(&self) -> SocketAddrV4 {
        let router = self.t.router_addr();
        let port = until("the endpoint written back on the task", WAIT, || {
            let rt = self.runtime();
            let ours = rt.get("_ROUTER_NAME") == Some(&json!(ROUTER_NAME))
                && rt.get("external_address") == Some(&json!(router.to_string()));
            ours.then(|| rt.get("external_tcp_port").and_then(Value::as_u64))
                .flatten()
        });
        SocketAddrV4::new(router, u16::try_from(port).expect("a port"))
    }

    /// `/readyz`: status and body (`None` while the admin endpoint does not answer yet).
    fn readyz(&self) -> Option<(u16, String)> {
        let reply = http_client::get_in(&self.t.router, ADMIN, "/readyz", &[]).ok()?;
        Some((reply.status, reply.text()))
    }

    fn wait_ready(&self) {
        until("/readyz to answer 200", WAIT, || {
            self.readyz().filter(|(code, _)| *code == 200).map(|_| ())
        });
    }

    /// Sends 1 MiB of random bytes from the client, half-closes, reads the echo to EOF and
    /// checks every byte.
    fn transfer(&self, to: SocketAddrV4) {
        let mut data = vec![0u8; MIB];
        rand::rng().fill_bytes(&mut data);
        let mut conn = self
            .t
            .client
            .connect(SocketAddr::V4(to), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {to}: {e:#}\n{}", self.daemon.log()));
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("write timeout");
        let mut writer = conn.try_clone().expect("clone");
        let sent = data.clone();
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            writer.write_all(&sent)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::with_capacity(MIB);
        let read = conn.read_to_end(&mut back);
        sender
            .join()
            .expect("sender thread")
            .unwrap_or_else(|e| panic!("send 1 MiB to {to}: {e}"));
        if let Err(e) = read {
            panic!("read the echo from {to} after {} bytes: {e}", back.len());
        }
        assert_eq!(back.len(), MIB, "bytes echoed back through {to} before EOF");
        assert!(
            back == data,
            "the echo through {to} differs from what was sent"
        );
    }

    fn metrics(&self) -> String {
        scrape(&self.t.router, ADMIN.port())
    }
}

/// The whole user story of one working case: endpoint written back, ready, 1 MiB both ways
/// with half-close; returns the rig for case-specific checks.
fn forwards(mode: Mode, senders: Senders) -> Rig {
    let rig = start(mode, senders, false);
    let to = rig.endpoint();
    rig.wait_ready();
    rig.transfer(to);
    // A second connection: the first one's end left nothing behind that stops the next.
    rig.transfer(to);
    rig
}

#[test]
fn auto_forwards_with_offload_on() {
    forwards(Mode::Auto, Senders::OffloadOn);
}

#[test]
fn auto_forwards_with_offload_off() {
    forwards(Mode::Auto, Senders::OffloadOff);
}

#[test]
fn tc_forwards_with_offload_on() {
    forwards(Mode::Tc, Senders::OffloadOn);
}

#[test]
fn tc_forwards_with_offload_off() {
    forwards(Mode::Tc, Senders::OffloadOff);
}

/// The third case: native XDP on veths with default offloads attached, said `ready`
/// and forwarded nothing (XDP redirected into veths whose peers take no redirects). Now XDP
/// hands every packet to the TC program behind it, which forwards it; the daemon says the
/// combination is degraded, on `/metrics` and `/readyz`.
#[test]
fn xdp_on_veth_with_default_offloads_forwards_through_the_tc_hand_off() {
    let rig = forwards(Mode::Xdp, Senders::OffloadOn);
    let text = rig.metrics();
    let dev = &rig.t.router_client.dev;
    let degraded =
        format!("task_router_datapath_degraded{{interface=\"{dev}\",reason=\"xdp_on_veth\"}}");
    assert_eq!(sample(&text, &degraded), Some(1.0), "{text}");
    let handed = sample(
        &text,
        "task_router_verdict_packets_total{hook=\"xdp\",reason=\"xdp_to_tc_not_xdp_target\"}",
    );
    assert!(handed.is_some_and(|n| n > 10.0), "{text}");
    let (code, body) = rig.readyz().expect("readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(dev.as_str()), "{body}");
}

#[test]
fn xdp_on_veth_forwards_with_offload_off() {
    forwards(Mode::Xdp, Senders::OffloadOff);
}

/// Veth peers that take XDP redirects while sending partial checksums: XDP redirecting into
/// them moved nothing (every translated frame arrived corrupt). XDP translates nothing while
/// a veth runs it: the TC program forwards everything.
#[test]
fn xdp_on_veth_forwards_when_the_peers_take_redirects_with_offload_on() {
    let rig = forwards(Mode::Xdp, Senders::PeersTakeRedirects);
    let text = rig.metrics();
    let by_xdp = sample(
        &text,
        "task_router_verdict_bytes_total{hook=\"xdp\",reason=\"forwarded\"}",
    );
    assert_eq!(by_xdp, Some(0.0), "{text}");
    let by_tc = sample(
        &text,
        "task_router_verdict_bytes_total{hook=\"tc\",reason=\"forwarded\"}",
    );
    assert!(by_tc.is_some_and(|b| b > 2.0 * MIB as f64), "{text}");
}

#[test]
fn xdp_generic_forwards_with_offload_on() {
    forwards(Mode::XdpGeneric, Senders::OffloadOn);
}

#[test]
fn xdp_generic_forwards_with_offload_off() {
    forwards(Mode::XdpGeneric, Senders::OffloadOff);
}

/// The first case: nginx ended the session at the client's FIN and dropped what the
/// task still sent (209 264 of 1 048 576 bytes came back).
#[test]
fn nginx_managed_keeps_a_half_closed_session_until_the_task_is_done() {
    forwards(Mode::NginxManaged, Senders::OffloadOn);
}

#[test]
fn nginx_external_keeps_a_half_closed_session_until_the_task_is_done() {
    forwards(Mode::NginxExternal, Senders::OffloadOn);
}

/// The second case: with an external nginx that is not running the daemon said
/// `ready` and wrote back an endpoint nothing listened on. Now it is not ready and says why,
/// the task gets the reason instead of the endpoint, and once nginx runs the endpoint is
/// written, the reason removed, and the route forwards.
#[test]
fn an_external_nginx_that_does_not_run_is_not_ready_and_the_task_gets_the_reason() {
    let rig = start(Mode::NginxExternalStopped, Senders::OffloadOn, false);
    let (code, body) = until("/readyz after the first sync", WAIT, || {
        let starting = ["starting", "first ClearML sync", "not applied yet"];
        rig.readyz()
            .filter(|(_, body)| !starting.iter().any(|s| body.contains(s)))
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("listens"), "{body}");
    let reason = until("the reason written on the task", WAIT, || {
        rig.runtime()
            .get(ERROR_KEY)
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    assert!(reason.contains("listens"), "{reason}");
    let rt = rig.runtime();
    assert_eq!(
        rt.get("external_tcp_port"),
        Some(&json!(BACKEND_PORT)),
        "no endpoint written back: {rt:?}"
    );
    assert!(rt.get("_ROUTER_NAME").is_none(), "{rt:?}");

    // nginx comes up (as its container would): the route is served and written back.
    let nginx = rig.external.as_ref().expect("external nginx");
    let up = nginx.config().reload_cmd.replace(" -s reload", "");
    let out = rig
        .t
        .router
        .command("sh")
        .args(["-c", &up])
        .output()
        .expect("start nginx");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to = rig.endpoint();
    rig.wait_ready();
    until("the reason removed from the task", WAIT, || {
        (!rig.runtime().contains_key(ERROR_KEY)).then_some(())
    });
    rig.transfer(to);
}

/// A driver without native XDP cannot run `xdp`: the daemon refuses at start, naming the
/// interface and what to use instead, and attaches nothing.
#[test]
fn xdp_on_an_interface_without_native_xdp_refuses_to_start() {
    let mut rig = start(Mode::Xdp, Senders::OffloadOn, true);
    let (status, log) = rig.daemon.wait_for_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{log}");
    let bridge = rig.t.bridged.as_ref().expect("bridge").bridge.clone();
    assert!(log.contains(&bridge), "{log}");
    assert!(log.contains("ROUTER_DATAPATH=auto or tc"), "{log}");
    assert!(!log.contains("attached"), "{log}");
}
