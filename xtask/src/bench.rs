//! `cargo xtask bench [SECTION]`: benchmarks, never timed tests. Each section is a driver
//! binary run as root after the kernel object is built; `bench` alone runs every section.
//! Sections: `control` and `http` (their own modules), `datapath` (per-packet program costs through BPF_PROG_TEST_RUN, and the
//! datapath against its peers in a veth topology), `observability` (the datapath with and
//! without `/metrics` scraped every second). Results: Markdown on stdout and in
//! `target/bench/<section>.md`, raw rounds as JSON next to it.

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use crate::prereq;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// The kernel datapath: program costs and forwarding peers.
    Datapath,
    /// The control plane: a 10,000-task sync cycle, request-to-endpoint time
    /// (`cargo xtask bench-control` takes its own options).
    Control,
    /// HTTP routes: generated vs hand-written nginx config, apply-to-routed time
    /// (`cargo xtask bench-http` takes its own options).
    Http,
    /// Cost of observability: datapath throughput and connection rate with `/metrics`
    /// scraped every second versus not (target: under 2 % difference).
    Observability,
    /// A spoofed SYN flood on a routed port while legitimate clients connect and a long
    /// connection streams: the datapath, nftables and nginx stream side by side.
    Hostile,
}

impl Section {
    const ALL: [Section; 5] = [
        Section::Datapath,
        Section::Control,
        Section::Http,
        Section::Observability,
        Section::Hostile,
    ];
}

#[derive(Args)]
pub struct BenchOptions {
    /// Which benchmark to run; every section when omitted.
    pub section: Option<Section>,
    /// Interleaved rounds per peer (medians and raw rounds are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Only the per-packet costs (quick; no peers).
    #[arg(long)]
    pub costs_only: bool,
    /// Datapath section: only these peers (comma-separated: ceiling, nftables, nginx,
    /// nginx-reuseport, haproxy, datapath, ceiling-txoff, nftables-txoff, xdp-txoff); the
    /// ceilings always run.
    #[arg(long)]
    pub peers: Option<String>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    prereq::ensure_bench()?;
    let object = build::ebpf(&EbpfOptions { release: true })?;
    let sections = match opts.section {
        Some(s) => vec![s],
        None => Section::ALL.to_vec(),
    };
    for section in sections {
        match section {
            Section::Datapath => datapath(&object, opts)?,
            Section::Observability => observability(&object, opts)?,
            Section::Hostile => crate::bench_hostile::run(&object, opts)?,
            Section::Control => {
                crate::bench_control::run(&crate::bench_control::BenchControlOptions {
                    tasks: 10_000,
                    requests: 20,
                    poll_interval: "2s".into(),
                })?
            }
            Section::Http => crate::bench_http::run(&crate::bench_http::BenchHttpOptions {
                seconds: 3,
                rounds: 9,
                connections: 32,
                routes: 100,
            })?,
        }
    }
    Ok(())
}

/// Builds `datapath-bench` and makes the report directory: (the driver, the directory).
pub(crate) fn build_driver(object: &std::path::Path) -> Result<(PathBuf, PathBuf)> {
    cmd::run(build::host_cargo(object).args([
        "build",
        "--package",
        "router-tests",
        "--bin",
        "datapath-bench",
        // Release, as the daemon ships: the conntrack sweeper and the `/metrics` renderer
        // run in this process during the datapath's turn and share the two CPUs with it.
        "--release",
    ]))
    .context("building the datapath benchmark driver failed")?;
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    Ok((target_dir().join("release/datapath-bench"), out_dir))
}

fn datapath(object: &std::path::Path, opts: &BenchOptions) -> Result<()> {
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

fn observability(object: &std::path::Path, opts: &BenchOptions) -> Result<()> {
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

/// Runs `cmd` with stderr passed through and returns its stdout.
pub(crate) fn capture(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: $ {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start the benchmark driver")?;
    anyhow::ensure!(
        out.status.success(),
        "benchmark driver failed ({})",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds and runs the tests crate's release benchmark binary `bin` with `args`, adding
/// `--json target/bench/<bin>.json` for its machine-readable figures.
pub fn run_tests_binary(bin: &str, args: &[String]) -> Result<()> {
    let object = build::ebpf(&EbpfOptions { release: true })?;
    let json = workspace_root()
        .join("target/bench")
        .join(format!("{bin}.json"));
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    cmd::run(
        build::host_cargo(&object)
            .args([
                "run",
                "--release",
                "--package",
                "router-tests",
                "--bin",
                bin,
                "--",
            ])
            .args(args)
            .arg("--json")
            .arg(&json),
    )
    .with_context(|| format!("the {bin} benchmark failed"))
}
