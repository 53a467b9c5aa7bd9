//! `cargo xtask demo`: the whole thing on one machine in one command. Creates namespaces for a
//! client, the router and two task hosts; starts the ClearML test server, the daemon and its
//! nginx; creates two tasks (one TCP, one HTTP) through the real SDK flow; shows the endpoints
//! they got and real traffic through them; prints `task-router status`; tears everything down
//! when done or on Ctrl-C (`--keep` leaves it running until Ctrl-C, to explore).

use anyhow::{Context, Result, bail};
use router_tests::clearml_server::sdk::sdk_versions;
use router_tests::e2e::{
    CLIENT, HOST1, HOST2, ROUTER_PUBLIC, ServerThread, Testbed, TestbedOptions, echo_through,
    parse_endpoint,
};
use router_tests::http_client::get_url_in;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const USAGE: &str = "usage: task-router-demo [--keep] [--sdk VERSION]";

struct Steps {
    n: usize,
}

impl Steps {
    fn run<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        self.n += 1;
        println!("[{}] {what}", self.n);
        f().with_context(|| format!("step {} ({what}) failed", self.n))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("\ndemo: {e:#}");
        eprintln!("demo: everything it created has been removed");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut keep = false;
    let mut sdk = sdk_versions()[0].to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keep" => keep = true,
            "--sdk" => sdk = args.next().context(USAGE)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and loads BPF programs: run it as root");
    }
    let handler = nix::sys::signal::SigHandler::Handler(on_signal);
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::signal(sig, handler) }.context("install a signal handler")?;
    }

    let mut steps = Steps { n: 0 };
    let bed = Testbed::up(&TestbedOptions::default(), &mut |what| {
        steps.n += 1;
        println!("[{}] {what}", steps.n);
    })
    .context("setting up failed")?;
    println!(
        "    ClearML test server: port {} in the router namespace {} (the daemon uses \
         127.0.0.1, the task hosts {})",
        bed.server.addr().port(),
        bed.router.name,
        bed.sdk_env(1).api_host
    );
    let result = demo(&bed, &mut steps, keep, &sdk);
    if result.is_err() {
        let log = bed.daemon_log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("\ndemo: the daemon's last log lines:");
        for line in &lines[lines.len().saturating_sub(15)..] {
            eprintln!("  {line}");
        }
    }
    println!("[done] removing namespaces, daemon, nginx and the server");
    drop(bed);
    result
}

fn demo(bed: &Testbed, steps: &mut Steps, keep: bool, sdk: &str) -> Result<()> {
    let _echo = steps.run("task host 1: a TCP echo server on 10.77.2.2:9000", || {
        ServerThread::echo(&bed.host1, (HOST1, 9000).into())
    })?;
    let _web = steps.run("task host 2: a web app on 10.77.3.2:8080", || {
        ServerThread::web(&bed.host2, (HOST2, 8080).into(), "demo")
    })?;

    let mut tcp_task = steps.run(
        &format!("TCP task (clearml {sdk}) on host 1: request_external_endpoint(9000, tcp)"),
        || bed.sdk_task(sdk, 1, "demo tcp echo"),
    )?;
    let tcp = steps.run("waiting for the router's TCP endpoint", || {
        tcp_task.request(9000, "tcp", true, None)?;
        let got = tcp_task.poll(
            "tcp",
            None,
            &format!("{ROUTER_PUBLIC}:"),
            Duration::from_secs(60),
        )?;
        parse_endpoint(got["endpoint"].as_str().context("no endpoint")?)
    })?;
    println!("    task {} → TCP endpoint {tcp}", tcp_task.task_id);

    let mut http_task = steps.run(
        &format!("HTTP task (clearml {sdk}) on host 2: request_external_endpoint(8080, http)"),
        || bed.sdk_task(sdk, 2, "demo web app"),
    )?;
    let url = steps.run("waiting for the router's HTTP endpoint", || {
        let got = http_task.request(8080, "http", true, None)?;
        Ok(got["endpoint"].as_str().context("no endpoint")?.to_string())
    })?;
    println!("    task {} → HTTP endpoint {url}", http_task.task_id);

    steps.run(
        &format!("TCP traffic from the client ({CLIENT}) through {tcp}"),
        || {
            let msg = b"hello through task-router\n";
            let back = echo_through(&bed.client, tcp, msg)?;
            println!(
                "    sent {:?}, echoed {:?}",
                String::from_utf8_lossy(msg),
                String::from_utf8_lossy(&back)
            );
            if back != msg {
                bail!("the echo differs from what was sent");
            }
            Ok(())
        },
    )?;
    let cookie = bed.auth_cookie();
    steps.run(&format!("HTTP GET {url}hello from the client"), || {
        let without = get_url_in(&bed.client, &format!("{url}hello"), &[])?;
        println!("    without the ClearML cookie: HTTP {}", without.status);
        let with = get_url_in(&bed.client, &format!("{url}hello"), &[("Cookie", &cookie)])?;
        println!("    with the cookie: HTTP {}", with.status);
        for line in with.text().lines() {
            println!("      {line}");
        }
        if with.status != 200 {
            bail!("the app did not answer through the router");
        }
        Ok(())
    })?;
    steps.run("task-router status", || {
        print!("{}", bed.status_table()?);
        Ok(())
    })?;

    if keep {
        println!(
            "\nRunning. Explore with, for example:\n  \
             ip netns exec {c} nc {tcp_ip} {tcp_port}\n  \
             ip netns exec {c} curl -b '{cookie}' {url}\n  \
             ip netns exec {r} {bin} status --admin-addr 127.0.0.1:9180\n\
             Ctrl-C removes everything.",
            c = bed.client.name,
            r = bed.router.name,
            tcp_ip = tcp.ip(),
            tcp_port = tcp.port(),
            bin = router_tests::daemon_binary().display(),
        );
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\nstopping");
    }
    steps.run("stopping the tasks: their endpoints go away", || {
        tcp_task.stop()?;
        http_task.stop()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(echo_through(&bed.client, tcp, b"ping"), Ok(b) if b == b"ping") {
            if std::time::Instant::now() > deadline {
                bail!("{tcp} still answers 30 s after its task stopped");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("    {tcp} no longer answers");
        loop {
            let r = get_url_in(&bed.client, &format!("{url}hello"), &[("Cookie", &cookie)])?;
            if r.status != 200 {
                println!("    {url} now answers HTTP {}", r.status);
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("{url} still serves the app 30 s after its task stopped");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })
}
