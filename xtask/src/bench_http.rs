//! `cargo xtask bench-http`: the HTTP routes benchmark. Builds and runs `bench_http` (in the
//! tests crate, release) as root: requests/s and p99 through the generated nginx configuration
//! versus a hand-written equivalent, and the time from a route apply to a routed endpoint.
//! The lead may fold this under `cargo xtask bench http`: call [`run`].

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use crate::prereq;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct BenchHttpOptions {
    /// Seconds per load run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Alternating rounds (generated, hand-written) per figure; medians are reported.
    #[arg(long, default_value_t = 9)]
    pub rounds: u32,
    /// Concurrent connections of the load generator (wrk).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Routes in the generated configuration (the measured one among them).
    #[arg(long, default_value_t = 100)]
    pub routes: usize,
}

pub fn run(opts: &BenchHttpOptions) -> Result<()> {
    prereq::ensure_all()?;
    let object = build::ebpf(&EbpfOptions { release: true })?;
    let json = workspace_root().join("target/bench/http.json");
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    cmd::run(build::host_cargo(&object).args([
        "run",
        "--release",
        "--package",
        "router-tests",
        "--bin",
        "bench_http",
        "--",
        "--seconds",
        &opts.seconds.to_string(),
        "--rounds",
        &opts.rounds.to_string(),
        "--connections",
        &opts.connections.to_string(),
        "--routes",
        &opts.routes.to_string(),
        "--json",
        &json.to_string_lossy(),
    ]))
    .context("the HTTP benchmark failed")
}
