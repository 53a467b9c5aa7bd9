//! Cookie authentication (`AUTH_ENABLED`) on versus off: the same generated configuration with
//! the auth check on (port 8082; the daemon's `/auth` endpoint served by this process, so this
//! process's CPU time is the daemon's share) and off (8080), one `wrk` at a time in alternating
//! order (the machine's background load drifts; adjacent runs see about the same), every
//! request carrying a valid ClearML cookie. Reported side by side with every round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use router_tests::http_backend::Servers;
use router_tests::nginx::ManagedDir;
use router_userspace::auth::Authenticator;
use router_userspace::config::AuthConfig;
use router_userspace::routes::HttpRoute;

use crate::options::Options;
use crate::proxies::{generated, wait_ok};
use crate::wrk::{Load, Wrk, median};

/// One auth-on or auth-off run: the load, and what the daemon's auth endpoint did meanwhile.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AuthRun {
    load: Load,
    /// CPU time of the auth endpoint's process per second of the run (1.0 = one core).
    daemon_cpu: f64,
    /// CPU time of the loaded nginx's workers per request, in microseconds (less sensitive to
    /// what else runs on the machine than requests/s).
    nginx_us_per_request: f64,
    /// `/auth` requests the daemon answered.
    auth_calls: u64,
}

#[derive(serde::Serialize)]
pub struct AuthResults {
    off: Vec<AuthRun>,
    on: Vec<AuthRun>,
    /// Medians of the paired rounds' on/off ratios.
    rps_ratio: f64,
    p99_ratio: f64,
}

/// A valid ClearML token's cookie, signed with `key`, expiring in an hour.
fn clearml_cookie(cookie_name: &str, key: &[u8]) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "identity": {"user": "u-bench", "company": "c-bench", "role": "user"},
        "iat": now, "exp": now + 3600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )?;
    Ok(format!("{cookie_name}={token}"))
}

/// CPU time (user + system) of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) of the children of process `pid` (an nginx master's workers).
fn children_cpu(pid: u32) -> Duration {
    let ticks = |child: &str| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let total: u64 = children.split_whitespace().filter_map(ticks).sum();
    Duration::from_micros(total * 1_000_000 / hz)
}

/// Auth on (port 8082) vs off (8080): one `wrk` at a time, alternating which goes first, the
/// same valid ClearML cookie on every request of both.
pub fn rounds(
    o: &Options,
    wanted: &BTreeMap<String, HttpRoute>,
    key: &str,
    off_nginx: &ManagedDir,
) -> Result<AuthResults> {
    const KEY: &[u8] = b"bench-token-secret";
    let cfg = AuthConfig {
        enabled: true,
        cookie_name: "clearml_token_basic".into(),
        secure_cookie: true,
        hmac_key: KEY.to_vec(),
        algorithm: "HS256".into(),
        login_url: None,
    };
    let authenticator = Authenticator::shared(&cfg)?;
    let servers = Servers::new()?;
    let auth_addr = servers.serve(router_userspace::auth::router(authenticator.clone()))?;
    let (dir, nginx, _router) = generated(8082, Some(auth_addr), wanted)?;

    let cookie = clearml_cookie(&cfg.cookie_name, KEY)?;
    let headers = [format!("Cookie: {cookie}")];
    let path = format!("/service/{key}/bench");
    wait_ok("127.0.0.1:8082".parse()?, &path, &[("Cookie", &cookie)])?;
    let off_url = format!("http://127.0.0.1:8080{path}");
    let on_url = format!("http://127.0.0.1:8082{path}");
    let load = |url| Wrk {
        url,
        threads: 2,
        connections: o.connections,
        headers: &headers,
    };
    let (off_load, on_load) = (load(&off_url), load(&on_url));
    let masters = (
        off_nginx.pid().context("the auth-off nginx's PID")?,
        dir.pid().context("the auth-on nginx's PID")?,
    );
    let calls = || {
        let s = authenticator.stats();
        s.allowed + s.denied
    };
    let run = |w: Wrk<'_>, master: u32, seconds: u64| -> Result<AuthRun> {
        let (cpu0, nginx0) = (process_cpu(), children_cpu(master));
        let (calls0, t0) = (calls(), Instant::now());
        let load = w.run(seconds)?;
        let (cpu, wall) = (process_cpu() - cpu0, t0.elapsed());
        let nginx = children_cpu(master).saturating_sub(nginx0);
        Ok(AuthRun {
            load,
            daemon_cpu: cpu.as_secs_f64() / wall.as_secs_f64(),
            nginx_us_per_request: nginx.as_secs_f64() * 1e6 / load.requests.max(1) as f64,
            auth_calls: calls() - calls0,
        })
    };

    // Warm-up.
    run(off_load, masters.0, 1)?;
    run(on_load, masters.1, 1)?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = run(off_load, masters.0, o.seconds)?;
            (a, run(on_load, masters.1, o.seconds)?)
        } else {
            let b = run(on_load, masters.1, o.seconds)?;
            (run(off_load, masters.0, o.seconds)?, b)
        };
        eprintln!(
            "auth round {}: off {:.0} req/s p99 {:.2} ms | on {:.0} req/s p99 {:.2} ms, daemon CPU {:.0} %, {} /auth calls",
            round + 1,
            a.load.rps,
            a.load.p99_ms,
            b.load.rps,
            b.load.p99_ms,
            b.daemon_cpu * 100.0,
            b.auth_calls
        );
        off.push(a);
        on.push(b);
    }
    nginx.stop(false, Duration::from_secs(5))?;
    drop(dir);
    // Adjacent runs see about the same background load: the paired ratios' medians.
    let ratio = |f: fn(&Load) -> f64| {
        median(
            on.iter()
                .zip(&off)
                .map(|(b, a)| f(&b.load) / f(&a.load))
                .collect(),
        )
    };
    Ok(AuthResults {
        rps_ratio: ratio(|l| l.rps),
        p99_ratio: ratio(|l| l.p99_ms),
        off,
        on,
    })
}

/// The auth comparison as Markdown: medians side by side, the targets judged, every round.
/// `routes`, `connections`, `seconds`: what the runs were made with.
pub fn print(a: &AuthResults, routes: usize, connections: u32, seconds: u64) {
    println!(
        "\nCookie authentication on vs off ({} routes, wrk -t2 -c{} with a valid ClearML cookie, {} s runs, one at a time, order alternating, {} rounds; medians):\n",
        routes,
        connections,
        seconds,
        a.on.len()
    );
    println!(
        "| auth | req/s | p50 ms | p99 ms | daemon CPU | nginx CPU per request | /auth calls per 1000 requests |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, runs) in [("off", &a.off), ("on", &a.on)] {
        let m = |f: fn(&AuthRun) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} % | {:.1} µs | {:.1} |",
            m(|x| x.load.rps),
            m(|x| x.load.p50_ms),
            m(|x| x.load.p99_ms),
            m(|x| x.daemon_cpu) * 100.0,
            m(|x| x.nginx_us_per_request),
            m(|x| 1000.0 * x.auth_calls as f64 / x.load.requests.max(1) as f64),
        );
    }
    let judge = |ok: bool| if ok { "met" } else { "MISSED" };
    let of_medians = |f: fn(&Load) -> f64| {
        median(a.on.iter().map(|x| f(&x.load)).collect())
            / median(a.off.iter().map(|x| f(&x.load)).collect())
    };
    println!(
        "\non / off: {:.2}x the req/s (target >= 0.90x: {}), {:.2}x the p99 (target <= 1.20x: {}); medians of the paired rounds' ratios (the ratios of the medians above: {:.2}x, {:.2}x).\n",
        a.rps_ratio,
        judge(a.rps_ratio >= 0.9),
        a.p99_ratio,
        judge(a.p99_ratio <= 1.2),
        of_medians(|l| l.rps),
        of_medians(|l| l.p99_ms),
    );
    println!(
        "| round | off req/s | on req/s | on/off | off p50 / p99 ms | on p50 / p99 ms | nginx µs/request off / on | daemon CPU (on) | /auth calls (on) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (off, on)) in a.off.iter().zip(&a.on).enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} % | {} |",
            i + 1,
            off.load.rps,
            on.load.rps,
            on.load.rps / off.load.rps,
            off.load.p50_ms,
            off.load.p99_ms,
            on.load.p50_ms,
            on.load.p99_ms,
            off.nginx_us_per_request,
            on.nginx_us_per_request,
            on.daemon_cpu * 100.0,
            on.auth_calls
        );
    }
}
