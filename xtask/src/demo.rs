//! `cargo xtask demo`: builds what the demo needs (kernel object, daemon, the demo driver, the
//! SDK virtualenv), then replaces itself with the driver (`tests/src/bin/task-router-demo.rs`),
//! so Ctrl-C reaches the driver, which tears everything down.

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use crate::prereq;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[derive(Args)]
pub struct DemoOptions {
    /// Leave everything running after the demo, until Ctrl-C, to explore.
    #[arg(long)]
    pub keep: bool,
    /// The clearml SDK release the tasks use (one of tests/python/sdk-versions.txt).
    #[arg(long, value_name = "VERSION")]
    pub sdk: Option<String>,
}

pub fn run(opts: &DemoOptions) -> Result<()> {
    prereq::ensure_all()?;
    prereq::ensure_sdk_venvs()?;
    let object = build::ebpf(&EbpfOptions { release: true })?;
    cmd::run(build::host_cargo(&object).args(["build", "--package", "router-userspace", "--bins"]))
        .context("building the daemon failed")?;
    cmd::run(build::host_cargo(&object).args([
        "build",
        "--package",
        "router-tests",
        "--bin",
        "task-router-demo",
    ]))
    .context("building the demo driver failed")?;
    let driver = workspace_root().join("target/debug/task-router-demo");
    let mut demo = Command::new(&driver);
    if opts.keep {
        demo.arg("--keep");
    }
    if let Some(v) = &opts.sdk {
        demo.args(["--sdk", v]);
    }
    let err = demo.exec();
    bail!("cannot start {}: {err}", driver.display())
}
