//! What a run reports: medians, the Markdown tables, the targets judged on the
//! medians, the sweeper's line, and where the raw rounds go.

use super::peers::Peer;
use super::samples::{Sample, Sweep};
use router_userspace::datapath::sweeper::DEFAULT_INTERVAL;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The value at fraction `p` of `sorted` (nearest rank); NaN when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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

/// The targets for this datapath, each with the medians it was judged on. Targets
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
