//! Forwarding peers compared in one veth topology (client ns — router ns — backend ns), in
//! interleaved rounds: plain IP forwarding without NAT (the ceiling), nftables DNAT +
//! masquerade, nginx `stream`, haproxy (a userspace proxy) and this datapath (`auto`: TC on
//! veth); then, with the sending ends' tx offload off as a NIC delivers, the ceiling, nftables
//! and the datapath in native XDP. Metrics: bulk throughput (iperf3, 1 and 4 streams), new
//! connections per second, request/response latency (p50/p99), and CPU per GB: the whole
//! machine's busy time per GB moved at one fixed offered rate (see [`CPU_PHASE_RATE`]).

use anyhow::{Context, Result, bail};
use router_tests::netns::Netns;
use router_tests::topology::Topology;
use router_tests::wait;
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::sweeper::{DEFAULT_INTERVAL, Sweeper};
use router_userspace::datapath::{AttachMode, DEFAULT_NAT_SOURCE_PORTS, Datapath, SharedDatapath};
use router_userspace::routes::{RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Each peer gets its own ports (base + its index), router side and backend side: TIME_WAIT
/// sockets one peer leaves on the backend carry another TCP timestamp clock than the next
/// peer's connections on the same tuple would, and PAWS would refuse those SYNs.
const PORT_BULK: u16 = 20000;
const PORT_RR: u16 = 21000;
const IPERF_PORT: u16 = 5201;
/// Offered rate (iperf3 `--fq-rate`, one stream) of the CPU-per-GB phase: below what every peer moves
/// with one stream here (the proxies about 7 Gbit/s), so all peers carry the same bytes at the
/// same rate and the machine's busy time per GB differs by what forwarding costs. The machine
/// as a whole, because forwarding in softirq is charged to whichever process the packets
/// interrupt (the iperf3 processes on this kernel), not to a router process.
pub const CPU_PHASE_RATE: &str = "3G";
/// The CPU-per-GB phase runs this many times `--seconds`: it measures under 1 CPU second per
/// 5 s, against which the machine's own background (kernel threads, the VM agent) is a
/// noticeable share; a longer phase averages it out (rounds of one peer spread ±25 % at 5 s).
const CPU_PHASE_LENGTH: u64 = 3;
const RR_PORT: u16 = 7000;
const RR_MESSAGE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Peer {
    /// Kernel IP forwarding, no NAT: the client talks to the backend's own address.
    Ceiling,
    Nftables,
    /// nginx `stream` with one plain `listen` per port, as a generated per-route config has it
    /// (and as in the issue's baseline: 0.53x / 0.45x the ceiling): the kernel hands all
    /// connections of a port to whichever worker accepts first.
    NginxStream,
    /// nginx `stream` with `reuseport`: the kernel spreads connections over both workers (the
    /// strongest nginx we know how to configure here).
    NginxStreamReuseport,
    Haproxy,
    /// This datapath, `auto` mode (TC on veth).
    Datapath,
    /// Sending ends' tx offload off (no TSO, full checksums) — as frames from a NIC.
    CeilingTxOff,
    NftablesTxOff,
    /// This datapath in native XDP (peers with GRO on so XDP redirects into veth land).
    DatapathXdpTxOff,
}

impl Peer {
    pub const DEFAULT_GROUP: [Peer; 6] = [
        Peer::Ceiling,
        Peer::Nftables,
        Peer::NginxStream,
        Peer::NginxStreamReuseport,
        Peer::Haproxy,
        Peer::Datapath,
    ];
    pub const TX_OFF_GROUP: [Peer; 3] = [
        Peer::CeilingTxOff,
        Peer::NftablesTxOff,
        Peer::DatapathXdpTxOff,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Ceiling => "no-NAT forwarding (ceiling)",
            Peer::Nftables => "nftables DNAT+masquerade",
            Peer::NginxStream => "nginx stream",
            Peer::NginxStreamReuseport => "nginx stream, reuseport",
            Peer::Haproxy => "haproxy (userspace proxy)",
            Peer::Datapath => "task-router eBPF (auto: TC)",
            Peer::CeilingTxOff => "no-NAT forwarding, tx off",
            Peer::NftablesTxOff => "nftables, tx off",
            Peer::DatapathXdpTxOff => "task-router eBPF XDP, tx off",
        }
    }

    pub const ALL: [Peer; 9] = [
        Peer::Ceiling,
        Peer::Nftables,
        Peer::NginxStream,
        Peer::Haproxy,
        Peer::Datapath,
        Peer::CeilingTxOff,
        Peer::NftablesTxOff,
        Peer::DatapathXdpTxOff,
        Peer::NginxStreamReuseport,
    ];

    /// Short names for `--peers`.
    pub fn id(self) -> &'static str {
        match self {
            Peer::Ceiling => "ceiling",
            Peer::Nftables => "nftables",
            Peer::NginxStream => "nginx",
            Peer::NginxStreamReuseport => "nginx-reuseport",
            Peer::Haproxy => "haproxy",
            Peer::Datapath => "datapath",
            Peer::CeilingTxOff => "ceiling-txoff",
            Peer::NftablesTxOff => "nftables-txoff",
            Peer::DatapathXdpTxOff => "xdp-txoff",
        }
    }

    /// Parses a `--peers` list (comma-separated short names).
    pub fn parse_list(list: &str) -> Result<Vec<Peer>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Peer::ALL
                    .into_iter()
                    .find(|p| p.id() == name)
                    .with_context(|| {
                        let known: Vec<_> = Peer::ALL.iter().map(|p| p.id()).collect();
                        format!(
                            "unknown peer {name:?} in --peers (known: {})",
                            known.join(", ")
                        )
                    })
            })
            .collect()
    }

    fn index(self) -> u16 {
        Peer::ALL.iter().position(|p| *p == self).unwrap_or(0) as u16
    }

    /// (router bulk, router RR, backend iperf3, backend RR) ports.
    fn ports(self) -> (u16, u16, u16, u16) {
        let i = self.index();
        (PORT_BULK + i, PORT_RR + i, IPERF_PORT + i, RR_PORT + i)
    }

    fn tx_off(self) -> bool {
        Peer::TX_OFF_GROUP.contains(&self)
    }

    fn ceiling(self) -> Peer {
        if self.tx_off() {
            Peer::CeilingTxOff
        } else {
            Peer::Ceiling
        }
    }
}

/// One round's figures for one peer.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub bulk1_gbps: f64,
    pub bulk4_gbps: f64,
    pub conn_per_s: f64,
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    /// Busy CPU seconds of the whole machine per GB moved at [`CPU_PHASE_RATE`] (1 stream).
    pub cpu_s_per_gb: f64,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub tx_off_group: bool,
    /// Only these peers (the ceilings always run: every ratio needs its own).
    pub only: Option<Vec<Peer>>,
}

impl Options {
    /// The peers of `group` to measure: all, or the `--peers` ones plus the group's ceiling
    /// (every ratio needs it); none when no peer of the group was asked for.
    fn selected(&self, group: &[Peer]) -> Vec<Peer> {
        let Some(only) = &self.only else {
            return group.to_vec();
        };
        if !group.iter().any(|p| only.contains(p)) {
            return Vec::new();
        }
        group
            .iter()
            .copied()
            .filter(|p| only.contains(p) || *p == p.ceiling())
            .collect()
    }
}

/// Processes the benchmark started, stopped by PID on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running peer: whatever must stay alive, torn down on drop.
enum Running {
    Nothing,
    /// An nftables table in the router namespace (named by the namespace).
    Nft(String),
    Proc(#[allow(dead_code)] Proc),
    Datapath(
        #[allow(dead_code)] Sweeper,
        #[allow(dead_code)] SharedDatapath,
    ),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Nft(ns) = self {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", ns, "nft", "delete", "table", "ip", "trbench",
                ])
                .status();
        }
    }
}

struct Bench {
    t: Topology,
    dir: tempdir::Dir,
    opts: Options,
    stop: Arc<AtomicBool>,
    sweeps: Arc<std::sync::Mutex<Vec<Sweep>>>,
}

/// One conntrack sweep during the datapath's turns: the table it walked and how long it took.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sweep {
    pub connections: u64,
    /// Tuples of closed connections still reserved (each one more entry to walk).
    pub reserved: u64,
    pub took_ms: f64,
}

/// The slowest sweep and the largest table, in one line of the report.
pub fn sweep_summary(sweeps: &[Sweep]) -> String {
    let Some(slowest) = sweeps.iter().max_by(|a, b| a.took_ms.total_cmp(&b.took_ms)) else {
        return "Conntrack sweeper: no sweep ran.".into();
    };
    let largest = sweeps
        .iter()
        .max_by_key(|s| s.connections * 2 + s.reserved)
        .unwrap_or(slowest);
    let mean = sweeps.iter().map(|s| s.took_ms).sum::<f64>() / sweeps.len() as f64;
    format!(
        "Conntrack sweeper (every {} s, in the driver, release build), {} sweeps during the \
         datapath's turns: mean {mean:.1} ms; slowest {:.1} ms (a table of {} connections and \
         {} reserved tuples); largest table {} connections and {} reserved tuples ({:.1} ms).",
        DEFAULT_INTERVAL.as_secs(),
        sweeps.len(),
        slowest.took_ms,
        slowest.connections,
        slowest.reserved,
        largest.connections,
        largest.reserved,
        largest.took_ms,
    )
}

pub(crate) mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let p = std::env::temp_dir().join(format!("trbench-{}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn ns_cmd(ns: &Netns, program: &str) -> Command {
    ns.command(program)
}

fn listening(ns: &Netns, port: u16) -> bool {
    ns.run("ss", &["-Hltn", &format!("sport = :{port}")])
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

pub(crate) fn wait_listening(ns: &Netns, port: u16, what: &str) {
    wait::until(
        &format!("{what} listening on port {port}"),
        Duration::from_secs(15),
        || listening(ns, port).then_some(()),
    );
}

/// Busy CPU time of the whole machine, seconds.
pub(crate) fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq (steal, the hypervisor running others, is not
    // this machine's work)
    let busy = v
        .iter()
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4);
    let ticks: u64 = busy.map(|(_, x)| *x).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Packets the per-CPU input backlogs dropped since boot (`/proc/net/softnet_stat`, column 2).
pub(crate) fn backlog_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").context("read softnet_stat")?;
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|hex| u64::from_str_radix(hex, 16).context("softnet_stat column"))
        .sum()
}

/// Waits for a child to exit; kills it after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for process {pid}"))?
        {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process {pid} did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Bench {
    fn new(opts: Options) -> Result<Bench> {
        let t = Topology::new()?;
        // The ceiling talks to the backend directly, routed by the router namespace.
        t.route_client_and_backend_directly()?;
        Ok(Bench {
            t,
            dir: tempdir::Dir::new()?,
            opts,
            stop: Arc::new(AtomicBool::new(false)),
            sweeps: Arc::default(),
        })
    }

    fn router(&self) -> Ipv4Addr {
        self.t.router_addr()
    }

    fn backend(&self) -> Ipv4Addr {
        self.t.backend_end.addr
    }

    /// Where the client connects for the bulk and the RR routes.
    fn targets(&self, peer: Peer) -> (SocketAddrV4, SocketAddrV4) {
        let (bulk, rr, iperf, backend_rr) = peer.ports();
        if peer == peer.ceiling() {
            (
                SocketAddrV4::new(self.backend(), iperf),
                SocketAddrV4::new(self.backend(), backend_rr),
            )
        } else {
            (
                SocketAddrV4::new(self.router(), bulk),
                SocketAddrV4::new(self.router(), rr),
            )
        }
    }

    fn set_tx_off(&self, off: bool) -> Result<()> {
        for (ns, dev) in self.t.senders() {
            ns.tx_offload(dev, !off)?;
            ns.run(
                "ethtool",
                &["-K", dev, "gro", if off { "on" } else { "off" }],
            )?;
        }
        Ok(())
    }

    fn start(&self, peer: Peer) -> Result<Running> {
        let (r, b) = (self.router(), self.backend());
        let (bulk_port, rr_port, iperf_port, backend_rr_port) = peer.ports();
        match peer {
            Peer::Ceiling | Peer::CeilingTxOff => Ok(Running::Nothing),
            Peer::Nftables | Peer::NftablesTxOff => {
                let rules = format!(
                    "table ip trbench {{\n\
                     chain pre {{ type nat hook prerouting priority dstnat; \
                     ip daddr {r} tcp dport {bulk_port} dnat to {b}:{iperf_port}; \
                     ip daddr {r} tcp dport {rr_port} dnat to {b}:{backend_rr_port}; }}\n\
                     chain post {{ type nat hook postrouting priority srcnat; \
                     ip daddr {b} masquerade; }}\n}}\n"
                );
                let file = self.dir.path().join("nft.conf");
                std::fs::write(&file, rules)?;
                self.t
                    .router
                    .run("nft", &["-f", file.to_str().context("utf-8 path")?])?;
                Ok(Running::Nft(self.t.router.name.clone()))
            }
            Peer::NginxStream | Peer::NginxStreamReuseport => {
                let reuseport = if peer == Peer::NginxStreamReuseport {
                    " reuseport"
                } else {
                    ""
                };
                let dir = self.dir.path().join("nginx");
                std::fs::create_dir_all(&dir)?;
                let conf = format!(
                    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                     daemon off; master_process on; worker_processes 2;\n\
                     pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
                     events {{ worker_connections 16384; }}\n\
                     stream {{\n\
                     server {{ listen {r}:{bulk_port}{reuseport}; proxy_pass {b}:{iperf_port}; }}\n\
                     server {{ listen {r}:{rr_port}{reuseport}; proxy_pass {b}:{backend_rr_port}; }}\n\
                     }}\n",
                    d = dir.display()
                );
                let file = dir.join("nginx.conf");
                std::fs::write(&file, conf)?;
                let child = ns_cmd(&self.t.router, "nginx")
                    .args(["-e", &dir.join("error.log").display().to_string()])
                    .args(["-p", &dir.display().to_string(), "-c"])
                    .arg(&file)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start nginx")?;
                let proc = Proc(child);
                wait_listening(&self.t.router, rr_port, "nginx");
                wait_listening(&self.t.router, bulk_port, "nginx");
                Ok(Running::Proc(proc))
            }
            Peer::Haproxy => {
                let conf = format!(
                    "global\n  maxconn 8000\n  nbthread 2\n\
                     defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
                     frontend bulk\n  bind {r}:{bulk_port}\n  default_backend bulk\n\
                     backend bulk\n  server s {b}:{iperf_port}\n\
                     frontend rr\n  bind {r}:{rr_port}\n  default_backend rr\n\
                     backend rr\n  server s {b}:{backend_rr_port}\n"
                );
                let file = self.dir.path().join("haproxy.cfg");
                std::fs::write(&file, conf)?;
                let child = ns_cmd(&self.t.router, "haproxy")
                    .args(["-db", "-f"])
                    .arg(&file)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start haproxy")?;
                let proc = Proc(child);
                wait_listening(&self.t.router, rr_port, "haproxy");
                wait_listening(&self.t.router, bulk_port, "haproxy");
                Ok(Running::Proc(proc))
            }
            Peer::Datapath | Peer::DatapathXdpTxOff => {
                let mode = if peer == Peer::Datapath {
                    AttachMode::Auto
                } else {
                    AttachMode::Xdp
                };
                let cfg = DatapathConfig {
                    kind: DatapathKind::Ebpf(mode),
                    interfaces: vec![
                        (self.t.router_client.dev.clone(), None),
                        (self.t.router_backend.dev.clone(), None),
                    ],
                    bpffs: self.dir.path().to_path_buf(),
                    max_connections: 262_144,
                    conntrack_pressure: router_userspace::datapath::Pressure::default(),
                    router_addresses: vec![r],
                    nat_source_ports: DEFAULT_NAT_SOURCE_PORTS,
                };
                let mut dp = self
                    .t
                    .router
                    .enter(move || Datapath::open(&cfg))?
                    .context("open the datapath")?;
                let owner = RouteOwner {
                    task_id: "bench".into(),
                    task_name: "bench".into(),
                    endpoint: String::new(),
                };
                let routes: BTreeMap<u16, TcpRoute> =
                    [(bulk_port, iperf_port), (rr_port, backend_rr_port)]
                        .into_iter()
                        .map(|(port, up)| {
                            (
                                port,
                                TcpRoute {
                                    port,
                                    upstream: SocketAddrV4::new(b, up),
                                    owner: owner.clone(),
                                },
                            )
                        })
                        .collect();
                dp.apply_routes(&routes)?;
                let dp = SharedDatapath::new(dp);
                let sweeps = Arc::clone(&self.sweeps);
                let sweeper = Sweeper::spawn(dp.clone(), DEFAULT_INTERVAL, move |r| {
                    if let Ok(mut s) = sweeps.lock() {
                        s.push(Sweep {
                            connections: r.live,
                            reserved: r.tombstones,
                            took_ms: r.took.as_secs_f64() * 1e3,
                        });
                    }
                })?;
                Ok(Running::Datapath(sweeper, dp))
            }
        }
    }

    /// iperf3 with `streams` streams (at most `rate` in total when given): Gbit/s received,
    /// the whole machine's busy CPU seconds meanwhile, bytes received.
    fn bulk(
        &self,
        peer: Peer,
        target: SocketAddrV4,
        streams: u32,
        rate: Option<&str>,
        seconds: u64,
    ) -> Result<(f64, f64, f64)> {
        let iperf_port = peer.ports().2;
        let mut server = ns_cmd(&self.t.backend, "iperf3")
            .args(["-s", "-1", "-B", &self.backend().to_string()])
            .args(["-p", &iperf_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        wait_listening(&self.t.backend, iperf_port, "iperf3");
        let out = self.dir.path().join("iperf.json");
        // Diagnostics first: reading the backend's counters starts processes, which must not
        // count as busy time of the phase.
        let drops0 = backlog_drops()?;
        let backend0 = self.t.backend.tcp_counters()?;
        let busy0 = machine_busy()?;
        let mut client = ns_cmd(&self.t.client, "iperf3")
            .args([
                "-c",
                &target.ip().to_string(),
                "-p",
                &target.port().to_string(),
            ])
            .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
            // Kernel pacing (SO_MAX_PACING_RATE), not iperf3's own `-b` throttle, which spins
            // in its loop and would count as forwarding cost.
            .args(rate.map(|r| ["--fq-rate", r]).into_iter().flatten())
            .arg("-J")
            .stdout(Stdio::from(
                std::fs::File::create(&out).context("iperf3 output file")?,
            ))
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 client")?;
        let limit = Duration::from_secs(seconds + 30);
        let status = wait_exit(&mut client, limit)?;
        wait_exit(&mut server, Duration::from_secs(10))?;
        let busy = machine_busy()? - busy0;
        let text = std::fs::read_to_string(&out).context("iperf3 output")?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 JSON ({status}): {text}"))?;
        if !status.success() {
            bail!("iperf3 failed ({status}): {}", json["error"]);
        }
        let bps = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 reported no received rate")?;
        let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        // What explains a slow round: retransmits (spurious ones from reordering between the
        // two CPUs' backlogs are common here), packets the per-CPU backlogs refused, and how
        // many segments the receiver could merge into its queues (a forwarded packet that
        // still shares its buffer with the sender cannot be merged into).
        let backend = self.t.backend.tcp_counters()?;
        let delta = |name: &str| {
            let get = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
            get(&backend).saturating_sub(get(&backend0))
        };
        eprintln!(
            "  {streams} stream(s): {:.2} Gbit/s, {} retransmits, {} backlog drops, {busy:.2} CPU s; \
             the receiver merged {} + {} of {} segments",
            bps / 1e9,
            json["end"]["sum_sent"]["retransmits"],
            backlog_drops()?.saturating_sub(drops0),
            delta("TcpExt.TCPRcvCoalesce"),
            delta("TcpExt.TCPBacklogCoalesce"),
            delta("Tcp.InSegs"),
        );
        Ok((bps / 1e9, busy, bytes))
    }

    /// New connections per second: 4 clients connect, exchange a byte and see the server close.
    fn conn_rate(&self, target: SocketAddrV4) -> Result<f64> {
        let secs = self.opts.seconds;
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let client = &self.t.client;
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
                    scope.spawn(move || {
                        client.enter(move || {
                            let end = Instant::now() + Duration::from_secs(secs);
                            while Instant::now() < end {
                                match one_connection(target) {
                                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        })
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("connection worker panicked"))??;
            }
            Ok(())
        })?;
        let elapsed = start.elapsed().as_secs_f64();
        let failed = failed.load(Ordering::Relaxed);
        let done = done.load(Ordering::Relaxed);
        if failed > done / 100 {
            bail!("{failed} of {} connections failed", done + failed);
        }
        Ok(done as f64 / elapsed)
    }

    /// Request/response round trips on one connection: p50 and p99 in µs.
    fn rr(&self, target: SocketAddrV4) -> Result<(f64, f64)> {
        let secs = self.opts.seconds;
        let mut samples = self.t.client.enter(move || -> Result<Vec<f64>> {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"r")?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)?;
            let msg = [0x42u8; RR_MESSAGE];
            let mut back = [0u8; RR_MESSAGE];
            let mut out = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let t0 = Instant::now();
                s.write_all(&msg)?;
                s.read_exact(&mut back)?;
                out.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            Ok(out)
        })??;
        samples.sort_by(f64::total_cmp);
        Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
    }

    fn measure(&self, peer: Peer) -> Result<Sample> {
        let _running = self.start(peer)?;
        let (bulk_target, rr_target) = self.targets(peer);
        let (bulk1, _, _) = self
            .bulk(peer, bulk_target, 1, None, self.opts.seconds)
            .context("bulk, 1 stream")?;
        let (bulk4, _, _) = self
            .bulk(peer, bulk_target, 4, None, self.opts.seconds)
            .context("bulk, 4 streams")?;
        let (conn, p50, p99, cpu, bytes) = if peer.tx_off() {
            (f64::NAN, f64::NAN, f64::NAN, f64::NAN, 0.0)
        } else {
            // Before the connection-rate phase: its ~10^5 connections stay in the datapath's
            // table (closing, then reserved for the backend's TIME_WAIT) for a minute, and the
            // sweeper's walks over them would be counted as forwarding cost.
            let (_, cpu, bytes) = self
                .bulk(
                    peer,
                    bulk_target,
                    1,
                    Some(CPU_PHASE_RATE),
                    CPU_PHASE_LENGTH * self.opts.seconds,
                )
                .context("bulk at a fixed rate (CPU per GB)")?;
            let conn = self.conn_rate(rr_target).context("connection rate")?;
            let (p50, p99) = self.rr(rr_target).context("request/response")?;
            (conn, p50, p99, cpu, bytes)
        };
        Ok(Sample {
            bulk1_gbps: bulk1,
            bulk4_gbps: bulk4,
            conn_per_s: conn,
            rr_p50_us: p50,
            rr_p99_us: p99,
            cpu_s_per_gb: if bytes > 0.0 {
                cpu / (bytes / 1e9)
            } else {
                f64::NAN
            },
        })
    }
}

/// Blocks until `listener` has a connection to accept, or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the duration of the call. Errors (EINTR) just return.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as libc::c_int) };
}

fn one_connection(target: SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"c")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    // The server closes first, so the client's ports never sit in TIME_WAIT.
    let mut rest = [0u8; 1];
    let n = s.read(&mut rest)?;
    if n != 0 {
        return Err(std::io::Error::other("expected EOF"));
    }
    Ok(())
}

/// The backend's server for connection-rate and RR tests: threads blocking in accept. A
/// connection starting with `c` gets one byte and is closed; one starting with `r` is acked and
/// echoes fixed-size messages until EOF.
fn start_server(
    ns: &Netns,
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    for peer in Peer::ALL {
        let port = peer.ports().3;
        let listener = ns.enter(move || {
            let l = TcpListener::bind((addr, port))?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })??;
        let listener = Arc::new(listener);
        for _ in 0..4 {
            let (l, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((conn, _)) => serve(conn),
                        // Wait for the next connection in poll(2), not a sleep: a sleeping
                        // server would add up to its sleep to every connection's time and
                        // quantise the connection rate. The timeout only bounds how late the
                        // thread sees `stop`.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            wait_readable(&l, Duration::from_millis(50))
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
    }
    Ok(threads)
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut first = [0u8; 1];
    if conn.read_exact(&mut first).is_err() {
        return;
    }
    if first[0] == b'c' {
        let _ = conn.write_all(b"k");
        return;
    }
    if conn.write_all(b"k").is_err() {
        return;
    }
    let mut buf = [0u8; RR_MESSAGE];
    while conn.read_exact(&mut buf).is_ok() {
        if conn.write_all(&buf).is_err() {
            return;
        }
    }
}

/// One round of the observability benchmark: the datapath with or without `/metrics` rendered
/// every second.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObservabilitySample {
    pub scraped: bool,
    /// Renders done during the round.
    pub scrapes: u64,
    /// Mean wall time of one render, in milliseconds (its CPU share at one scrape a second is
    /// this over 1000).
    pub render_ms: f64,
    pub bulk1_gbps: f64,
    pub conn_per_s: f64,
}

/// Cost of observability: the datapath peer (auto: TC), 1-stream bulk and connection rate,
/// with `/metrics` rendered every second from the live datapath (what a Prometheus scrape
/// makes the daemon do: every verdict counter, the conntrack count, per-route counters and
/// the status) and without; interleaved rounds, the order alternating.
pub fn observability(opts: Options) -> Result<Vec<ObservabilitySample>> {
    let bench = Bench::new(opts.clone())?;
    let server = start_server(&bench.t.backend, bench.backend(), Arc::clone(&bench.stop))?;
    let running = bench.start(Peer::Datapath)?;
    let Running::Datapath(_, dp) = &running else {
        bail!("the datapath peer did not start a datapath");
    };
    let sources = router_userspace::metrics::Sources {
        datapath: Some(Arc::clone(&dp.0)),
        ..Default::default()
    };
    router_userspace::metrics::render(&sources)
        .map_err(|_| anyhow::anyhow!("rendering the metrics failed"))?;
    let (bulk_target, rr_target) = bench.targets(Peer::Datapath);
    let mut samples = Vec::new();
    for round in 1..=opts.rounds {
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for scraped in order {
            eprintln!(
                "round {round}/{}: metrics {}",
                opts.rounds,
                if scraped {
                    "scraped every second"
                } else {
                    "not scraped"
                }
            );
            let stop = Arc::new(AtomicBool::new(false));
            let scrapes = Arc::new(AtomicU64::new(0));
            let render_ns = Arc::new(AtomicU64::new(0));
            let scraper = scraped.then(|| {
                let (stop, scrapes, render_ns, sources) = (
                    Arc::clone(&stop),
                    Arc::clone(&scrapes),
                    Arc::clone(&render_ns),
                    sources.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let next = started + Duration::from_secs(1);
                        if router_userspace::metrics::render(&sources).is_ok() {
                            scrapes.fetch_add(1, Ordering::Relaxed);
                            render_ns
                                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                        // The scrape interval, in steps so the end of a round stops it.
                        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            });
            let measured = (|| -> Result<(f64, f64)> {
                let (bulk1, _, _) = bench
                    .bulk(Peer::Datapath, bulk_target, 1, None, bench.opts.seconds)
                    .context("bulk, 1 stream")?;
                let conn = bench.conn_rate(rr_target).context("connection rate")?;
                Ok((bulk1, conn))
            })();
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = scraper {
                let _ = t.join();
            }
            let (bulk1, conn) = measured.with_context(|| format!("round {round}"))?;
            let done = scrapes.load(Ordering::Relaxed);
            let sample = ObservabilitySample {
                scraped,
                scrapes: done,
                render_ms: if done > 0 {
                    render_ns.load(Ordering::Relaxed) as f64 / done as f64 / 1e6
                } else {
                    f64::NAN
                },
                bulk1_gbps: bulk1,
                conn_per_s: conn,
            };
            eprintln!("  {sample:?}");
            samples.push(sample);
        }
    }
    drop(running);
    bench.stop.store(true, Ordering::Relaxed);
    for t in server {
        let _ = t.join();
    }
    Ok(samples)
}

/// The observability table: medians with and without scraping, and the difference.
pub fn observability_table(samples: &[ObservabilitySample]) -> String {
    let med = |scraped: bool, f: fn(&ObservabilitySample) -> f64| {
        median(
            samples
                .iter()
                .filter(|s| s.scraped == scraped)
                .map(f)
                .collect(),
        )
    };
    let raw = |scraped: bool, f: fn(&ObservabilitySample) -> f64, digits: usize| {
        samples
            .iter()
            .filter(|s| s.scraped == scraped)
            .map(|s| format!("{:.digits$}", f(s)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut out = String::from(
        "| /metrics | bulk 1 stream Gbit/s | conn/s | raw bulk rounds | raw conn/s rounds |\n\
         |---|---:|---:|---|---|\n",
    );
    for (scraped, name) in [(false, "not scraped"), (true, "scraped every 1 s")] {
        out.push_str(&format!(
            "| {name} | {:.2} | {:.0} | {} | {} |\n",
            med(scraped, |s| s.bulk1_gbps),
            med(scraped, |s| s.conn_per_s),
            raw(scraped, |s| s.bulk1_gbps, 2),
            raw(scraped, |s| s.conn_per_s, 0),
        ));
    }
    let diff = |f: fn(&ObservabilitySample) -> f64| {
        let (off, on) = (med(false, f), med(true, f));
        (on - off) / off * 100.0
    };
    out.push_str(&format!(
        "| difference | {:+.1} % | {:+.1} % | | |\n",
        diff(|s| s.bulk1_gbps),
        diff(|s| s.conn_per_s)
    ));
    let render = med(true, |s| s.render_ms);
    out.push_str(&format!(
        "\nOne render of `/metrics` took {render:.2} ms (median of the rounds' means): at one scrape \
         a second, {:.3} % of one CPU.\n",
        render / 10.0
    ));
    out
}

/// Every peer's samples, one per round.
pub type PeerRounds = BTreeMap<Peer, Vec<Sample>>;

/// All rounds, interleaved: each round measures every peer once, in a rotated order. Returns
/// every peer's rounds, and the conntrack sweeps seen during the datapath's turns.
pub fn run(opts: Options) -> Result<(PeerRounds, Vec<Sweep>)> {
    let bench = Bench::new(opts.clone())?;
    let server = start_server(&bench.t.backend, bench.backend(), Arc::clone(&bench.stop))?;
    let mut results = PeerRounds::new();
    for round in 1..=opts.rounds {
        let mut groups = vec![(false, opts.selected(&Peer::DEFAULT_GROUP))];
        if opts.tx_off_group {
            groups.push((true, opts.selected(&Peer::TX_OFF_GROUP)));
        }
        for (tx_off, mut peers) in groups {
            if peers.is_empty() {
                continue;
            }
            // Rounds start at peers spread over the group: a peer's turn leaves state behind
            // (the connection-rate phase's ~10^5 TIME_WAIT sockets live for a minute), so a
            // fixed order would always measure the same peers on the most worn machine.
            let start = ((round - 1) * peers.len() / opts.rounds) % peers.len();
            peers.rotate_left(start);
            bench.set_tx_off(tx_off)?;
            for peer in peers {
                eprintln!("round {round}/{}: {}", opts.rounds, peer.name());
                let sample = bench
                    .measure(peer)
                    .with_context(|| format!("round {round}, {}", peer.name()))?;
                eprintln!("  {sample:?}");
                results.entry(peer).or_default().push(sample);
            }
        }
        bench.set_tx_off(false)?;
    }
    bench.stop.store(true, Ordering::Relaxed);
    for t in server {
        let _ = t.join();
    }
    let sweeps = bench.sweeps.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((results, sweeps))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Medians per peer.
pub fn medians(results: &BTreeMap<Peer, Vec<Sample>>) -> BTreeMap<Peer, Sample> {
    results
        .iter()
        .map(|(peer, s)| {
            let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
            (
                *peer,
                Sample {
                    bulk1_gbps: m(|x| x.bulk1_gbps),
                    bulk4_gbps: m(|x| x.bulk4_gbps),
                    conn_per_s: m(|x| x.conn_per_s),
                    rr_p50_us: m(|x| x.rr_p50_us),
                    rr_p99_us: m(|x| x.rr_p99_us),
                    cpu_s_per_gb: m(|x| x.cpu_s_per_gb),
                },
            )
        })
        .collect()
}

/// The Markdown table: medians with ratios to the ceiling of the same offload setting.
pub fn table(results: &BTreeMap<Peer, Vec<Sample>>) -> String {
    let med = medians(results);
    let mut out = String::new();
    out.push_str(
        "| peer | bulk 1 stream Gbit/s | bulk 4 streams Gbit/s | conn/s | RR p50 µs | RR p99 µs | CPU s/GB |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let fmt = |v: f64, base: Option<f64>, digits: usize| -> String {
        if v.is_nan() {
            return "–".into();
        }
        match base {
            Some(b) if b > 0.0 && !b.is_nan() => format!("{v:.digits$} ({:.2}×)", v / b),
            _ => format!("{v:.digits$}"),
        }
    };
    for (peer, s) in &med {
        let c = med.get(&peer.ceiling());
        let is_ceiling = *peer == peer.ceiling();
        let base = |f: fn(&Sample) -> f64| if is_ceiling { None } else { c.map(f) };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            peer.name(),
            fmt(s.bulk1_gbps, base(|x| x.bulk1_gbps), 2),
            fmt(s.bulk4_gbps, base(|x| x.bulk4_gbps), 2),
            fmt(s.conn_per_s, base(|x| x.conn_per_s), 0),
            fmt(s.rr_p50_us, base(|x| x.rr_p50_us), 1),
            fmt(s.rr_p99_us, base(|x| x.rr_p99_us), 1),
            fmt(s.cpu_s_per_gb, None, 2),
        ));
    }
    out
}

/// Every round of every peer, in the order measured (`a / b / c`).
pub fn raw_table(results: &BTreeMap<Peer, Vec<Sample>>) -> String {
    let mut out = String::from(
        "| peer | bulk 1 stream Gbit/s | bulk 4 streams Gbit/s | conn/s | RR p50 µs | RR p99 µs |\n\
         |---|---|---|---|---|---|\n",
    );
    for (peer, rounds) in results {
        let col = |f: fn(&Sample) -> f64, digits: usize| -> String {
            rounds
                .iter()
                .map(|s| match f(s) {
                    v if v.is_nan() => "–".to_string(),
                    v => format!("{v:.digits$}"),
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            peer.name(),
            col(|x| x.bulk1_gbps, 1),
            col(|x| x.bulk4_gbps, 1),
            col(|x| x.conn_per_s, 0),
            col(|x| x.rr_p50_us, 1),
            col(|x| x.rr_p99_us, 0),
        ));
    }
    out
}

/// One target of the issue, checked against the medians.
struct Check {
    target: String,
    measured: String,
    met: bool,
}

/// The issue's targets for this datapath, each with the medians it was judged on. Targets
/// whose peers were not measured (`--peers`) are left out.
pub fn targets(results: &BTreeMap<Peer, Vec<Sample>>) -> String {
    let med = medians(results);
    let mut checks = Vec::new();
    let get = |p: Peer| med.get(&p);
    type Metric = (&'static str, fn(&Sample) -> f64);
    let bulk: [Metric; 2] = [
        ("bulk 1 stream", |s| s.bulk1_gbps),
        ("bulk 4 streams", |s| s.bulk4_gbps),
    ];
    if let (Some(dp), Some(ceil)) = (get(Peer::Datapath), get(Peer::Ceiling)) {
        let mut ratio_check = |name: &str, f: fn(&Sample) -> f64, at_least: bool, bound: f64| {
            let r = f(dp) / f(ceil);
            checks.push(Check {
                target: format!(
                    "{name} {} {bound:.2}× the ceiling",
                    if at_least { "≥" } else { "≤" }
                ),
                measured: format!("{:.2}×", r),
                met: if at_least { r >= bound } else { r <= bound },
            });
        };
        for (name, f) in bulk {
            ratio_check(name, f, true, 0.95);
        }
        ratio_check("new connections/s", |s| s.conn_per_s, true, 0.95);
        ratio_check("RR p50", |s| s.rr_p50_us, false, 1.1);
        ratio_check("RR p99", |s| s.rr_p99_us, false, 1.1);
        for nginx in [Peer::NginxStream, Peer::NginxStreamReuseport] {
            let Some(n) = get(nginx) else { continue };
            for (name, f) in bulk {
                let r = f(dp) / f(n);
                checks.push(Check {
                    target: format!("{name} ≥ 2× {}", nginx.name()),
                    measured: format!("{r:.2}× (the ceiling itself: {:.2}×)", f(ceil) / f(n)),
                    met: r >= 2.0,
                });
            }
        }
        if let Some(nft) = get(Peer::Nftables) {
            checks.push(Check {
                target: "new connections/s above nftables".into(),
                measured: format!("{:.0} vs {:.0}", dp.conn_per_s, nft.conn_per_s),
                met: dp.conn_per_s > nft.conn_per_s,
            });
        }
        let nat_peers = [
            Peer::Nftables,
            Peer::NginxStream,
            Peer::NginxStreamReuseport,
            Peer::Haproxy,
        ];
        let others: Vec<(Peer, f64)> = nat_peers
            .iter()
            .filter_map(|p| get(*p).map(|s| (*p, s.cpu_s_per_gb)))
            .collect();
        if !others.is_empty() {
            let (lowest_peer, lowest) = others
                .iter()
                .copied()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((Peer::Nftables, f64::NAN));
            checks.push(Check {
                target: "router CPU per GB the lowest of the NAT peers".into(),
                measured: format!(
                    "{:.2} s/GB vs {:.2} ({})",
                    dp.cpu_s_per_gb,
                    lowest,
                    lowest_peer.name()
                ),
                met: dp.cpu_s_per_gb <= lowest,
            });
        }
    }
    if let (Some(xdp), Some(nft)) = (get(Peer::DatapathXdpTxOff), get(Peer::NftablesTxOff)) {
        for (name, f) in bulk {
            checks.push(Check {
                target: format!("XDP, tx off: {name} above nftables, tx off"),
                measured: format!("{:.2} vs {:.2} Gbit/s", f(xdp), f(nft)),
                met: f(xdp) > f(nft),
            });
        }
    }
    let mut out = String::from("| target | measured (medians) | met |\n|---|---|---|\n");
    for c in checks {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            c.target,
            c.measured,
            if c.met { "yes" } else { "**no**" }
        ));
    }
    out
}

/// Where the raw rounds are written.
pub fn output_path() -> PathBuf {
    router_tests::workspace_root().join("target/bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bulk: f64, conn: f64, p50: f64, p99: f64, cpu: f64) -> Sample {
        Sample {
            bulk1_gbps: bulk,
            bulk4_gbps: bulk,
            conn_per_s: conn,
            rr_p50_us: p50,
            rr_p99_us: p99,
            cpu_s_per_gb: cpu,
        }
    }

    #[test]
    fn peers_list_names_an_unknown_peer() {
        assert_eq!(
            Peer::parse_list("datapath, nginx").unwrap(),
            vec![Peer::Datapath, Peer::NginxStream]
        );
        let e = Peer::parse_list("datapath,nginks").unwrap_err().to_string();
        assert!(
            e.contains("\"nginks\"") && e.contains("nginx-reuseport"),
            "{e}"
        );
    }

    #[test]
    fn a_selection_keeps_its_groups_ceiling_and_skips_groups_not_asked_for() {
        let opts = Options {
            rounds: 1,
            seconds: 1,
            tx_off_group: true,
            only: Some(vec![Peer::Datapath]),
        };
        assert_eq!(
            opts.selected(&Peer::DEFAULT_GROUP),
            vec![Peer::Ceiling, Peer::Datapath]
        );
        assert!(opts.selected(&Peer::TX_OFF_GROUP).is_empty());
    }

    #[test]
    fn targets_are_judged_on_the_medians() {
        let mut results = BTreeMap::new();
        // Medians: ceiling 10 Gbit/s, datapath 9.6 (0.96x), nginx 5 (ratio 1.92x: not met).
        results.insert(
            Peer::Ceiling,
            vec![sample(10.0, 1000.0, 10.0, 50.0, 0.4); 3],
        );
        results.insert(
            Peer::Datapath,
            vec![
                sample(9.6, 990.0, 10.5, 60.0, 0.3),
                sample(1.0, 990.0, 10.5, 60.0, 0.3),
                sample(9.7, 990.0, 10.5, 60.0, 0.3),
            ],
        );
        results.insert(
            Peer::NginxStream,
            vec![sample(5.0, 500.0, 100.0, 300.0, 1.3); 3],
        );
        let t = targets(&results);
        assert!(
            t.contains("| bulk 1 stream ≥ 0.95× the ceiling | 0.96× | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| RR p99 ≤ 1.10× the ceiling | 1.20× | **no** |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| bulk 4 streams ≥ 2× nginx stream | 1.92× (the ceiling itself: 2.00×) | **no** |"
            ),
            "{t}"
        );
        assert!(
            t.contains("CPU per GB the lowest of the NAT peers | 0.30 s/GB vs 1.30"),
            "{t}"
        );
        assert!(!t.contains("XDP"), "no XDP peer measured: {t}");
    }

    #[test]
    fn the_sweep_line_names_the_slowest_sweep_and_the_largest_table() {
        assert_eq!(sweep_summary(&[]), "Conntrack sweeper: no sweep ran.");
        let sweeps = [
            Sweep {
                connections: 10,
                reserved: 0,
                took_ms: 0.5,
            },
            Sweep {
                connections: 150_000,
                reserved: 20_000,
                took_ms: 90.0,
            },
            Sweep {
                connections: 160_000,
                reserved: 1_000,
                took_ms: 80.0,
            },
        ];
        let line = sweep_summary(&sweeps);
        assert!(line.contains("3 sweeps"), "{line}");
        assert!(line.contains("mean 56.8 ms"), "{line}");
        assert!(
            line.contains("slowest 90.0 ms (a table of 150000 connections and 20000 reserved"),
            "{line}"
        );
        assert!(
            line.contains("largest table 160000 connections and 1000 reserved tuples (80.0 ms)"),
            "{line}"
        );
    }
}
