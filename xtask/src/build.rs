//! Building the kernel object and the daemon that embeds it.

use crate::cmd::{self, workspace_root};
use crate::setup::{self, NIGHTLY};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

#[derive(Args, Default)]
pub struct EbpfOptions {
    /// Build the kernel object with the release profile (the only one the daemon embeds by
    /// default; both profiles are optimised, since the verifier needs it).
    #[arg(long)]
    pub release: bool,
}

#[derive(Args, Default)]
pub struct BuildOptions {
    /// Release build of the daemon.
    #[arg(long)]
    pub release: bool,
}

#[derive(Args)]
pub struct RunOptions {
    /// Release build of the daemon.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `task-router`, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Where the kernel object of a profile lands.
pub fn ebpf_object(release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    workspace_root()
        .join("target/ebpf")
        .join(BPF_TARGET)
        .join(profile)
        .join("router-ebpf")
}

/// Builds `router-ebpf` for the BPF target with BTF; returns the object's path.
pub fn ebpf(opts: &EbpfOptions) -> Result<PathBuf> {
    setup::ensure()?;
    let root = workspace_root();
    let mut cargo = cmd::cargo_for(Some(NIGHTLY));
    cargo
        .current_dir(root.join("router-ebpf"))
        .args([
            "build",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf"))
        // BTF lets the loader relocate and the verifier explain; `--btf` asks bpf-linker for it.
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-Cdebuginfo=2 -Clink-arg=--btf",
        );
    if opts.release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building the kernel programs (router-ebpf) failed")?;
    let object = ebpf_object(opts.release);
    anyhow::ensure!(
        object.exists(),
        "the build did not produce {}",
        object.display()
    );
    Ok(object)
}

/// The `upgrade-test` variant of the kernel object (release profile, in a target dir of its
/// own so it never invalidates the normal build): what the hitless-upgrade test upgrades to.
pub fn ebpf_upgrade_variant() -> Result<PathBuf> {
    setup::ensure()?;
    let root = workspace_root();
    let target_dir = root.join("target/ebpf-upgrade-test");
    let mut cargo = cmd::cargo_for(Some(NIGHTLY));
    cargo
        .current_dir(root.join("router-ebpf"))
        .args([
            "build",
            "--release",
            "--features",
            "upgrade-test",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-Cdebuginfo=2 -Clink-arg=--btf",
        );
    cmd::run(&mut cargo).context("building the upgrade-test kernel object failed")?;
    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("router-ebpf");
    anyhow::ensure!(
        object.exists(),
        "the build did not produce {}",
        object.display()
    );
    Ok(object)
}

/// Host cargo with the embedded object's path set for `router-userspace`'s build script.
pub fn host_cargo(object: &std::path::Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(workspace_root())
        .env("TASK_ROUTER_EBPF_OBJECT", object);
    cargo
}

/// Kernel object (release) plus the daemon.
pub fn all(opts: &BuildOptions) -> Result<PathBuf> {
    let object = ebpf(&EbpfOptions { release: true })?;
    let mut cargo = host_cargo(&object);
    cargo.args(["build", "--package", "router-userspace", "--bins"]);
    if opts.release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building the daemon failed")?;
    let profile = if opts.release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("task-router"))
}

pub fn run(opts: &RunOptions) -> Result<()> {
    let bin = all(&BuildOptions {
        release: opts.release,
    })?;
    cmd::run(Command::new(&bin).args(&opts.args))
}
