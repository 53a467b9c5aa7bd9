//! The `churn` section's report: each peer's median round, the conn/s of every 5 s window, the
//! targets judged on them, and the raw rounds.
//!
//! "Throughout" is judged on windows of [`WINDOW_SECONDS`], pooled over a peer's rounds: the
//! datapath's slowest window against the ceiling's median window (the target, ≥ 0.95×), and
//! against the ceiling's own slowest window, so that dips of the shared machine, which the
//! ceiling meets too, are visible as such; and per round, the datapath's slowest window against
//! that round's ceiling median window (peers of one round ran minutes apart, not further).

use crate::churn::{Peer, Sample};
use crate::throughput::median;
use std::collections::BTreeMap;

/// The window "throughout" is judged on, in seconds.
pub const WINDOW_SECONDS: usize = 5;

/// A peer's windows pooled over its rounds, slowest first (conn/s).
fn pooled_windows(samples: &[Sample], peer: Peer) -> Vec<f64> {
    let mut all: Vec<f64> = samples
        .iter()
        .filter(|s| s.peer == peer)
        .flat_map(|s| s.windows(WINDOW_SECONDS))
        .collect();
    all.sort_by(f64::total_cmp);
    all
}

/// A peer's windows pooled over its rounds: (slowest, median, fastest) conn/s.
fn window_spread(samples: &[Sample], peer: Peer) -> (f64, f64, f64) {
    let all = pooled_windows(samples, peer);
    match (all.first(), all.last()) {
        (Some(lo), Some(hi)) => (*lo, median(all.clone()), *hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// The lowest ratio of `peer`'s windows to the ceiling's, rank by rank (slowest against
/// slowest, ..., fastest against fastest; each pooled over the rounds): "throughout" judged
/// without charging the machine's own slow seconds to the datapath, which the ceiling has too
/// (its slowest window is often 0.8x its median here).
fn lowest_ranked_ratio(samples: &[Sample], peer: Peer) -> f64 {
    ranked_ratio(
        &pooled_windows(samples, peer),
        &pooled_windows(samples, Peer::Ceiling),
    )
}

/// The lowest `a[i] / b[j]` over ranks, `j` the same quantile of `b` as `i` of `a` (both
/// sorted ascending); NaN when either is empty.
fn ranked_ratio(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let rank_in_b = |i: usize| {
        if a.len() == 1 {
            0
        } else {
            (i * (b.len() - 1) + (a.len() - 1) / 2) / (a.len() - 1)
        }
    };
    a.iter()
        .enumerate()
        .map(|(i, x)| x / b[rank_in_b(i)])
        .fold(f64::INFINITY, f64::min)
}

fn slowest_window(s: &Sample) -> f64 {
    s.windows(WINDOW_SECONDS)
        .into_iter()
        .fold(f64::NAN, f64::min)
}

fn row(s: &Sample) -> String {
    let drops: Vec<String> = s
        .datapath_drops_and_passes
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let windows: Vec<String> = s
        .windows(WINDOW_SECONDS)
        .iter()
        .map(|w| format!("{w:.0}"))
        .collect();
    format!(
        "| {} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        s.peer.name(),
        s.rate(),
        slowest_window(s),
        windows.join(" · "),
        s.connects.percentile_ms(0.5),
        s.connects.percentile_ms(0.99),
        s.connects.stalled,
        s.connects.failed,
        s.client_syn_retrans,
        s.task_paws,
        s.task_listen_drops,
        s.backlog_drops,
        if s.peer.is_datapath() {
            s.before_handshake.to_string()
        } else {
            "–".to_string()
        },
        if s.peer.is_datapath() && s.datapath_runs > 0 {
            format!(
                "{:.0} ({:.0} ns/conn, {:.1} runs/conn)",
                s.datapath_cpu_ms_per_s(),
                s.datapath_ns_per_connection(),
                s.datapath_runs_per_connection()
            )
        } else {
            "–".to_string()
        },
        if drops.is_empty() {
            "–".to_string()
        } else {
            drops.join(", ")
        },
    )
}

const HEADER: &str = "| peer | conn/s | slowest 5 s window | conn/s per 5 s window | \
connect p50 ms (≤) | connect p99 ms (≤) | connects ≥ 0.9 s | failed | client SYN retransmits | \
task PAWS rejects | task listen drops | input backlog drops | backend packets to a client in \
SYN_SENT | datapath CPU ms/s | datapath drops, passes of unknown tuples |\n\
|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// A peer's figure summed over its rounds, with the rounds' own: "total (a, b, c)".
fn over_rounds(samples: &[Sample], peer: Peer, f: fn(&Sample) -> u64) -> (u64, String) {
    let each: Vec<u64> = samples.iter().filter(|s| s.peer == peer).map(f).collect();
    let list: Vec<String> = each.iter().map(u64::to_string).collect();
    (
        each.iter().sum(),
        format!("{} (rounds: {})", each.iter().sum::<u64>(), list.join(", ")),
    )
}

/// The median round of each peer (by conn/s), the windows, then the targets judged on them.
pub fn report(samples: &[Sample]) -> String {
    let peers = peers_of(samples);
    let mut out = format!("Median round per peer (by conn/s):\n\n{HEADER}\n");
    let mut medians: BTreeMap<Peer, &Sample> = BTreeMap::new();
    for &peer in &peers {
        let mut of: Vec<&Sample> = samples.iter().filter(|s| s.peer == peer).collect();
        of.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        if let Some(m) = of.get(of.len() / 2) {
            medians.insert(peer, m);
            out.push_str(&row(m));
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n{WINDOW_SECONDS} s windows pooled over each peer's rounds (conn/s):\n\n\
         | peer | slowest | median | fastest |\n|---|---:|---:|---:|\n"
    ));
    for &peer in &peers {
        let (lo, mid, hi) = window_spread(samples, peer);
        out.push_str(&format!(
            "| {} | {lo:.0} | {mid:.0} | {hi:.0} |\n",
            peer.name()
        ));
    }
    if let (Some(n), Some(d)) = (medians.get(&Peer::Nftables), medians.get(&Peer::Datapath)) {
        out.push_str(&targets(samples, &peers, n, d));
    }
    out.push_str(&against_ceiling(samples, &peers));
    out.push_str(&format!("\nRaw rounds:\n\n{HEADER}\n"));
    for s in samples {
        out.push_str(&row(s));
        out.push('\n');
    }
    out
}

/// The targets, judged on medians and pooled windows (`n`, `d`: the median rounds of
/// nftables and the datapath).
fn targets(samples: &[Sample], peers: &[Peer], n: &Sample, d: &Sample) -> String {
    let ratio = median_rate(samples, Peer::Datapath) / median_rate(samples, Peer::Ceiling);
    let ranked = lowest_ranked_ratio(samples, Peer::Datapath);
    let (dp_slowest, _, _) = window_spread(samples, Peer::Datapath);
    let (c_slowest, c_median, _) = window_spread(samples, Peer::Ceiling);
    let (retrans, retrans_list) = over_rounds(samples, Peer::Datapath, |s| s.client_syn_retrans);
    let (paws, paws_list) = over_rounds(samples, Peer::Datapath, |s| s.task_paws);
    let (_, before_list) = over_rounds(samples, Peer::Datapath, |s| s.before_handshake);
    let (_, listen_list) = over_rounds(samples, Peer::Datapath, |s| s.task_listen_drops);
    let (nft_retrans, _) = over_rounds(samples, Peer::Nftables, |s| s.client_syn_retrans);
    let per_round: Vec<String> = samples
        .chunks(peers.len())
        .filter_map(|round| {
            let (_, c_median, _) = window_spread(round, Peer::Ceiling);
            let d = round.iter().find(|s| s.peer == Peer::Datapath)?;
            Some(format!("{:.2}", slowest_window(d) / c_median))
        })
        .collect();
    let mark = |ok: bool| if ok { "[x]" } else { "[ ]" };
    format!(
        "\nTargets:\n\n- {} conn/s ≥ 0.95× the ceiling: {ratio:.2}× (median conn/s)\n\
         - {} throughout: every {WINDOW_SECONDS} s window of the datapath ≥ 0.95× the \
         ceiling's window of the same rank (slowest against slowest, ..., pooled over the \
         rounds): lowest {:.2}×; stricter, the datapath's slowest window {:.2}× the ceiling's \
         median window and {:.2}× the ceiling's own slowest (per round, against that round's \
         ceiling median window: {})\n\
         - {} no SYN retransmit from a tuple the task holds in TIME_WAIT: client SYN \
         retransmits {retrans_list}, task PAWS rejects {paws_list}, backend packets forwarded \
         to a client in SYN_SENT {before_list}, over the datapath's rounds (task listen \
         drops, not the datapath's: {listen_list})\n\
         - {} better than nftables: {} vs {} stalled connects (median rounds), {retrans} vs \
         {nft_retrans} client SYN retransmits (all rounds)\n",
        mark(ratio >= 0.95),
        mark(ranked >= 0.95),
        ranked,
        dp_slowest / c_median,
        dp_slowest / c_slowest,
        per_round.join(", "),
        mark(paws == 0 && retrans == 0),
        mark(d.connects.stalled < n.connects.stalled.max(1) && retrans <= nft_retrans),
        d.connects.stalled,
        n.connects.stalled,
    )
}

/// The peers of a run, in the order they first ran.
fn peers_of(samples: &[Sample]) -> Vec<Peer> {
    let mut peers = Vec::new();
    for s in samples {
        if !peers.contains(&s.peer) {
            peers.push(s.peer);
        }
    }
    peers
}

/// The median of `figure` over a peer's rounds.
fn median_of(samples: &[Sample], peer: Peer, figure: fn(&Sample) -> f64) -> f64 {
    median(
        samples
            .iter()
            .filter(|s| s.peer == peer)
            .map(figure)
            .collect(),
    )
}

/// A peer's median conn/s over its rounds.
fn median_rate(samples: &[Sample], peer: Peer) -> f64 {
    median_of(samples, peer, Sample::rate)
}

/// Every peer but the ceiling against the ceiling of the same run: median conn/s, the lowest
/// rank-by-rank window ratio, and (the datapath's) CPU per connection, so that variants of the
/// datapath run side by side compare on the same minutes of the machine.
fn against_ceiling(samples: &[Sample], peers: &[Peer]) -> String {
    let ceiling = median_rate(samples, Peer::Ceiling);
    let mut out = String::from(
        "\nAgainst the ceiling of this run:\n\n| peer | median conn/s ÷ ceiling | lowest \
         window ratio (rank by rank) | median datapath ns per connection |\n|---|---:|---:|---:|\n",
    );
    for &peer in peers.iter().filter(|p| **p != Peer::Ceiling) {
        let measured = samples
            .iter()
            .any(|s| s.peer == peer && s.datapath_runs > 0);
        let cost = if measured {
            format!(
                "{:.0}",
                median_of(samples, peer, Sample::datapath_ns_per_connection)
            )
        } else {
            "–".to_string()
        };
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {cost} |\n",
            peer.name(),
            median_rate(samples, peer) / ceiling,
            lowest_ranked_ratio(samples, peer),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ranked_ratio;

    #[test]
    fn ranks_are_compared_slowest_to_slowest() {
        // The datapath's slow window meets the ceiling's slow one, not its median.
        assert_eq!(
            ranked_ratio(&[90.0, 100.0, 110.0], &[90.0, 100.0, 110.0]),
            1.0
        );
        assert_eq!(
            ranked_ratio(&[81.0, 100.0, 110.0], &[90.0, 100.0, 110.0]),
            0.9
        );
    }

    #[test]
    fn different_lengths_map_by_quantile() {
        // a's middle window meets b's middle one, its ends b's ends.
        let r = ranked_ratio(&[50.0, 100.0, 200.0], &[50.0, 60.0, 100.0, 150.0, 200.0]);
        assert_eq!(r, 1.0);
        assert!(ranked_ratio(&[], &[1.0]).is_nan());
        assert_eq!(ranked_ratio(&[2.0], &[1.0, 4.0]), 2.0);
    }
}
