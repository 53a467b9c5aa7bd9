//! `cargo xtask test`: the one command CI runs.

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use crate::prereq;
use anyhow::{Context, Result};
use clap::Args;
use std::process::Command;

#[derive(Args)]
pub struct TestOptions {
    /// Skip rustfmt and clippy (for quick iteration; CI never skips them).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments passed to `cargo test` (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &TestOptions) -> Result<()> {
    prereq::ensure_all()?;
    prereq::ensure_sdk_venvs()?;
    let object = build::ebpf(&EbpfOptions { release: true })?;
    // The hitless-upgrade test (`ops_restart`) upgrades a running datapath to this one.
    build::ebpf_upgrade_variant()?;
    let root = workspace_root();
    if !opts.no_lint {
        cmd::run(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
        )
        .context("code is not formatted: run `cargo fmt --all`")?;
        cmd::run(
            Command::new("cargo")
                .current_dir(root.join("router-ebpf"))
                .args(["fmt", "--", "--check"]),
        )
        .context("router-ebpf is not formatted: run `cargo fmt` in router-ebpf/")?;
        cmd::run(build::host_cargo(&object).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .context("clippy found problems")?;
    }
    // The scenario tests start the real daemon binary.
    cmd::run(build::host_cargo(&object).args(["build", "--package", "router-userspace", "--bins"]))
        .context("building the daemon failed")?;
    cmd::run(
        build::host_cargo(&object)
            .args(["test", "--workspace"])
            .args(&opts.args),
    )
    .context("tests failed")
}
