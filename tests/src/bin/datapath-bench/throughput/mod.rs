//! Forwarding peers compared in one veth topology (client ns — router ns — backend ns), in
//! interleaved rounds: plain IP forwarding without NAT (the ceiling), nftables DNAT +
//! masquerade, nginx `stream`, haproxy (a userspace proxy) and this datapath (`auto`: TC on
//! veth); then, with the sending ends' tx offload off as a NIC delivers, the ceiling, nftables
//! and the datapath in native XDP. Metrics: bulk throughput (iperf3, 1 and 4 streams), new
//! connections per second, request/response latency (p50/p99), and CPU per GB: the whole
//! machine's busy time per GB moved at one fixed offered rate (`samples::CPU_PHASE_RATE`).

mod backend;
mod bench;
mod host;
mod observability;
mod peer_start;
mod peers;
mod phases;
mod report;
mod samples;

use anyhow::{Context, Result};
use backend::start_server;
use bench::Bench;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(crate) use host::{Proc, backlog_drops, machine_busy, tempdir, wait_listening};
pub use observability::{observability, observability_table};
pub use peers::{Options, Peer};
pub(crate) use report::{median, percentile};
pub use report::{output_path, raw_table, sweep_summary, table, targets};
pub use samples::{Sample, Sweep};

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
