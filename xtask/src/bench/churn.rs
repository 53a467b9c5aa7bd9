//! `cargo xtask bench churn`: 16 client addresses churn short connections the task closes first
//! to one task port (client ports wrapping), for `--seconds` × 12 (a minute at the default) per
//! measurement; the no-NAT ceiling, nftables DNAT + masquerade and the datapath side by side.
//! Report: `target/bench/churn.md`, raw rounds in `churn.json` next to it.

use super::driver::{build_driver, capture};
use super::options::BenchOptions;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

/// Each measurement lasts this many times `--seconds`.
const CHURN_FACTOR: u32 = 12;
/// Ephemeral ports per client address: small, so every client's ports wrap within a run.
const CLIENT_PORTS: u32 = 1000;

pub fn run(object: &Path, opts: &BenchOptions) -> Result<()> {
    let (bin, out_dir) = build_driver(object)?;
    let seconds = opts.seconds * CHURN_FACTOR;
    let table = capture(Command::new(&bin).args([
        "churn",
        "--rounds",
        &opts.rounds.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--client-ports",
        &CLIENT_PORTS.to_string(),
    ]))
    .context("the churn section")?;
    let report = format!(
        "# Many clients, one task, short connections\n\nCommand: `cargo xtask bench churn \
         --rounds {} --seconds {}` (as root): {seconds} s per measurement. Per measurement a \
         fresh veth topology; 16 client addresses in the client namespace, its ephemeral port \
         range narrowed to {CLIENT_PORTS} ports (40000-{}), so each client's ports wrap while \
         the task still holds their tuples in TIME_WAIT; 32 workers connect, read the task's \
         3-byte answer (the task closes first) and close, as fast as they go. Peers \
         interleaved per round. The datapath CPU column stays empty here: \
         `target/release/datapath-bench churn --cpu` fills it from the kernel's run-time \
         accounting of BPF programs, which costs two clock reads per program run, so this \
         run leaves it off.\n\n{table}",
        opts.rounds,
        opts.seconds,
        40_000 + CLIENT_PORTS - 1
    );
    let file = out_dir.join("churn.md");
    std::fs::write(&file, &report)?;
    println!("{report}");
    eprintln!("xtask: report written to {}", file.display());
    Ok(())
}
