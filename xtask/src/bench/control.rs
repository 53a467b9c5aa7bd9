//! `cargo xtask bench-control`: the control-plane benchmark. Builds and runs `bench_control` (in
//! the tests crate, release): one sync cycle with 10,000 tasks (CPU, wall time, memory; cold and
//! steady) against the ClearML test server in a separate process, and the time from a task's
//! request to its endpoint written and its route programmed.
//! `cargo xtask bench control` runs it with the defaults.

use super::driver::run_tests_binary;
use anyhow::Result;
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
    run_tests_binary(
        "bench_control",
        &[
            "--tasks".to_string(),
            opts.tasks.to_string(),
            "--requests".to_string(),
            opts.requests.to_string(),
            "--poll-interval".to_string(),
            opts.poll_interval.clone(),
        ],
    )
}
