//! The ClearML test server as a process, for the demo and for running it inside a network
//! namespace: `clearml-test-server --listen ADDR:PORT [--access-key K --secret-key S]
//! [--feature-set advanced|basic] [--token-lifetime-secs N]`. Prints the bound address
//! (`ADDR:PORT`) on stdout when ready, then serves until SIGINT or SIGTERM. The admin API is
//! under `/_admin/` (see `router_tests::clearml_server`).

use anyhow::{Context, Result, bail};
use router_tests::clearml_server::{ClearmlServer, ServerOptions};
use std::io::Write;
use std::time::Duration;

const USAGE: &str = "usage: clearml-test-server [--listen ADDR:PORT] [--access-key KEY] \
                     [--secret-key SECRET] [--feature-set advanced|basic] \
                     [--token-lifetime-secs N] [--token-secret SECRET]";

fn main() -> Result<()> {
    let mut opts = ServerOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => {
                opts.listen = value
                    .parse()
                    .with_context(|| format!("--listen {value}: expected ADDR:PORT"))?
            }
            "--access-key" => opts.credentials.access_key = value,
            "--secret-key" => opts.credentials.secret_key = value,
            "--feature-set" => opts.feature_set = value,
            "--token-secret" => opts.token_secret = value.into_bytes(),
            "--token-lifetime-secs" => {
                let secs: u64 = value
                    .parse()
                    .with_context(|| format!("--token-lifetime-secs {value}: expected seconds"))?;
                opts.token_lifetime = Duration::from_secs(secs);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let creds = opts.credentials.clone();
    // Blocked before the server's threads exist, so they inherit the mask and the signal
    // reaches the wait below.
    let signals = block_signals()?;
    let server = ClearmlServer::start_with(opts)?;
    eprintln!(
        "clearml-test-server: {} (access key {}, secret key {})",
        server.url(),
        creds.access_key,
        creds.secret_key
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", server.addr()).context("write the address")?;
    out.flush().context("flush stdout")?;
    drop(out);
    signals.wait().context("wait for a signal")?;
    drop(server);
    Ok(())
}

fn block_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block signals")?;
    Ok(set)
}
