//! The `churn` section: many clients, one task, short connections the task closes first.
//! Per measurement a fresh veth topology; the client namespace gets [`CLIENTS`] addresses and
//! a narrow ephemeral port range (`--client-ports`), so every client's ports wrap many times in
//! a run while the task still holds their tuples in TIME_WAIT; workers bound to the addresses
//! connect, read the task's answer and close, as fast as they go. Peers: the no-NAT ceiling
//! (plain forwarding to the task's address), nftables DNAT + masquerade and this datapath.
//! Recorded: connections finished in each second (the report judges 5 s windows:
//! `churn_report`), connects that waited for a SYN retransmission, the clients'
//! `TCPSynRetrans`, the task's PAWS counters (a SYN on a tuple the task holds in TIME_WAIT
//! whose timestamp is older than the last one seen there: answered with an ACK, the client
//! resets and retransmits after 1 s), the backend's packets the datapath forwarded to a client
//! still in SYN_SENT (`forwarded_before_handshake`: each makes that client reset and retransmit
//! its SYN), and the datapath's drops by reason.

use crate::churn_report::report;
use crate::throughput::{backlog_drops, tempdir};
use anyhow::{Context, Result};
use router_common::stats::StatReason;
use router_tests::bpf_run_time::{RunTime, RunTimeAccounting};
use router_tests::churn::{self, Churn, CloseFirstServer, ConnectTimes};
use router_tests::flood_setup;
use router_tests::nft_nat;
use router_tests::topology::Topology;
use router_userspace::datapath::SharedDatapath;
use router_userspace::datapath::options::NatSourcePorts;
use router_userspace::datapath::sweeper::Sweeper;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const PORT: u16 = 20500;
const BACKEND_PORT: u16 = 8500;
/// Client addresses in the client namespace.
pub const CLIENTS: u8 = 16;
/// Client workers: two per address.
const WORKERS: usize = 2 * CLIENTS as usize;
const MAX_CONNECTIONS: u32 = 262_144;

/// The datapath's NAT source ports in [`Peer::DatapathNarrowNat`]: 1 024 ports outside the
/// router host's ephemeral range (Linux's default 32768-60999) and the task port.
const NARROW_NAT_PORTS: (u16, u16) = (61_000, 62_023);
/// The router host's ephemeral range in [`Peer::DatapathClientPorts`]: above the clients'
/// ports (40000 up), so the datapath keeps each client's own port toward the task.
const ROUTER_RANGE_ABOVE_CLIENTS: &str = "50000 60999";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Peer {
    Ceiling,
    Nftables,
    Datapath,
    /// The datapath with its NAT source ports narrowed to [`NARROW_NAT_PORTS`]: how much of
    /// its cost is the spread of tuples over the default 35 280 ports.
    DatapathNarrowNat,
    /// The datapath on a router whose own ephemeral range leaves the clients' ports out, so
    /// each client keeps its own port toward the task where it is free there.
    DatapathClientPorts,
}

impl Peer {
    /// What a run measures unless `--peers` says otherwise.
    pub const DEFAULT: [Peer; 3] = [Peer::Ceiling, Peer::Nftables, Peer::Datapath];
    pub const ALL: [Peer; 5] = [
        Peer::Ceiling,
        Peer::Nftables,
        Peer::Datapath,
        Peer::DatapathNarrowNat,
        Peer::DatapathClientPorts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Ceiling => "ceiling (no NAT)",
            Peer::Nftables => "nftables DNAT + masquerade",
            Peer::Datapath => "datapath (TC)",
            Peer::DatapathNarrowNat => "datapath (TC), NAT ports 61000-62023",
            Peer::DatapathClientPorts => "datapath (TC), clients' own ports kept",
        }
    }

    /// The name `--peers` takes.
    pub fn flag(self) -> &'static str {
        match self {
            Peer::Ceiling => "ceiling",
            Peer::Nftables => "nftables",
            Peer::Datapath => "datapath",
            Peer::DatapathNarrowNat => "datapath-narrow-nat",
            Peer::DatapathClientPorts => "datapath-client-ports",
        }
    }

    pub fn is_datapath(self) -> bool {
        matches!(
            self,
            Peer::Datapath | Peer::DatapathNarrowNat | Peer::DatapathClientPorts
        )
    }

    /// A comma-separated list of [`Peer::flag`] names.
    pub fn parse_list(list: &str) -> Result<Vec<Peer>> {
        list.split(',')
            .map(|name| {
                Peer::ALL
                    .into_iter()
                    .find(|p| p.flag() == name.trim())
                    .with_context(|| {
                        let known: Vec<&str> = Peer::ALL.iter().map(|p| p.flag()).collect();
                        format!(
                            "unknown churn peer {name:?}: expected one of {}",
                            known.join(", ")
                        )
                    })
            })
            .collect()
    }
}

/// One measurement of one peer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub peer: Peer,
    pub seconds: f64,
    pub connects: ConnectTimes,
    /// Connections finished in each whole second of the run.
    pub per_second: Vec<u64>,
    /// `TcpExt.TCPSynRetrans` of the client namespace.
    pub client_syn_retrans: u64,
    /// The task namespace's `TcpExt.PAWS*` counters, summed.
    pub task_paws: u64,
    /// The task namespace's `TcpExt.ListenDrops`: SYNs its listener dropped (a full queue when
    /// the accepting threads fall behind on the shared CPUs), each a 1 s SYN retransmission.
    pub task_listen_drops: u64,
    /// The datapath's drops by reason (`drop_*` verdicts), and its passes of packets whose
    /// tuple it did not know (`pass_no_connection` and the like: the router's own stack gets
    /// them and resets the connection).
    pub datapath_drops_and_passes: BTreeMap<String, u64>,
    /// Packets the kernel dropped at a CPU's input backlog (`/proc/net/softnet_stat`, the whole
    /// machine): a SYN or SYN-ACK lost there is retransmitted after 1 s on any path.
    pub backlog_drops: u64,
    /// The datapath's `forwarded_before_handshake` verdicts: backend packets on a half-open
    /// connection that were neither its SYN-ACK nor a RST.
    pub before_handshake: u64,
    /// CPU time the datapath's programs spent in the run, in nanoseconds (0 for the others).
    pub datapath_cpu_ns: u64,
    /// Runs of the datapath's programs in the run (packets they saw).
    pub datapath_runs: u64,
    /// Every TCP counter of the client namespace that moved in the run (`/proc/net/snmp` and
    /// `netstat`), by how much: in the raw rounds only, for tracing a rare stall to its kind.
    pub client_counters: BTreeMap<String, u64>,
    /// The same for the task namespace.
    pub task_counters: BTreeMap<String, u64>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.connects.completed as f64 / self.seconds
    }

    /// The datapath programs' CPU time per second of the run, in milliseconds.
    pub fn datapath_cpu_ms_per_s(&self) -> f64 {
        self.datapath_cpu_ns as f64 / 1e6 / self.seconds
    }

    /// The datapath programs' CPU time per finished connection, in nanoseconds.
    pub fn datapath_ns_per_connection(&self) -> f64 {
        self.datapath_cpu_ns as f64 / self.connects.completed.max(1) as f64
    }

    /// The datapath programs' runs per finished connection.
    pub fn datapath_runs_per_connection(&self) -> f64 {
        self.datapath_runs as f64 / self.connects.completed.max(1) as f64
    }

    /// Connections per second in each whole window of `seconds` seconds, in order.
    pub fn windows(&self, seconds: usize) -> Vec<f64> {
        self.per_second
            .chunks_exact(seconds.max(1))
            .map(|w| w.iter().sum::<u64>() as f64 / w.len() as f64)
            .collect()
    }
}

/// A running peer, torn down on drop.
enum Running {
    Plain,
    Datapath(SharedDatapath, #[allow(dead_code)] Sweeper),
}

struct Setup {
    t: Topology,
    _server: CloseFirstServer,
    sources: Vec<Ipv4Addr>,
    dir: tempdir::Dir,
}

impl Setup {
    fn new(client_ports: u16) -> Result<Setup> {
        let t = Topology::new()?;
        let server = CloseFirstServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, 2)?;
        let base = u32::from(t.client_end.addr) & 0xffff_ff00;
        let sources: Vec<Ipv4Addr> = (0..CLIENTS)
            .map(|i| Ipv4Addr::from(base | (100 + u32::from(i))))
            .collect();
        for a in &sources {
            t.client
                .ip(&["addr", "add", &format!("{a}/24"), "dev", &t.client_end.dev])?;
        }
        let last = 40_000 + client_ports.max(1) - 1;
        t.client
            .sysctl(&format!("net.ipv4.ip_local_port_range=40000 {last}"))?;
        Ok(Setup {
            t,
            _server: server,
            sources,
            dir: tempdir::Dir::new()?,
        })
    }

    fn start(&self, peer: Peer) -> Result<(Running, SocketAddrV4)> {
        let (r, b) = (self.t.router_addr(), self.t.backend_end.addr);
        let routed = SocketAddrV4::new(r, PORT);
        match peer {
            Peer::Ceiling => {
                self.t.route_client_and_backend_directly()?;
                Ok((Running::Plain, SocketAddrV4::new(b, BACKEND_PORT)))
            }
            Peer::Nftables => {
                nft_nat::dnat_masquerade(
                    &self.t.router,
                    self.dir.path(),
                    "trchurn",
                    r,
                    &[(PORT, BACKEND_PORT)],
                    b,
                )?;
                Ok((Running::Plain, routed))
            }
            Peer::Datapath | Peer::DatapathNarrowNat | Peer::DatapathClientPorts => {
                let nat_ports = match peer {
                    Peer::DatapathNarrowNat => {
                        NatSourcePorts::Range(NARROW_NAT_PORTS.0, NARROW_NAT_PORTS.1)
                    }
                    _ => router_userspace::datapath::DEFAULT_NAT_SOURCE_PORTS,
                };
                if peer == Peer::DatapathClientPorts {
                    // Read by the datapath when it opens.
                    self.t.router.sysctl(&format!(
                        "net.ipv4.ip_local_port_range={ROUTER_RANGE_ABOVE_CLIENTS}"
                    ))?;
                }
                let (dp, sweeper) =
                    flood_setup::share_and_sweep(flood_setup::open_datapath_with_nat_ports(
                        &self.t,
                        MAX_CONNECTIONS,
                        self.dir.path(),
                        PORT,
                        SocketAddrV4::new(b, BACKEND_PORT),
                        nat_ports,
                    )?)?;
                Ok((Running::Datapath(dp, sweeper), routed))
            }
        }
    }

    /// Every TCP counter of the client and the task namespace.
    fn counters(&self) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
        Ok((
            self.t.client.tcp_counters()?,
            self.t.backend.tcp_counters()?,
        ))
    }
}

/// The datapath's verdicts that tell about churn: drops by reason, passes of packets it should
/// have known, and `forwarded_before_handshake` under its own name. Empty for the other peers.
fn verdicts(running: &Running) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    if let Running::Datapath(dp, _) = running {
        for (_, reason, value) in dp.lock()?.stats()? {
            // A pass of a churn packet (a tuple the datapath does not know) hands it to the
            // router's own stack, which answers a connection it does not have with a RST.
            let lost = matches!(
                reason,
                StatReason::PassNoConnection | StatReason::PassNoRoute | StatReason::PassFibFailed
            );
            let wanted = reason.is_drop() || lost || reason == StatReason::ForwardedBeforeHandshake;
            if wanted && value.packets > 0 {
                *out.entry(reason.name().to_string()).or_default() += value.packets;
            }
        }
    }
    Ok(out)
}

/// Churns `peer` for `seconds` in a fresh topology.
pub fn measure(
    peer: Peer,
    seconds: u64,
    client_ports: u16,
    accounting: Option<&RunTimeAccounting>,
) -> Result<Sample> {
    let setup = Setup::new(client_ports)?;
    let (running, target) = setup.start(peer)?;
    let before = setup.counters()?;
    let verdicts_before = verdicts(&running)?;
    let cpu_before = cpu_so_far(accounting)?;
    let backlog_before = backlog_drops()?;
    let churn = Churn::start(&setup.t.client, &setup.sources, target, WORKERS)?;
    let started = Instant::now();
    let mut per_second = Vec::new();
    let mut last = 0;
    for s in 1..=seconds {
        let next = started + Duration::from_secs(s);
        // A sampling interval, not a readiness wait.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let done = churn.done();
        per_second.push(done - last);
        last = done;
    }
    let connects = churn.stop()?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_so_far(accounting)?.since(cpu_before);
    let backlog = backlog_drops()?.saturating_sub(backlog_before);
    let after = setup.counters()?;
    let client_counters = moved(&before.0, &after.0);
    let task_counters = moved(&before.1, &after.1);
    let (client_syn_retrans, task_paws) =
        churn::syn_retransmits_and_paws_in(&client_counters, &task_counters);
    let mut datapath_drops_and_passes = verdicts(&running)?;
    for (reason, n) in verdicts_before {
        if let Some(v) = datapath_drops_and_passes.get_mut(&reason) {
            *v = v.saturating_sub(n);
        }
    }
    let before_handshake = datapath_drops_and_passes
        .remove(StatReason::ForwardedBeforeHandshake.name())
        .unwrap_or(0);
    datapath_drops_and_passes.retain(|_, n| *n > 0);
    drop(running);
    Ok(Sample {
        peer,
        seconds: elapsed,
        connects,
        per_second,
        client_syn_retrans,
        task_paws,
        task_listen_drops: task_counters
            .get("TcpExt.ListenDrops")
            .copied()
            .unwrap_or(0),
        datapath_drops_and_passes,
        backlog_drops: backlog,
        before_handshake,
        datapath_cpu_ns: u64::try_from(cpu.time.as_nanos()).unwrap_or(u64::MAX),
        datapath_runs: cpu.runs,
        client_counters,
        task_counters,
    })
}

/// The counters of `after` that differ from `before`, by how much they grew.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, v)| {
            let grew = v.saturating_sub(before.get(name).copied().unwrap_or(0));
            (grew > 0).then(|| (name.clone(), grew))
        })
        .collect()
}

/// The datapath programs' run time so far; nothing without accounting.
fn cpu_so_far(accounting: Option<&RunTimeAccounting>) -> Result<RunTime> {
    accounting.map_or(Ok(RunTime::default()), RunTimeAccounting::datapath)
}

/// What a run measures.
pub struct Options {
    pub peers: Vec<Peer>,
    pub rounds: usize,
    pub seconds: u64,
    pub client_ports: u16,
    /// The kernel's run-time accounting of BPF programs on during the run: the datapath's CPU
    /// per connection, at the price of two clock reads per program run (the datapath's rate
    /// then understates what it does without them).
    pub cpu: bool,
}

/// Every one of the peers `rounds` times, interleaved (the order rotates per round).
pub fn run(o: &Options) -> Result<Vec<Sample>> {
    let accounting = if o.cpu {
        Some(RunTimeAccounting::enable()?)
    } else {
        None
    };
    let mut samples = Vec::new();
    for round in 0..o.rounds {
        for i in 0..o.peers.len() {
            let peer = o.peers[(i + round) % o.peers.len()];
            eprintln!("churn: round {}/{}, {}", round + 1, o.rounds, peer.name());
            samples.push(measure(
                peer,
                o.seconds,
                o.client_ports,
                accounting.as_ref(),
            )?);
        }
    }
    Ok(samples)
}

/// `datapath-bench churn [--rounds N] [--seconds S] [--client-ports P] [--peers a,b] [--cpu]`:
/// runs the section, prints the Markdown report and writes the raw rounds as JSON.
pub fn section(args: &[String]) -> Result<()> {
    let number = |flag: &str| crate::arg(args, flag);
    let rounds = number("--rounds").unwrap_or(3) as usize;
    let seconds = number("--seconds").unwrap_or(60);
    let client_ports = number("--client-ports").unwrap_or(1000) as u16;
    let peers = match args.iter().position(|a| a == "--peers") {
        Some(i) => Peer::parse_list(
            args.get(i + 1)
                .context("--peers needs a comma-separated list")?,
        )?,
        None => Peer::DEFAULT.to_vec(),
    };
    let samples = run(&Options {
        peers,
        rounds,
        seconds,
        client_ports,
        cpu: args.iter().any(|a| a == "--cpu"),
    })?;
    let dir = crate::throughput::output_path();
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("churn.json");
    std::fs::write(&file, serde_json::to_string_pretty(&samples)?)?;
    println!("{}", report(&samples));
    eprintln!("raw rounds: {}", file.display());
    Ok(())
}
