//! `cargo xtask bench http`: the HTTP routes benchmark. Builds and runs `bench_http` (in the
//! tests crate, release) as root: requests/s and p99 through the generated nginx configuration
//! versus a hand-written equivalent; cookie authentication on versus off (requests/s, p50/p99,
//! the daemon's CPU, every round; targets: on >= 0.9x the requests/s of off, p99 <= 1.2x); and
//! the time from a route apply to a routed endpoint. (`bench_http --auth-only`, run directly,
//! measures only authentication.)

use super::driver::run_tests_binary;
use crate::prereq;
use anyhow::Result;
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct BenchHttpOptions {
    /// Seconds per load run.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds per comparison (generated with hand-written, auth on with off); medians and
    /// every round are reported.
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
    run_tests_binary(
        "bench_http",
        &[
            "--seconds".to_string(),
            opts.seconds.to_string(),
            "--rounds".to_string(),
            opts.rounds.to_string(),
            "--connections".to_string(),
            opts.connections.to_string(),
            "--routes".to_string(),
            opts.routes.to_string(),
        ],
    )
}
