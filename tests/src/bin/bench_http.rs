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

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use router_tests::http_client::get;
use router_tests::nginx::{ExternalNginx, ManagedDir, in_netns, route, settings};
use router_userspace::nginx::{Nginx, NginxHttpRouter};
use router_userspace::routes::{HttpMode, HttpRoute, HttpRouter};

struct Options {
    seconds: u64,
    rounds: u32,
    connections: u32,
    routes: usize,
    json: Option<String>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        seconds: 3,
        rounds: 9,
        connections: 32,
        routes: 100,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--connections" => o.connections = value()?.parse()?,
            "--routes" => o.routes = value()?.parse()?,
            "--json" => o.json = Some(value()?),
            other => bail!(
                "unknown argument {other}: --seconds N --rounds N --connections N --routes N --json FILE"
            ),
        }
    }
    Ok(o)
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Load {
    rps: f64,
    p99_ms: f64,
}

/// One `wrk` run against `url`.
fn wrk(url: &str, o: &Options) -> Result<Load> {
    parse_wrk(
        url,
        wrk_command(url, o)
            .output()
            .context("run wrk (Debian package wrk)")?,
    )
}

/// `wrk` against both URLs at the same moment: whatever else loads the machine loads both
/// alike, and the two proxies share the CPUs, so the one costing more per request serves fewer.
fn wrk_pair(a: &str, b: &str, o: &Options) -> Result<(Load, Load)> {
    let ca = wrk_command(a, o)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let cb = wrk_command(b, o)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let oa = ca.wait_with_output().context("wait for wrk")?;
    let ob = cb.wait_with_output().context("wait for wrk")?;
    Ok((parse_wrk(a, oa)?, parse_wrk(b, ob)?))
}

fn wrk_command(url: &str, o: &Options) -> Command {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", o.connections),
        &format!("-d{}s", o.seconds),
        "--latency",
        url,
    ]);
    cmd
}

fn parse_wrk(url: &str, out: std::process::Output) -> Result<Load> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors ({line}) against {url}:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(parse_duration_ms)
        .with_context(|| format!("no 99% latency in wrk output:\n{text}"))?;
    Ok(Load { rps, p99_ms: p99 })
}

/// wrk's `1.23ms`, `456.00us`, `1.2s`.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let (num, factor) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|n| n * factor)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The hand-written configuration an operator would write for the same routes: per route an
/// upstream with keep-alive and a location with the same forwarding headers, WebSocket upgrade
/// and streaming, the prefix stripped by nginx.
fn hand_written(routes: &BTreeMap<String, HttpRoute>) -> String {
    let mut t = String::from(
        "map $http_upgrade $connection_upgrade {\n    default upgrade;\n    \"\" \"\";\n}\n",
    );
    for (key, r) in routes {
        t.push_str(&format!(
            "upstream app_{key} {{\n    server {};\n    keepalive 16;\n}}\n",
            r.upstream
        ));
    }
    t.push_str("server {\n    listen 8081;\n");
    for key in routes.keys() {
        t.push_str(&format!(
            r#"    location /service/{key}/ {{
        proxy_pass http://app_{key}/;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-Prefix /service/{key};
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 86400s;
        proxy_send_timeout 86400s;
    }}
"#
        ));
    }
    t.push_str("}\n");
    t
}

/// The app behind every route: nginx answering `ok`, so the proxies, not the app, set the pace.
fn app() -> Result<(ExternalNginx, SocketAddrV4)> {
    let addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9000);
    let nginx = ExternalNginx::start(|conf_d| {
        std::fs::write(
            conf_d.join("app.conf"),
            format!(
                "server {{\n    listen {addr};\n    keepalive_requests 1000000;\n    location / {{\n        return 200 \"ok\";\n    }}\n}}\n"
            ),
        )?;
        Ok(())
    })?;
    Ok((nginx, addr))
}

#[derive(serde::Serialize)]
struct Results {
    routes: usize,
    connections: u32,
    seconds: u64,
    generated: Vec<Load>,
    hand_written: Vec<Load>,
    generated_rps: f64,
    hand_written_rps: f64,
    generated_p99_ms: f64,
    hand_written_p99_ms: f64,
    rps_ratio: f64,
    apply_ms: Vec<f64>,
    apply_to_routed_ms: Vec<f64>,
}

fn bench(o: &Options) -> Result<Results> {
    let (app_nginx, app_addr) = app()?;
    let key = "bench0000000000000000000000000000";

    // The generated configuration, with `routes` routes like a busy router.
    let dir = ManagedDir::new()?;
    let nginx = Nginx::managed(&dir.config())?;
    let mut router = NginxHttpRouter::with_settings(nginx.clone(), settings(None));
    let mut wanted: BTreeMap<String, HttpRoute> = (0..o.routes.saturating_sub(1))
        .map(|i| {
            let k = format!("{i:032x}");
            (k.clone(), route(&k, app_addr, HttpMode::Path))
        })
        .collect();
    wanted.insert(key.into(), route(key, app_addr, HttpMode::Path));
    router.apply(&wanted)?;

    let hand_config = hand_written(&wanted);
    let ext = ExternalNginx::start(|conf_d| {
        std::fs::write(conf_d.join("bench.conf"), hand_config)?;
        Ok(())
    })?;
    let gen_url = format!("http://127.0.0.1:8080/service/{key}/bench");
    let hand_url = format!("http://127.0.0.1:8081/service/{key}/bench");
    let ready = Instant::now() + Duration::from_secs(15);
    for url in [&gen_url, &hand_url] {
        let (addr, path) = url
            .strip_prefix("http://")
            .and_then(|u| u.split_once('/'))
            .context("url")?;
        let addr = addr.parse()?;
        while get(addr, &format!("/{path}"), &[])
            .map(|r| r.text())
            .ok()
            .as_deref()
            != Some("ok")
        {
            if Instant::now() > ready {
                bail!("{url} does not answer");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Warm-up, then alternate.
    let warm = Options {
        seconds: 1,
        json: None,
        ..*o
    };
    wrk(&gen_url, &warm)?;
    wrk(&hand_url, &warm)?;
    let (mut generated, mut hand) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // Alternate which starts first, in case that matters.
        let (g, h) = if round % 2 == 0 {
            wrk_pair(&gen_url, &hand_url, o)?
        } else {
            let (h, g) = wrk_pair(&hand_url, &gen_url, o)?;
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

    // Apply → routed: a new route on top of the existing ones, until it answers.
    let mut apply_ms = Vec::new();
    let mut routed_ms = Vec::new();
    let addr = "127.0.0.1:8080".parse()?;
    for i in 0..10 {
        let k = format!("new{i:029x}");
        wanted.insert(k.clone(), route(&k, app_addr, HttpMode::Path));
        let t0 = Instant::now();
        router.apply(&wanted)?;
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
            std::thread::sleep(Duration::from_millis(1));
        }
        routed_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    nginx.stop(false, Duration::from_secs(5))?;
    drop(ext);
    drop(dir);
    drop(app_nginx);

    let g_rps = median(generated.iter().map(|l| l.rps).collect());
    let h_rps = median(hand.iter().map(|l| l.rps).collect());
    // Each round loads both at once: the median of the paired ratios shrugs off the load other
    // processes put on the machine.
    let ratio = median(
        generated
            .iter()
            .zip(&hand)
            .map(|(g, h)| g.rps / h.rps)
            .collect(),
    );
    Ok(Results {
        routes: o.routes,
        connections: o.connections,
        seconds: o.seconds,
        generated_p99_ms: median(generated.iter().map(|l| l.p99_ms).collect()),
        hand_written_p99_ms: median(hand.iter().map(|l| l.p99_ms).collect()),
        generated,
        hand_written: hand,
        generated_rps: g_rps,
        hand_written_rps: h_rps,
        rps_ratio: ratio,
        apply_ms,
        apply_to_routed_ms: routed_ms,
    })
}

fn main() -> Result<()> {
    let o = options()?;
    let results = in_netns("tbh", move || bench(&o).map(|r| (r, o.json)));
    let (r, json) = results?;
    println!(
        "HTTP routes through nginx ({} routes, {} connections each, both loaded at once, {} s x {} rounds, medians):",
        r.routes,
        r.connections,
        r.seconds,
        r.generated.len()
    );
    println!(
        "  generated config    {:>9.0} req/s   p99 {:>6.2} ms",
        r.generated_rps, r.generated_p99_ms
    );
    println!(
        "  hand-written config {:>9.0} req/s   p99 {:>6.2} ms",
        r.hand_written_rps, r.hand_written_p99_ms
    );
    println!(
        "  generated / hand-written: {:.1}% of the requests/s (median of paired rounds; target: at least 95%)",
        r.rps_ratio * 100.0
    );
    let routed = median(r.apply_to_routed_ms.clone());
    let worst = r.apply_to_routed_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "  route apply → endpoint answers: median {:.1} ms, max {:.1} ms (apply itself median {:.1} ms; {} existing routes)",
        routed,
        worst,
        median(r.apply_ms.clone()),
        r.routes
    );
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("write {path}"))?;
        println!("  results written to {path}");
    }
    Ok(())
}
