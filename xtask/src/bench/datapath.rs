//! `cargo xtask bench datapath`: per-packet program costs through BPF_PROG_TEST_RUN, and the
//! datapath against its peers in a veth topology.

use super::driver::{build_driver, capture};
use super::options::BenchOptions;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

pub fn run(object: &Path, opts: &BenchOptions) -> Result<()> {
    let (bin, out_dir) = build_driver(object)?;
    let mut report = String::from("# Datapath benchmark\n\n");
    let command = if opts.costs_only {
        "cargo xtask bench datapath --costs-only".to_string()
    } else {
        let peers = match &opts.peers {
            Some(p) => format!(" --peers {p}"),
            None => String::new(),
        };
        format!(
            "cargo xtask bench datapath --rounds {} --seconds {}{peers}",
            opts.rounds, opts.seconds
        )
    };
    report.push_str(&format!("Command: `{command}` (as root)\n\n"));
    let costs = capture(Command::new(&bin).arg("costs")).context("per-packet costs")?;
    report.push_str("## Per-packet program cost (BPF_PROG_TEST_RUN)\n\n");
    report.push_str(&costs);
    if !opts.costs_only {
        let mut throughput = Command::new(&bin);
        throughput.args([
            "throughput",
            "--rounds",
            &opts.rounds.to_string(),
            "--seconds",
            &opts.seconds.to_string(),
        ]);
        if let Some(peers) = &opts.peers {
            throughput.args(["--peers", peers]);
        }
        let table = capture(&mut throughput).context("peer comparison")?;
        report.push_str("\n## Forwarding peers (veth topology, medians)\n\n");
        report.push_str(&table);
    }
    let file = out_dir.join("datapath.md");
    std::fs::write(&file, &report)?;
    println!("{report}");
    eprintln!("xtask: report written to {}", file.display());
    Ok(())
}
