//! The `hostile` section's report: per peer and offered rate the medians over rounds, the
//! targets judged on them, and every round raw.

use crate::hostile::{CONNECT_TIMEOUT, Peer, SUSTAINED_RATE, Sample};
use crate::throughput::{median, percentile};
use router_tests::connect_loop::completed_within;
use std::collections::BTreeMap;
use std::time::Duration;

/// What one round shows, reduced to numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub rate: f64,
    pub attempts: f64,
    /// Shares of the attempts, 0-1.
    pub within_1s: f64,
    pub within_3s: f64,
    /// Connect time of completed attempts, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: f64,
    pub fill: Option<(u64, u64)>,
    pub connections: Option<u64>,
    pub machine_us: f64,
    pub syn_retrans: f64,
    pub cookies: f64,
    /// The generator thread's CPU µs per SYN: on veth the softirq work a frame triggers (the
    /// router's, and the backend's SYN cookie and its answer) runs in the sender's context and
    /// is charged to it (no IRQ time accounting here), so peers differ by what they cost.
    pub generator_us: f64,
    pub backlog_drops: f64,
    pub datapath_drops: Option<u64>,
}

pub fn figures(s: &Sample) -> Figures {
    let n = s.attempts.len().max(1) as f64;
    let mut times: Vec<f64> = s
        .attempts
        .iter()
        .filter_map(|a| a.connect)
        .map(|c| c.as_secs_f64() * 1e3)
        .collect();
    times.sort_by(f64::total_cmp);
    Figures {
        rate: s.flood.rate(),
        attempts: s.attempts.len() as f64,
        within_1s: completed_within(&s.attempts, Duration::from_secs(1)) as f64 / n,
        within_3s: completed_within(&s.attempts, CONNECT_TIMEOUT) as f64 / n,
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        lost: s.lost as f64,
        fill: s.flood_table,
        connections: s.connections_max,
        machine_us: s.machine_us_per_syn,
        syn_retrans: s.client_syn_retrans as f64,
        cookies: s.syncookies_sent as f64,
        generator_us: s.flood.cpu.as_secs_f64() * 1e6 / s.flood.sent.max(1) as f64,
        backlog_drops: s.backlog_drops as f64,
        datapath_drops: s.datapath_drops,
    }
}

/// A group of rounds: a peer at an offered rate (the sustained run is its own group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Group {
    /// `u64::MAX`: as fast as the generator goes.
    pub offered: u64,
    pub sustained: bool,
    pub peer: Peer,
}

fn group_of(s: &Sample, seconds: u64) -> Group {
    Group {
        offered: s.offered.unwrap_or(u64::MAX),
        sustained: s.offered == Some(SUSTAINED_RATE) && s.flood.elapsed.as_secs() > 2 * seconds,
        peer: s.peer,
    }
}

fn offered_name(g: &Group) -> String {
    match (g.offered, g.sustained) {
        (u64::MAX, _) => "max".into(),
        (r, true) => format!("{r} sustained"),
        (r, false) => format!("{r}"),
    }
}

/// Medians per group; fills and losses as the worst round's.
pub fn medians(samples: &[Sample], seconds: u64) -> BTreeMap<Group, (Figures, usize)> {
    let mut groups: BTreeMap<Group, Vec<Figures>> = BTreeMap::new();
    for s in samples {
        groups
            .entry(group_of(s, seconds))
            .or_default()
            .push(figures(s));
    }
    groups
        .into_iter()
        .map(|(g, f)| {
            let m = |pick: fn(&Figures) -> f64| median(f.iter().map(pick).collect());
            let fill = f
                .iter()
                .filter_map(|x| x.fill)
                .max_by_key(|(used, _)| *used);
            let figures = Figures {
                rate: m(|x| x.rate),
                attempts: m(|x| x.attempts),
                within_1s: m(|x| x.within_1s),
                within_3s: m(|x| x.within_3s),
                p50_ms: m(|x| x.p50_ms),
                p99_ms: m(|x| x.p99_ms),
                lost: f.iter().map(|x| x.lost).fold(0.0, f64::max),
                fill,
                connections: f.iter().filter_map(|x| x.connections).max(),
                machine_us: m(|x| x.machine_us),
                syn_retrans: m(|x| x.syn_retrans),
                cookies: m(|x| x.cookies),
                generator_us: m(|x| x.generator_us),
                backlog_drops: m(|x| x.backlog_drops),
                datapath_drops: f.iter().filter_map(|x| x.datapath_drops).max(),
            };
            (g, (figures, f.len()))
        })
        .collect()
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{:.1} %", x * 100.0)
    }
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{x:.1}")
    }
}

fn fill(f: &Figures) -> String {
    let table = match f.fill {
        Some((used, size)) => format!("{used} / {size}"),
        None => "–".into(),
    };
    match f.connections {
        Some(c) => format!("{table} (connections {c})"),
        None => table,
    }
}

fn row(g: &Group, f: &Figures, rounds: usize) -> String {
    format!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {} | {:.2} | {:.1} | {rounds} |",
        offered_name(g),
        g.peer.name(),
        f.rate,
        pct(f.within_1s),
        pct(f.within_3s),
        ms(f.p50_ms),
        ms(f.p99_ms),
        f.attempts,
        f.syn_retrans,
        f.cookies,
        f.lost,
        fill(f),
        f.backlog_drops,
        f.datapath_drops.map_or("–".into(), |d| d.to_string()),
        f.generator_us,
        f.machine_us,
    )
}

const HEADER: &str = "| offered SYN/s | peer | flood SYN/s sent | connected ≤ 1 s | connected ≤ 3 s | \
    connect p50 ms | connect p99 ms | attempts | client SYN retransmits | SYN cookies sent | \
    bytes lost | flood table fill (max) | input backlog drops | datapath drops | generator CPU µs \
    per SYN | machine µs per flood SYN | rounds |\n\
    |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|";

/// The medians table.
pub fn table(samples: &[Sample], seconds: u64) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for (g, (f, n)) in medians(samples, seconds) {
        out.push_str(&row(&g, &f, n));
        out.push('\n');
    }
    out
}

/// Every round.
pub fn raw_table(samples: &[Sample], seconds: u64) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for s in samples {
        out.push_str(&row(&group_of(s, seconds), &figures(s), 1));
        out.push('\n');
        if let Some(e) = &s.stream_error {
            out.push_str(&format!("| | long connection broke: {e} |\n"));
        }
    }
    out
}

/// The tuples one backend address and port offer from one router address: every source port
/// from 1024 outside the host's ephemeral range (Linux's default 32768-60999, which the
/// datapath leaves to the host's own connections).
const BACKEND_TUPLES: u64 = 65_536 - 1_024 - (60_999 - 32_768 + 1);

/// The targets, judged on the medians.
pub fn targets(samples: &[Sample], seconds: u64) -> String {
    let m = medians(samples, seconds);
    let find = |peer: Peer, pick: &dyn Fn(&Group) -> bool| {
        m.iter()
            .filter(|(g, _)| g.peer == peer && pick(g))
            .max_by_key(|(g, _)| (g.offered, g.sustained))
            .map(|(g, (f, _))| (*g, *f))
    };
    let highest = |g: &Group| !g.sustained;
    let mut lines = Vec::new();
    let mut judge = |what: String, ok: bool| {
        lines.push(format!("- [{}] {what}", if ok { "x" } else { " " }));
    };
    if let Some((g, dp)) = find(Peer::Datapath, &highest) {
        judge(
            format!(
                "≥ 99 % of legitimate connections within 1 s at the highest rate ({}, {:.0} \
                 SYN/s sent): {}",
                offered_name(&g),
                dp.rate,
                pct(dp.within_1s)
            ),
            dp.within_1s >= 0.99,
        );
        if let Some((_, ng)) = find(Peer::NginxStream, &|x: &Group| x.offered == g.offered) {
            judge(
                format!(
                    "completion at least nginx's there: {} vs {} within 3 s",
                    pct(dp.within_3s),
                    pct(ng.within_3s)
                ),
                dp.within_3s >= ng.within_3s,
            );
            judge(
                format!(
                    "connect p99 no worse than nginx's there: {} ms vs {} ms",
                    ms(dp.p99_ms),
                    ms(ng.p99_ms)
                ),
                dp.p99_ms <= ng.p99_ms,
            );
        }
    }
    if let Some((g, dp)) = find(Peer::Datapath, &|g: &Group| g.sustained) {
        judge(
            format!(
                "≥ 99 % within 1 s at {} SYN/s sustained ({:.0} s): {}",
                g.offered,
                samples
                    .iter()
                    .filter(|s| group_of(s, seconds) == g)
                    .map(|s| s.flood.elapsed.as_secs_f64())
                    .fold(0.0, f64::max),
                pct(dp.within_1s)
            ),
            dp.within_1s >= 0.99,
        );
    }
    if let Some((g, dp)) = find(Peer::DatapathKeepingClient, &highest) {
        judge(
            format!(
                "with the client's address kept, ≥ 99 % within 1 s at the highest rate ({}, \
                 {:.0} SYN/s sent): {}",
                offered_name(&g),
                dp.rate,
                pct(dp.within_1s)
            ),
            dp.within_1s >= 0.99,
        );
    }
    let datapath: Vec<&(Figures, usize)> = m
        .iter()
        .filter(|(g, _)| g.peer.is_datapath())
        .map(|(_, v)| v)
        .collect();
    let lost = datapath.iter().map(|(f, _)| f.lost).fold(0.0, f64::max);
    judge(
        format!("no byte lost on the long connection through the datapath: {lost:.0}"),
        lost == 0.0,
    );
    let half_open = datapath
        .iter()
        .filter_map(|(f, _)| f.fill)
        .max_by_key(|(used, _)| *used);
    if let Some((used, capacity)) = half_open {
        judge(
            format!(
                "the tuple space toward the task is never held by half-open entries: at most \
                 {used} half-open (capacity {capacity}, {:.0} % of the {BACKEND_TUPLES} tuples \
                 of one backend port; the rest stays for established connections; sampled by \
                 scans while the flood churns the table, so a few in flight count twice)",
                capacity as f64 * 100.0 / BACKEND_TUPLES as f64
            ),
            used <= capacity + capacity / 100 && capacity * 3 <= BACKEND_TUPLES,
        );
    }
    let connections = datapath
        .iter()
        .filter_map(|(f, _)| f.connections)
        .max()
        .unwrap_or(0);
    judge(
        format!(
            "no spoofed SYN reaches the connection table: at most {connections} connections \
             (the legitimate ones)"
        ),
        connections < 1000,
    );
    judge(
        "router CPU per flood packet reported (machine µs per flood SYN above the quiet \
         window, in the table; the program's own cost per flood SYN is the `costs` section's \
         first-packet path, whose SYNs evict)"
            .into(),
        true,
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_tests::connect_loop::Attempt;
    use router_tests::syn_flood::FloodReport;

    fn sample(peer: Peer, offered: Option<u64>, connects_ms: &[Option<u64>]) -> Sample {
        Sample {
            peer,
            offered,
            flood: FloodReport {
                sent: 1000,
                elapsed: Duration::from_secs(1),
                cpu: Duration::ZERO,
            },
            attempts: connects_ms
                .iter()
                .map(|c| Attempt {
                    at: Duration::ZERO,
                    connect: c.map(Duration::from_millis),
                })
                .collect(),
            streamed: 1,
            lost: 0,
            stream_error: None,
            flood_table: peer.is_datapath().then_some((100, 16_384)),
            connections_max: peer.is_datapath().then_some(3),
            machine_us_per_syn: 1.0,
            syncookies_sent: 0,
            client_syn_retrans: 0,
            backlog_drops: 0,
            datapath_drops: None,
        }
    }

    #[test]
    fn shares_and_targets_come_from_the_attempts() {
        let dp = sample(Peer::Datapath, None, &[Some(1), Some(2), Some(1500), None]);
        let f = figures(&dp);
        assert_eq!((f.within_1s, f.within_3s), (0.5, 0.75));
        let all_fast = sample(Peer::Datapath, None, &[Some(1); 100]);
        let nginx = sample(Peer::NginxStream, None, &[Some(2); 100]);
        let text = targets(&[all_fast, nginx], 5);
        assert!(text.contains("- [x] ≥ 99 %"), "{text}");
        assert!(text.contains("- [x] connect p99 no worse"), "{text}");
        let text = targets(&[dp, sample(Peer::NginxStream, None, &[Some(2); 4])], 5);
        assert!(text.contains("- [ ] ≥ 99 %"), "{text}");
        assert!(text.contains("- [ ] completion at least nginx's"), "{text}");
    }
}
