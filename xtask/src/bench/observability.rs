//! `cargo xtask bench observability`: the datapath with and without `/metrics` scraped every
//! second.

use super::driver::{build_driver, capture};
use super::options::BenchOptions;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

pub fn run(object: &Path, opts: &BenchOptions) -> Result<()> {
    let (bin, out_dir) = build_driver(object)?;
    let table = capture(Command::new(&bin).args([
        "observability",
        "--rounds",
        &opts.rounds.to_string(),
        "--seconds",
        &opts.seconds.to_string(),
    ]))
    .context("observability cost")?;
    let report = format!(
        "# Cost of observability\n\nCommand: `cargo xtask bench observability --rounds {} --seconds {}` \
         (as root). The datapath (auto: TC) in the benchmark's veth topology, 1-stream iperf3 and \
         the connection rate, with the daemon's `/metrics` text rendered from the live datapath \
         every second versus not, interleaved rounds (medians; target: under 2 % difference).\n\n{table}",
        opts.rounds, opts.seconds
    );
    let file = out_dir.join("observability.md");
    std::fs::write(&file, &report)?;
    println!("{report}");
    eprintln!("xtask: report written to {}", file.display());
    Ok(())
}
