//! HTTP routes benchmark (`cargo xtask bench-http`; xtask/src/bench_http.rs builds and runs
//! this in release): requests/s and p99 latency through the generated nginx configuration
//! versus the same nginx with a hand-written equivalent configuration, and the time from a
//! route apply to the endpoint answering. Everything runs inside a network namespace of its
//! own: the app (an nginx answering `ok`, so the proxies set the pace), both proxying nginx
//! instances and `wrk` (Debian package) as the load generator.
//!
//! Both nginx instances run at once, on ports 8080 (generated) and 8081 (hand-written), and are
//! loaded at the same moment by two `wrk` processes, so background load (other builds on this
//! machine) hits both alike and the two share the CPUs: the config that costs more per request
//! serves fewer. The figures are therefore per proxy while both run, not a lone proxy's peak.
//!
//! Then cookie authentication on versus off ([`auth`]).

mod auth;
mod options;
mod proxies;
mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use router_tests::http_client::get;
use router_tests::nginx::{ExternalNginx, in_netns, route};
use router_userspace::nginx::NginxHttpRouter;
use router_userspace::routes::{HttpMode, HttpRoute, HttpRouter};

use options::Options;
use proxies::{app, generated, hand_written, wait_ok};
use wrk::{Load, Wrk, median};

#[derive(serde::Serialize)]
struct Results {
    routes: usize,
    connections: u32,
    seconds: u64,
    /// Generated vs hand-written configuration (absent with `--auth-only`).
    config: Option<ConfigResults>,
    auth: auth::AuthResults,
    /// Route apply → routed (absent with `--auth-only`).
    apply: Option<ApplyResults>,
}

#[derive(serde::Serialize)]
struct ConfigResults {
    generated: Vec<Load>,
    hand_written: Vec<Load>,
    generated_rps: f64,
    hand_written_rps: f64,
    generated_p99_ms: f64,
    hand_written_p99_ms: f64,
    rps_ratio: f64,
}

#[derive(serde::Serialize)]
struct ApplyResults {
    apply_ms: Vec<f64>,
    apply_to_routed_ms: Vec<f64>,
}

/// Generated vs hand-written, both loaded at once, `o.rounds` times.
fn config_rounds(
    o: &Options,
    wanted: &BTreeMap<String, HttpRoute>,
    key: &str,
) -> Result<ConfigResults> {
    let ext = ExternalNginx::start(|conf_d| {
        std::fs::write(conf_d.join("bench.conf"), hand_written(wanted))?;
        Ok(())
    })?;
    let gen_url = format!("http://127.0.0.1:8080/service/{key}/bench");
    let hand_url = format!("http://127.0.0.1:8081/service/{key}/bench");
    let path = format!("/service/{key}/bench");
    wait_ok("127.0.0.1:8080".parse()?, &path, &[])?;
    wait_ok("127.0.0.1:8081".parse()?, &path, &[])?;
    let (gen_load, hand_load) = (
        Wrk::plain(&gen_url, o.connections),
        Wrk::plain(&hand_url, o.connections),
    );

    // Warm-up, then alternate.
    gen_load.run(1)?;
    hand_load.run(1)?;
    let (mut generated, mut hand) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // Alternate which starts first, in case that matters.
        let (g, h) = if round % 2 == 0 {
            wrk::pair(gen_load, hand_load, o.seconds)?
        } else {
            let (h, g) = wrk::pair(hand_load, gen_load, o.seconds)?;
            (g, h)
        };
        eprintln!(
            "round {}: generated {:.0} req/s p99 {:.2} ms | hand-written {:.0} req/s p99 {:.2} ms",
            round + 1,
            g.rps,
            g.p99_ms,
            h.rps,
            h.p99_ms
        );
        generated.push(g);
        hand.push(h);
    }
    drop(ext);
    // Each round loads both at once: the median of the paired ratios shrugs off the load other
    // processes put on the machine.
    let rps_ratio = median(
        generated
            .iter()
            .zip(&hand)
            .map(|(g, h)| g.rps / h.rps)
            .collect(),
    );
    Ok(ConfigResults {
        generated_rps: median(generated.iter().map(|l| l.rps).collect()),
        hand_written_rps: median(hand.iter().map(|l| l.rps).collect()),
        generated_p99_ms: median(generated.iter().map(|l| l.p99_ms).collect()),
        hand_written_p99_ms: median(hand.iter().map(|l| l.p99_ms).collect()),
        generated,
        hand_written: hand,
        rps_ratio,
    })
}

/// Route apply → routed: a new route on top of the existing ones, until it answers.
fn apply_rounds(
    router: &mut NginxHttpRouter,
    wanted: &mut BTreeMap<String, HttpRoute>,
    app_addr: SocketAddrV4,
) -> Result<ApplyResults> {
    let mut apply_ms = Vec::new();
    let mut routed_ms = Vec::new();
    let addr = "127.0.0.1:8080".parse()?;
    for i in 0..10 {
        let k = format!("new{i:029x}");
        wanted.insert(k.clone(), route(&k, app_addr, HttpMode::Path));
        let t0 = Instant::now();
        router.apply(wanted)?;
        apply_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let path = format!("/service/{k}/bench");
        let deadline = t0 + Duration::from_secs(15);
        loop {
            if get(addr, &path, &[]).is_ok_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{path} not routed within 15 s");
            }
            // The poll is the measurement (apply to routed), so 1 ms, not `wait::within`'s 20.
            std::thread::sleep(Duration::from_millis(1));
        }
        routed_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(ApplyResults {
        apply_ms,
        apply_to_routed_ms: routed_ms,
    })
}

fn bench(o: &Options) -> Result<Results> {
    let (app_nginx, app_addr) = app()?;
    let key = "bench0000000000000000000000000000";

    // The generated configuration, with `routes` routes like a busy router.
    let mut wanted: BTreeMap<String, HttpRoute> = (0..o.routes.saturating_sub(1))
        .map(|i| {
            let k = format!("{i:032x}");
            (k.clone(), route(&k, app_addr, HttpMode::Path))
        })
        .collect();
    wanted.insert(key.into(), route(key, app_addr, HttpMode::Path));
    let (dir, nginx, mut router) = generated(8080, None, &wanted)?;

    let config = (!o.auth_only)
        .then(|| config_rounds(o, &wanted, key))
        .transpose()?;
    let auth = auth::rounds(o, &wanted, key, &dir)?;
    let apply = (!o.auth_only)
        .then(|| apply_rounds(&mut router, &mut wanted, app_addr))
        .transpose()?;
    nginx.stop(false, Duration::from_secs(5))?;
    drop(dir);
    drop(app_nginx);
    Ok(Results {
        routes: o.routes,
        connections: o.connections,
        seconds: o.seconds,
        config,
        auth,
        apply,
    })
}

fn print_config(r: &Results, c: &ConfigResults) {
    println!(
        "HTTP routes through nginx ({} routes, {} connections each, both loaded at once, {} s x {} rounds, medians):",
        r.routes,
        r.connections,
        r.seconds,
        c.generated.len()
    );
    println!(
        "  generated config    {:>9.0} req/s   p99 {:>6.2} ms",
        c.generated_rps, c.generated_p99_ms
    );
    println!(
        "  hand-written config {:>9.0} req/s   p99 {:>6.2} ms",
        c.hand_written_rps, c.hand_written_p99_ms
    );
    println!(
        "  generated / hand-written: {:.1}% of the requests/s (median of paired rounds; target: at least 95%)",
        c.rps_ratio * 100.0
    );
}

fn main() -> Result<()> {
    let o = options::options()?;
    let results = in_netns("tbh", move || bench(&o).map(|r| (r, o.json)));
    let (r, json) = results?;
    if let Some(c) = &r.config {
        print_config(&r, c);
    }
    auth::print(&r.auth, r.routes, r.connections, r.seconds);
    if let Some(a) = &r.apply {
        let routed = median(a.apply_to_routed_ms.clone());
        let worst = a.apply_to_routed_ms.iter().copied().fold(0.0, f64::max);
        println!(
            "\nRoute apply → endpoint answers: median {:.1} ms, max {:.1} ms (apply itself median {:.1} ms; {} existing routes)",
            routed,
            worst,
            median(a.apply_ms.clone()),
            r.routes
        );
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("write {path}"))?;
        println!("  results written to {path}");
    }
    Ok(())
}
