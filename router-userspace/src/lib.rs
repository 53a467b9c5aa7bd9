//! task-router: gives ClearML tasks reachable endpoints.
//!
//! Modules are split by owner: `datapath` owns the kernel programs and their maps, `nginx` the
//! generated nginx configuration (HTTP routes, the TCP fallback) and the nginx it drives, `auth`
//! the answers to nginx's `auth_request`, `logging` the log pipeline (tracing, with the kernel's
//! aya-log records forwarded into it); the control plane is `config`, `clearml` (API client),
//! `reconcile` (tasks → wanted routes), `routes` (the wanted-route model and its owners'
//! traits), `ports` (allocator), `routes_file`, `validate` (untrusted input), `admin`
//! (health/status), `metrics` (`/metrics`), `daemon` (wiring) and `instance_lock` (one daemon
//! per router instance). `endpoint` (the identity of a task endpoint), `error`, `fsutil`, `time`,
//! `backoff`, `port_holder` (who holds a port, for start-up errors) and `host_ephemeral` (the
//! host's ephemeral port range) sit one floor below them all. `docs/architecture.md` maps the rooms.

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod build_info;
pub mod clearml;
pub mod cli_assets;
pub mod client_allow;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod endpoint;
pub mod error;
pub mod fsutil;
pub mod host_ephemeral;
pub mod instance_lock;
pub mod logging;
pub mod metrics;
pub mod nginx;
pub mod port_holder;
pub mod ports;
pub mod procfs;
pub mod reconcile;
pub mod routes;
pub mod routes_file;
pub mod tcp_listeners;
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
