//! `cargo xtask bench-control`: the control-plane benchmark. Builds and runs `bench_control` (in
//! the tests crate, release): one sync cycle with 10,000 tasks (CPU, wall time, memory; cold and
//! steady) against the ClearML test server in a separate process, and the time from a task's
//! request to its endpoint written and its route programmed. The lead may fold this under
//! `cargo xtask bench control`: call [`run`].

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct BenchControlOptions {
    /// Tasks asking for a TCP endpoint in the sync-cycle measurement.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Requests timed in the request-to-endpoint measurement.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Poll interval of the daemon in the request-to-endpoint measurement.
    #[arg(long, default_value = "2s")]
    pub poll_interval: String,
}

pub fn run(opts: &BenchControlOptions) -> Result<()> {
    let object = build::ebpf(&EbpfOptions { release: true })?;
    let json = workspace_root().join("target/bench/control.json");
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    cmd::run(build::host_cargo(&object).args([
        "run",
        "--release",
        "--package",
        "router-tests",
        "--bin",
        "bench_control",
        "--",
        "--tasks",
        &opts.tasks.to_string(),
        "--requests",
        &opts.requests.to_string(),
        "--poll-interval",
        &opts.poll_interval,
        "--json",
        &json.to_string_lossy(),
    ]))
    .context("the control-plane benchmark failed")
}
