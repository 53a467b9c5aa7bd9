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
//! Cookie authentication (`AUTH_ENABLED`) on versus off: the same generated configuration with
//! the auth check on (port 8082; the daemon's `/auth` endpoint served by this process, so this
//! process's CPU time is the daemon's share) and off (8080), one `wrk` at a time in alternating
//! order, every request carrying a valid ClearML cookie. Reported side by side with every round.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use router_tests::http_backend::Servers;
use router_tests::http_client::get;
use router_tests::nginx::{ExternalNginx, ManagedDir, in_netns, route, settings};
use router_userspace::auth::Authenticator;
use router_userspace::config::AuthConfig;
use router_userspace::nginx::{Nginx, NginxHttpRouter};
use router_userspace::routes::{HttpMode, HttpRoute, HttpRouter};

struct Options {
    seconds: u64,
    rounds: u32,
    connections: u32,
    routes: usize,
    auth_only: bool,
    json: Option<String>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        seconds: 3,
        rounds: 9,
        connections: 32,
        routes: 100,
        auth_only: false,
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
            "--auth-only" => o.auth_only = true,
            "--json" => o.json = Some(value()?),
            other => bail!(
                "unknown argument {other}: --seconds N --rounds N --connections N --routes N --auth-only --json FILE"
            ),
        }
    }
    Ok(o)
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
}

/// How `wrk` loads one URL.
#[derive(Clone, Copy)]
struct Wrk<'a> {
    url: &'a str,
    threads: u32,
    /// `Name: value` headers sent with every request.
    headers: &'a [String],
}

impl<'a> Wrk<'a> {
    /// One thread, no extra header: the generated vs hand-written comparison.
    fn plain(url: &'a str) -> Wrk<'a> {
        Wrk {
            url,
            threads: 1,
            headers: &[],
        }
    }

    fn command(&self, o: &Options) -> Command {
        let mut cmd = Command::new("wrk");
        cmd.args([
            &format!("-t{}", self.threads),
            &format!("-c{}", o.connections),
            &format!("-d{}s", o.seconds),
            "--latency",
        ]);
        for h in self.headers {
            cmd.arg("-H").arg(h);
        }
        cmd.arg(self.url);
        cmd
    }

    /// One run.
    fn run(&self, o: &Options) -> Result<Load> {
        let out = self
            .command(o)
            .output()
            .context("run wrk (Debian package wrk)")?;
        parse_wrk(self.url, out)
    }
}

/// `wrk` against both URLs at the same moment: whatever else loads the machine loads both
/// alike, and the two proxies share the CPUs, so the one costing more per request serves fewer.
fn wrk_pair(a: Wrk<'_>, b: Wrk<'_>, o: &Options) -> Result<(Load, Load)> {
    let ca = a.command(o).stdout(std::process::Stdio::piped()).spawn()?;
    let cb = b.command(o).stdout(std::process::Stdio::piped()).spawn()?;
    let oa = ca.wait_with_output().context("wait for wrk")?;
    let ob = cb.wait_with_output().context("wait for wrk")?;
    Ok((parse_wrk(a.url, oa)?, parse_wrk(b.url, ob)?))
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
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(str::trim)
            .and_then(parse_duration_ms)
            .with_context(|| format!("no {p} latency in wrk output:\n{text}"))
    };
    // "  123456 requests in 3.00s, 12.34MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    Ok(Load {
        rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        requests,
    })
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
    /// Generated vs hand-written configuration (absent with `--auth-only`).
    config: Option<ConfigResults>,
    auth: AuthResults,
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

/// One auth-on or auth-off run: the load, and what the daemon's auth endpoint did meanwhile.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct AuthRun {
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
struct AuthResults {
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

/// Waits until `GET path` on `addr` answers `ok`.
fn wait_ok(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<()> {
    let ready = Instant::now() + Duration::from_secs(15);
    while get(addr, path, headers).map(|r| r.text()).ok().as_deref() != Some("ok") {
        if Instant::now() > ready {
            bail!("{addr}{path} does not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The generated configuration on a managed nginx listening on `port`, with the auth check
/// when `auth` is set.
fn generated(
    port: u16,
    auth: Option<std::net::SocketAddr>,
    wanted: &BTreeMap<String, HttpRoute>,
) -> Result<(ManagedDir, Nginx, NginxHttpRouter)> {
    let dir = ManagedDir::new()?;
    let nginx = Nginx::managed(&dir.config())?;
    let mut s = settings(auth);
    s.listen_port = port;
    let mut router = NginxHttpRouter::with_settings(nginx.clone(), s);
    router.apply(wanted)?;
    Ok((dir, nginx, router))
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
    let (gen_load, hand_load) = (Wrk::plain(&gen_url), Wrk::plain(&hand_url));

    // Warm-up, then alternate.
    let warm = Options {
        seconds: 1,
        json: None,
        ..*o
    };
    gen_load.run(&warm)?;
    hand_load.run(&warm)?;
    let (mut generated, mut hand) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // Alternate which starts first, in case that matters.
        let (g, h) = if round % 2 == 0 {
            wrk_pair(gen_load, hand_load, o)?
        } else {
            let (h, g) = wrk_pair(hand_load, gen_load, o)?;
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

/// Auth on (port 8082) vs off (8080): one `wrk` at a time, alternating which goes first, the
/// same valid ClearML cookie on every request of both.
fn auth_rounds(
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
    let run = |w: Wrk<'_>, master: u32, o: &Options| -> Result<AuthRun> {
        let (cpu0, nginx0) = (process_cpu(), children_cpu(master));
        let (calls0, t0) = (calls(), Instant::now());
        let load = w.run(o)?;
        let (cpu, wall) = (process_cpu() - cpu0, t0.elapsed());
        let nginx = children_cpu(master).saturating_sub(nginx0);
        Ok(AuthRun {
            load,
            daemon_cpu: cpu.as_secs_f64() / wall.as_secs_f64(),
            nginx_us_per_request: nginx.as_secs_f64() * 1e6 / load.requests.max(1) as f64,
            auth_calls: calls() - calls0,
        })
    };

    let warm = Options {
        seconds: 1,
        json: None,
        ..*o
    };
    run(off_load, masters.0, &warm)?;
    run(on_load, masters.1, &warm)?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = run(off_load, masters.0, o)?;
            (a, run(on_load, masters.1, o)?)
        } else {
            let b = run(on_load, masters.1, o)?;
            (run(off_load, masters.0, o)?, b)
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
    let auth = auth_rounds(o, &wanted, key, &dir)?;
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

/// The auth comparison as Markdown: medians side by side, the targets judged, every round.
fn print_auth(r: &Results) {
    let a = &r.auth;
    println!(
        "\nCookie authentication on vs off ({} routes, wrk -t2 -c{} with a valid ClearML cookie, {} s runs, one at a time, order alternating, {} rounds; medians):\n",
        r.routes,
        r.connections,
        r.seconds,
        a.on.len()
    );
    println!(
        "| auth | req/s | p50 ms | p99 ms | daemon CPU | nginx CPU per request | /auth calls per 1000 requests |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, runs) in [("off", &a.off), ("on", &a.on)] {
        let m = |f: fn(&AuthRun) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} % | {:.1} µs | {:.1} |",
            m(|x| x.load.rps),
            m(|x| x.load.p50_ms),
            m(|x| x.load.p99_ms),
            m(|x| x.daemon_cpu) * 100.0,
            m(|x| x.nginx_us_per_request),
            m(|x| 1000.0 * x.auth_calls as f64 / x.load.requests.max(1) as f64),
        );
    }
    let judge = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "\non / off: {:.2}x the req/s (target >= 0.90x: {}), {:.2}x the p99 (target <= 1.20x: {}); medians of the paired rounds.\n",
        a.rps_ratio,
        judge(a.rps_ratio >= 0.9),
        a.p99_ratio,
        judge(a.p99_ratio <= 1.2)
    );
    println!(
        "| round | off req/s | on req/s | on/off | off p50 / p99 ms | on p50 / p99 ms | nginx µs/request off / on | daemon CPU (on) | /auth calls (on) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (off, on)) in a.off.iter().zip(&a.on).enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.1} | {:.0} % | {} |",
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

fn main() -> Result<()> {
    let o = options()?;
    let results = in_netns("tbh", move || bench(&o).map(|r| (r, o.json)));
    let (r, json) = results?;
    if let Some(c) = &r.config {
        print_config(&r, c);
    }
    print_auth(&r);
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
