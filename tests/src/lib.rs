//! Fixtures for the scenario tests: network namespaces and veth links that remove themselves
//! (also when a test fails), running code inside a namespace, the daemon as a child process
//! (`scenario` builds its command line and waits until it is ready), the sync engine with
//! recording owners (`engine`), one HTTP client (`http_client`), packet cases as data
//! (`progtest_cases`), and waiting on conditions instead of sleeping.

pub mod attached;
pub mod bpf_run_time;
pub mod churn;
pub mod clearml_server;
pub mod connect_loop;
pub mod daemon;
pub mod e2e;
pub mod engine;
pub mod flood_setup;
pub mod http_backend;
pub mod http_client;
pub mod metrics;
pub mod netns;
pub mod nft_nat;
pub mod nginx;
pub mod owners;
pub mod packet;
pub mod packet_fuzz;
pub mod pins;
pub mod progtest_cases;
pub mod routes;
pub mod scenario;
pub mod syn_flood;
pub mod topology;
pub mod traffic;
pub mod wait;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The `task-router` binary built by `cargo xtask test` (debug profile).
pub fn daemon_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug/task-router");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

/// Panics with a message unless running as root (these tests load BPF and create namespaces).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "scenario tests need root (BPF, network namespaces): run `cargo xtask test` as root"
    );
}
