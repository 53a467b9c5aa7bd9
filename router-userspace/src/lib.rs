//! task-router: gives ClearML tasks reachable endpoints.
//!
//! Modules are split by owner: `datapath` owns the kernel programs and their maps, `logging` the
//! log pipeline (tracing, with the kernel's aya-log records forwarded into it); the control plane
//! is `config`, `clearml` (API client), `reconcile` (tasks → wanted routes), `ports` (allocator),
//! `routes_file`, `validate` (untrusted input), `admin` (health/status), `daemon` (wiring) and
//! `instance_lock` (one daemon per router instance).

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod clearml;
pub mod client_allow;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod error;
pub mod fsutil;
pub mod instance_lock;
pub mod logging;
pub mod metrics;
pub mod nginx;
pub mod ports;
pub mod reconcile;
pub mod routes;
pub mod routes_file;
pub mod time;
pub mod validate;

/// Settings of the property tests in the `fuzz` modules (untrusted-input parsers):
/// `default_cases` per property unless `PROPTEST_CASES` says otherwise. A failure is minimised,
/// printed and saved under `proptest-regressions/` (commit that file with the fix: it is
/// replayed first from then on); `PROPTEST_RNG_SEED` fixes the seed.
#[cfg(test)]
pub(crate) fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}
