//! Control-plane benchmark (`cargo xtask bench-control`).
//!
//! 1. One sync cycle with N tasks (default 10,000) asking for TCP endpoints, against the ClearML
//!    test server running in a child process (so this process's CPU time and memory are the
//!    router's alone): the cold cycle (every port allocated, every endpoint written back) and the
//!    steady cycle (the listing and the diff, nothing to write). Targets: under 1 s of CPU and
//!    under 100 MB for the steady cycle.
//! 2. The time from a task's request (created at a random moment of the poll period) to its
//!    endpoint written back and its route programmed, with the sync loop running. Target: under
//!    one poll interval + 100 ms.
//!
//! Routes go to recording owners: the kernel map update is the datapath's own benchmark.

use anyhow::{Context, Result, bail};
use router_tests::clearml_server::{ClearmlServer, TaskSpec};
use router_tests::owners::{RecordingForwarder, RecordingRouter};
use router_userspace::config::{Config, Sources, parse_duration};
use router_userspace::daemon::{CycleOutcome, Engine, new_status};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Options {
    tasks: usize,
    requests: usize,
    poll: Duration,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<(Option<String>, Options)> {
    let mut args = std::env::args().skip(1);
    let mut mode = None;
    let mut o = Options {
        tasks: 10_000,
        requests: 20,
        poll: Duration::from_secs(2),
        json: None,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "serve" => mode = Some("serve".to_string()),
            "--tasks" => o.tasks = value()?.parse().context("--tasks")?,
            "--requests" => o.requests = value()?.parse().context("--requests")?,
            "--poll-interval" => {
                o.poll = parse_duration(&value()?)
                    .map_err(|e| anyhow::anyhow!("--poll-interval: {e}"))?
            }
            "--json" => o.json = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok((mode, o))
}

fn tcp_task(i: usize) -> TaskSpec {
    TaskSpec::new(&format!("bench task {i}"))
        .status("in_progress")
        .system_tags(&["external_service"])
        .runtime(json!({
            "_SERVICE": "EXTERNAL_TCP",
            "external_address": format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256),
            "external_tcp_port": 22,
            "upstream_task_port": 22,
            "CLEARML VERSION": "2.1.12",
        }))
}

/// Child mode: a test server with `tasks` tasks; prints `url access secret`, serves until stdin
/// closes.
fn serve(o: &Options) -> Result<()> {
    let server = ClearmlServer::start()?;
    let admin = server.admin();
    for i in 0..o.tasks {
        admin.create_task(tcp_task(i));
    }
    let creds = server.credentials();
    println!("{} {} {}", server.url(), creds.access_key, creds.secret_key);
    std::io::stdout().flush()?;
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    Ok(())
}

fn config(
    url: &str,
    access: &str,
    secret: &str,
    state: &Path,
    poll: Duration,
    port_end: u32,
) -> Result<Config> {
    let env = [
        ("CLEARML_API_HOST", url.to_string()),
        ("CLEARML_API_ACCESS_KEY", access.to_string()),
        ("CLEARML_API_SECRET_KEY", secret.to_string()),
        ("TCP_ROUTER_ADDRESS", "203.0.113.7".to_string()),
        ("TCP_PORT_START", "20000".to_string()),
        ("TCP_PORT_END", port_end.min(65_535).to_string()),
        ("ROUTER__WEBSERVER__SERVER_PORT", "8080".to_string()),
        ("ROUTER_NAME", "bench".to_string()),
        ("AUTH_ENABLED", "false".to_string()),
        ("ROUTER_STATE_DIR", state.display().to_string()),
        ("ROUTER_POLL_INTERVAL", format!("{}ms", poll.as_millis())),
        ("ROUTER_ADMIN_ADDR", "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v));
    let sources = Sources::new(Vec::new(), env, None)?;
    Config::from_sources(&sources).map_err(|e| anyhow::anyhow!("{e}"))
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(serde::Serialize)]
struct CycleFigures {
    wall_ms: f64,
    cpu_ms: f64,
    rss_before_mb: f64,
    peak_rss_mb: f64,
    peak_growth_mb: f64,
}

async fn measured_cycle(engine: &mut Engine) -> Result<CycleFigures> {
    reset_peak();
    let rss_before = proc_status("VmRSS:");
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let outcome = engine.cycle().await;
    let (wall, cpu) = (wall0.elapsed(), cpu_time() - cpu0);
    let peak = proc_status("VmHWM:");
    if outcome != CycleOutcome::Synced {
        bail!("the cycle did not sync");
    }
    let mb = |b: u64| b as f64 / 1_048_576.0;
    Ok(CycleFigures {
        wall_ms: wall.as_secs_f64() * 1000.0,
        cpu_ms: cpu.as_secs_f64() * 1000.0,
        rss_before_mb: mb(rss_before),
        peak_rss_mb: mb(peak),
        peak_growth_mb: mb(peak.saturating_sub(rss_before)),
    })
}

#[derive(serde::Serialize)]
struct Report {
    tasks: usize,
    cold_cycle: CycleFigures,
    steady_cycle: CycleFigures,
    poll_interval_ms: u128,
    request_to_endpoint_ms: Vec<f64>,
    request_to_endpoint_p50_ms: f64,
    request_to_endpoint_max_ms: f64,
    target_ms: f64,
}

fn main() -> Result<()> {
    let (mode, o) = parse_args()?;
    if mode.as_deref() == Some("serve") {
        return serve(&o);
    }
    let state = std::env::temp_dir().join(format!("task-router-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let result = run(&o, &state);
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn run(o: &Options, state: &Path) -> Result<()> {
    // Part 1: the server in a child process, filled with tasks.
    let exe = std::env::current_exe().context("own path")?;
    let mut child = Command::new(exe)
        .args(["serve", "--tasks", &o.tasks.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the test server process")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?)
        .read_line(&mut line)
        .context("read the server address")?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [url, access, secret] = parts[..] else {
        let _ = child.kill();
        bail!("the server process said {line:?}");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cfg = config(
        url,
        access,
        secret,
        &state.join("cycle"),
        o.poll,
        20_000 + o.tasks as u32 + 1000,
    )?;
    let (cold, steady) = runtime.block_on(async {
        let tcp = RecordingForwarder::default();
        let mut engine = Engine::new(
            cfg.clone(),
            Box::new(tcp.clone()),
            Box::new(RecordingRouter::default()),
            new_status(&cfg),
        )?;
        engine.connect_at_start().await?;
        let cold = measured_cycle(&mut engine).await?;
        anyhow::ensure!(
            tcp.programmed().len() == o.tasks,
            "cold cycle routed {} tasks",
            tcp.programmed().len()
        );
        let steady = measured_cycle(&mut engine).await?;
        Ok::<_, anyhow::Error>((cold, steady))
    })?;
    drop(child.stdin.take());
    let _ = child.wait();

    // Part 2: request to endpoint, the loop running, server in-process (its own thread).
    let server = ClearmlServer::start()?;
    let admin = server.admin();
    let creds = server.credentials();
    let cfg = config(
        &server.url(),
        &creds.access_key,
        &creds.secret_key,
        &state.join("latency"),
        o.poll,
        21_000,
    )?;
    let latencies = runtime.block_on(async {
        let tcp = RecordingForwarder::default();
        let status = new_status(&cfg);
        let mut engine = Engine::new(
            cfg.clone(),
            Box::new(tcp.clone()),
            Box::new(RecordingRouter::default()),
            status,
        )?;
        engine.connect_at_start().await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let looped = tokio::spawn(engine.run(stop_rx));
        let mut out = Vec::new();
        for i in 0..o.requests {
            // A random moment of the poll period.
            let offset = o.poll.mul_f64(rand::random::<f64>());
            tokio::time::sleep(offset).await;
            let t0 = Instant::now();
            let id = admin.create_task(tcp_task(50_000 + i));
            loop {
                let written = admin
                    .runtime(&id)
                    .get("external_tcp_port")
                    .and_then(|v| v.as_u64());
                let programmed = written.is_some_and(|p| {
                    tcp.programmed()
                        .get(&(p as u16))
                        .is_some_and(|r| r.owner.id.task_id == id)
                });
                if programmed {
                    break;
                }
                anyhow::ensure!(
                    t0.elapsed() < Duration::from_secs(30),
                    "request {i} not served in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let _ = stop.send(true);
        looped.await??;
        Ok::<_, anyhow::Error>(out)
    })?;

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let max = sorted.last().copied().unwrap_or(0.0);
    let target = o.poll.as_secs_f64() * 1000.0 + 100.0;
    println!(
        "control-plane benchmark (release build; a shared 2-core machine: other developers' builds may share the CPUs)"
    );
    println!(
        "sync cycle, {} tasks   wall ms   CPU ms   RSS before MB   peak RSS MB   peak growth MB",
        o.tasks
    );
    for (name, c) in [
        ("cold (allocate + write back)", &cold),
        ("steady (list + diff)", &steady),
    ] {
        println!(
            "  {name:<30} {:>8.0} {:>8.0} {:>15.1} {:>13.1} {:>16.1}",
            c.wall_ms, c.cpu_ms, c.rss_before_mb, c.peak_rss_mb, c.peak_growth_mb
        );
    }
    println!(
        "request to endpoint written and programmed (poll {} ms, {} requests): p50 {p50:.0} ms, max {max:.0} ms (target < {target:.0} ms)",
        o.poll.as_millis(),
        latencies.len()
    );
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "targets: steady cycle CPU < 1000 ms: {}; peak RSS < 100 MB: {}; request to endpoint < poll + 100 ms: {}",
        verdict(steady.cpu_ms < 1000.0),
        verdict(steady.peak_rss_mb < 100.0),
        verdict(max < target)
    );
    if let Some(path) = &o.json {
        let report = Report {
            tasks: o.tasks,
            cold_cycle: cold,
            steady_cycle: steady,
            poll_interval_ms: o.poll.as_millis(),
            request_to_endpoint_ms: latencies,
            request_to_endpoint_p50_ms: p50,
            request_to_endpoint_max_ms: max,
            target_ms: target,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("figures in {}", path.display());
    }
    Ok(())
}
