//! The cost of observability: the datapath with and without `/metrics` rendered every second.

use super::backend::start_server;
use super::bench::Bench;
use super::peer_start::Running;
use super::peers::{Options, Peer};
use super::report::median;
use super::samples::ObservabilitySample;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
