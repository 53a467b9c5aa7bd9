//! The `hostile` section: a spoofed SYN flood on one routed port, peers side by side. Each
//! measurement builds a fresh veth topology (client ns — router ns — backend ns; the spoofed
//! subnet 10.250.0.0/16 routed back into the client ns, where nothing answers), starts a peer
//! (this datapath as the daemon runs it, with its sweeper, in full NAT and with the client's
//! address kept; nftables DNAT + masquerade; nginx `stream`), opens a long connection that streams and checks every echoed byte, starts a
//! legitimate client connecting in a loop (3 s timeout), measures a quiet window, then floods
//! the port at one rate (`None`: as fast as one generator thread goes) and records per attempt
//! whether and how fast it connected, the fill of the table that holds the flood, the bytes the
//! long connection lost, and the machine's busy CPU time above the quiet window per flood SYN.

use crate::throughput::{Proc, backlog_drops, machine_busy, tempdir, wait_listening};
use anyhow::{Context, Result, bail};
use router_tests::connect_loop::{Attempt, ConnectLoop};
use router_tests::flood_setup;
use router_tests::nft_nat;
use router_tests::routes::tcp_routes_in;
use router_tests::syn_flood::{Flood, FloodReport, Target, mac_of};
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_userspace::datapath::SharedDatapath;
use router_userspace::datapath::sweeper::Sweeper;
use router_userspace::routes::PreserveClientIp;
use std::net::SocketAddrV4;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PORT: u16 = 20400;
const BACKEND_PORT: u16 = 8400;
/// The legitimate client's connect timeout (the issue's: a client that gives up after 3 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PAUSE: Duration = Duration::from_millis(10);
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// The quiet window before the flood, for the machine's busy time without it.
const QUIET: Duration = Duration::from_secs(2);
const ECHO_ROUND: usize = 256 * 1024;
/// The connection table of the datapath peer: the daemon's default.
const MAX_CONNECTIONS: u32 = 262_144;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Peer {
    Datapath,
    /// The datapath with its route in destination-only mode (`preserve_client_ip = on`): the
    /// backend answers the spoofed sources themselves, through the router (its default route,
    /// as a container's), and the router sends those SYN-ACKs on toward the spoofed subnet.
    DatapathKeepingClient,
    Nftables,
    NginxStream,
}

impl Peer {
    pub const ALL: [Peer; 4] = [
        Peer::Datapath,
        Peer::DatapathKeepingClient,
        Peer::Nftables,
        Peer::NginxStream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Datapath => "datapath (TC)",
            Peer::DatapathKeepingClient => "datapath (TC), client address kept",
            Peer::Nftables => "nftables DNAT + masquerade",
            Peer::NginxStream => "nginx stream",
        }
    }

    /// Whether this is the datapath (in either mode).
    pub fn is_datapath(self) -> bool {
        matches!(self, Peer::Datapath | Peer::DatapathKeepingClient)
    }
}

/// One measurement: a peer under a flood at one offered rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub peer: Peer,
    /// SYN/s asked for; `None`: as fast as the generator goes.
    pub offered: Option<u64>,
    pub flood: FloodReport,
    /// Legitimate attempts started while the flood ran.
    pub attempts: Vec<Attempt>,
    /// Bytes the long connection echoed back intact, and what it lost (a round that did not
    /// come back intact, with the error).
    pub streamed: u64,
    pub lost: u64,
    pub stream_error: Option<String>,
    /// The largest fill seen of the table that holds the flood (the datapath's half-open
    /// table, nftables' conntrack), and its size.
    pub flood_table: Fill,
    /// The datapath's connection table: the most connections seen in it.
    pub connections_max: Option<u64>,
    /// The machine's busy CPU µs per flood SYN above the quiet window's rate (everything: the
    /// generator, the router, the backend's SYN cookies, and whatever else runs here).
    pub machine_us_per_syn: f64,
    /// During the flood: SYN cookies the backend and router namespaces sent
    /// (`TcpExt.SyncookiesSent`), and SYN retransmissions of the legitimate client
    /// (`TcpExt.TCPSynRetrans` in the client namespace: each a handshake that waited 1 s or
    /// more, e.g. on a tuple the backend still held in SYN_RECV for a spoofed SYN).
    pub syncookies_sent: u64,
    pub client_syn_retrans: u64,
    /// Packets the per-CPU input backlogs dropped during the flood (the whole machine).
    pub backlog_drops: u64,
    /// Packets the datapath dropped during the flood (every `drop_*` verdict).
    pub datapath_drops: Option<u64>,
}

/// A running peer, torn down on drop.
enum Running {
    Datapath(SharedDatapath, #[allow(dead_code)] Sweeper),
    /// The nftables table lives in the measurement's router namespace, which goes with it.
    Nftables,
    Nginx(#[allow(dead_code)] Proc),
}

/// One measurement's namespaces and backend.
struct Setup {
    t: Topology,
    _server: EchoServer,
    dir: tempdir::Dir,
}

/// Streams random data through `client` in rounds until `stop`; returns the bytes verified and
/// the error that ended it early, if any.
fn stream(mut client: Client, stop: &AtomicBool, verified: &AtomicU64) -> Option<String> {
    while !stop.load(Ordering::Relaxed) {
        match client.echo_random(ECHO_ROUND, 16 * 1024, |_| {}) {
            Ok(n) => {
                verified.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Some(format!("{e:#}")),
        }
    }
    client.finish().err().map(|e| format!("{e:#}"))
}

impl Setup {
    fn new() -> Result<Setup> {
        let t = Topology::new()?;
        flood_setup::route_spoofed_subnet(&t)?;
        let server = EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "hostile")?;
        Ok(Setup {
            t,
            _server: server,
            dir: tempdir::Dir::new()?,
        })
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.t.router_addr(), PORT)
    }

    fn start(&self, peer: Peer) -> Result<Running> {
        let (r, b) = (self.t.router_addr(), self.t.backend_end.addr);
        match peer {
            Peer::Datapath | Peer::DatapathKeepingClient => {
                let (dp, sweeper) = flood_setup::run_datapath(
                    &self.t,
                    MAX_CONNECTIONS,
                    self.dir.path(),
                    PORT,
                    SocketAddrV4::new(b, BACKEND_PORT),
                )?;
                if peer == Peer::DatapathKeepingClient {
                    self.keep_client_address(&dp)?;
                }
                Ok(Running::Datapath(dp, sweeper))
            }
            Peer::Nftables => {
                nft_nat::dnat_masquerade(
                    &self.t.router,
                    self.dir.path(),
                    "trhostile",
                    r,
                    &[(PORT, BACKEND_PORT)],
                    b,
                )?;
                Ok(Running::Nftables)
            }
            Peer::NginxStream => {
                let dir = self.dir.path().join("nginx");
                std::fs::create_dir_all(&dir)?;
                let conf = format!(
                    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                     daemon off; master_process on; worker_processes 2;\n\
                     pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
                     events {{ worker_connections 16384; }}\n\
                     stream {{ server {{ listen {r}:{PORT}; proxy_pass {b}:{BACKEND_PORT}; }} }}\n",
                    d = dir.display()
                );
                let file = dir.join("nginx.conf");
                std::fs::write(&file, conf)?;
                let child = self
                    .t
                    .router
                    .command("nginx")
                    .args(["-e", &dir.join("error.log").display().to_string()])
                    .args(["-p", &dir.display().to_string(), "-c"])
                    .arg(&file)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("start nginx")?;
                let proc = Proc(child);
                wait_listening(&self.t.router, PORT, "nginx");
                Ok(Running::Nginx(proc))
            }
        }
    }

    /// Routes the backend's answers through the router (a container's default route is its
    /// host's veth address) and switches the datapath's route to destination-only mode.
    fn keep_client_address(&self, dp: &SharedDatapath) -> Result<()> {
        let via = self.t.router_backend.addr.to_string();
        self.t
            .backend
            .ip(&["route", "add", "default", "via", &via])
            .context("the backend's default route via the router")?;
        let route = [(PORT, self.t.backend_end.addr, BACKEND_PORT)];
        let mut dp = dp.lock()?;
        dp.apply_routes(&tcp_routes_in(&route, PreserveClientIp::On))
            .context("switch the route to destination-only")?;
        let choice = &dp.routes()[&PORT].client_ip;
        if !choice.preserved {
            bail!("the route does not keep the client's address: {choice:?}");
        }
        Ok(())
    }

    /// The fill of the table that holds the flood, and the datapath's connection count.
    fn sample(&self, running: &Running) -> Result<(Fill, Option<u64>)> {
        match running {
            Running::Datapath(dp, _) => {
                let dp = dp.lock()?;
                let (entries, capacity) = dp.half_open_table()?;
                let (live, _) = dp.fill()?;
                Ok((
                    Some((entries.len() as u64 / 2, u64::from(capacity))),
                    Some(live),
                ))
            }
            Running::Nftables => {
                let read = |what: &str| -> Result<u64> {
                    let out = self
                        .t
                        .router
                        .run("cat", &[&format!("/proc/sys/net/netfilter/{what}")])?;
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .with_context(|| format!("{what} is not a number"))
                };
                Ok((
                    Some((read("nf_conntrack_count")?, read("nf_conntrack_max")?)),
                    None,
                ))
            }
            Running::Nginx(_) => Ok((None, None)),
        }
    }

    /// `TcpExt.SyncookiesSent` of the backend and router namespaces, and
    /// `TcpExt.TCPSynRetrans` of the client namespace.
    fn tcp_counters(&self) -> Result<(u64, u64)> {
        let get = |ns: &router_tests::netns::Netns, name: &str| -> Result<u64> {
            Ok(ns.tcp_counters()?.get(name).copied().unwrap_or(0))
        };
        Ok((
            get(&self.t.backend, "TcpExt.SyncookiesSent")?
                + get(&self.t.router, "TcpExt.SyncookiesSent")?,
            get(&self.t.client, "TcpExt.TCPSynRetrans")?,
        ))
    }

    /// Packets the datapath dropped so far (every `drop_*` reason, both hooks).
    fn datapath_drops(running: &Running) -> Result<Option<u64>> {
        let Running::Datapath(dp, _) = running else {
            return Ok(None);
        };
        let drops = dp
            .lock()?
            .stats()?
            .into_iter()
            .filter(|(_, reason, _)| reason.is_drop())
            .map(|(_, _, v)| v.packets)
            .sum();
        Ok(Some(drops))
    }

    fn flood_target(&self) -> Result<Target> {
        Ok(Target {
            dev: self.t.client_end.dev.clone(),
            src_mac: mac_of(&self.t.client, &self.t.client_end.dev)?,
            dst_mac: mac_of(&self.t.router, &self.t.router_client.dev)?,
            dst: self.target(),
        })
    }
}

/// Entries in a table and its size, when the peer has one.
type Fill = Option<(u64, u64)>;

fn max_fill(a: Fill, b: Fill) -> Fill {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Floods `peer` at `rate` for `seconds` in a fresh topology.
pub fn measure(peer: Peer, rate: Option<u64>, seconds: u64) -> Result<Sample> {
    let setup = Setup::new()?;
    let running = setup.start(peer)?;
    let target = setup.target();
    let long = Client::connect(&setup.t.client, target).context("the long connection")?;
    let stop = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicU64::new(0));
    let streamer = {
        let (stop, verified) = (Arc::clone(&stop), Arc::clone(&verified));
        std::thread::spawn(move || stream(long, &stop, &verified))
    };
    let legit = ConnectLoop::start(&setup.t.client, target, CONNECT_TIMEOUT, PAUSE)?;
    let loop_started = Instant::now();
    // The quiet window: the same traffic without the flood.
    let quiet_busy = machine_busy()?;
    std::thread::sleep(QUIET);
    let quiet_rate = (machine_busy()? - quiet_busy) / QUIET.as_secs_f64();
    let flood_offset = loop_started.elapsed();
    let counters_before = setup.tcp_counters()?;
    let (backlog_before, drops_before) = (backlog_drops()?, Setup::datapath_drops(&running)?);
    let busy_before = machine_busy()?;
    let flood = Flood::start(
        &setup.t.client,
        setup.flood_target()?,
        rate,
        Duration::from_secs(seconds),
    )?;
    let (mut fill, mut connections) = (None, None);
    while !flood.finished() {
        let (f, c) = setup.sample(&running)?;
        fill = max_fill(fill, f);
        connections = connections.max(c);
        // A sampling interval, not a readiness wait.
        std::thread::sleep(SAMPLE_EVERY);
    }
    let (f, c) = setup.sample(&running)?;
    fill = max_fill(fill, f);
    connections = connections.max(c);
    let flood = flood.stop()?;
    let busy = machine_busy()? - busy_before;
    let counters = setup.tcp_counters()?;
    let (backlog_after, drops_after) = (backlog_drops()?, Setup::datapath_drops(&running)?);
    let window_end = flood_offset + flood.elapsed;
    let attempts: Vec<Attempt> = legit
        .stop()?
        .into_iter()
        .filter(|a| a.at >= flood_offset && a.at < window_end)
        .collect();
    stop.store(true, Ordering::Relaxed);
    let stream_error = streamer
        .join()
        .map_err(|_| anyhow::anyhow!("the streaming thread panicked"))?;
    let flood_seconds = flood.elapsed.as_secs_f64();
    let above_quiet = (busy - quiet_rate * flood_seconds).max(0.0);
    drop(running);
    Ok(Sample {
        peer,
        offered: rate,
        flood,
        attempts,
        streamed: verified.load(Ordering::Relaxed),
        lost: if stream_error.is_some() {
            ECHO_ROUND as u64
        } else {
            0
        },
        stream_error,
        flood_table: fill,
        connections_max: connections,
        machine_us_per_syn: above_quiet * 1e6 / flood.sent.max(1) as f64,
        syncookies_sent: counters.0.saturating_sub(counters_before.0),
        client_syn_retrans: counters.1.saturating_sub(counters_before.1),
        backlog_drops: backlog_after.saturating_sub(backlog_before),
        datapath_drops: drops_after
            .zip(drops_before)
            .map(|(a, b)| a.saturating_sub(b)),
    })
}

/// Options of the section.
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    /// Offered rates, SYN/s; `None` = as fast as the generator goes.
    pub rates: Vec<Option<u64>>,
    /// A long run of the datapath alone at 10 000 SYN/s (0: none).
    pub sustained_seconds: u64,
}

/// Every peer at every rate, `rounds` times, peers interleaved (their order rotates per round),
/// then the sustained run.
pub fn run(opts: &Options) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        for rate in &opts.rates {
            for i in 0..Peer::ALL.len() {
                let peer = Peer::ALL[(i + round) % Peer::ALL.len()];
                eprintln!(
                    "hostile: round {}/{}, {} at {}",
                    round + 1,
                    opts.rounds,
                    peer.name(),
                    rate.map_or("max".to_string(), |r| format!("{r} SYN/s"))
                );
                samples.push(measure(peer, *rate, opts.seconds)?);
            }
        }
    }
    if opts.sustained_seconds > 0 {
        eprintln!(
            "hostile: datapath at 10000 SYN/s for {} s",
            opts.sustained_seconds
        );
        samples.push(measure(
            Peer::Datapath,
            Some(SUSTAINED_RATE),
            opts.sustained_seconds,
        )?);
    }
    Ok(samples)
}

/// The rate of the sustained run.
pub const SUSTAINED_RATE: u64 = 10_000;

/// `datapath-bench hostile [--rounds N] [--seconds S] [--rates 10000,50000,max]
/// [--sustained-seconds T]`: runs the section, prints the Markdown report and writes the raw
/// rounds as JSON.
pub fn section(args: &[String]) -> Result<()> {
    let number = |flag: &str| crate::arg(args, flag);
    let rates = match args.iter().position(|a| a == "--rates") {
        Some(i) => args
            .get(i + 1)
            .context("--rates needs a comma-separated list")?
            .split(',')
            .map(|r| match r.trim() {
                "max" => Ok(None),
                n => n
                    .parse()
                    .map(Some)
                    .with_context(|| format!("--rates: {n:?} is not a number or max")),
            })
            .collect::<Result<Vec<_>>>()?,
        None => vec![Some(10_000), Some(50_000), None],
    };
    let opts = Options {
        rounds: number("--rounds").unwrap_or(3) as usize,
        seconds: number("--seconds").unwrap_or(5),
        rates,
        sustained_seconds: number("--sustained-seconds").unwrap_or(120),
    };
    let samples = run(&opts)?;
    let dir = crate::throughput::output_path();
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("hostile.json");
    std::fs::write(&file, serde_json::to_string_pretty(&samples)?)?;
    use crate::hostile_report as report;
    println!("{}", report::table(&samples, opts.seconds));
    println!("Targets:\n\n{}\n", report::targets(&samples, opts.seconds));
    println!(
        "Raw rounds:\n\n{}",
        report::raw_table(&samples, opts.seconds)
    );
    eprintln!("raw rounds: {}", file.display());
    Ok(())
}
