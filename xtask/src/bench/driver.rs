//! Building and running the benchmark driver binaries of the tests crate (release, as the
//! daemon ships), shared by every section.

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds `datapath-bench` and makes the report directory: (the driver, the directory).
pub fn build_driver(object: &Path) -> Result<(PathBuf, PathBuf)> {
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

/// Runs `cmd` with stderr passed through and returns its stdout.
pub fn capture(cmd: &mut Command) -> Result<String> {
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
