//! What the test suite needs from the machine, installed when missing (CI runs as root on a
//! fresh machine), or a clear stop naming what is missing.

use crate::cmd::{self, output};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// Debian packages the tests drive for real, with the command each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("ethtool", "/usr/sbin/ethtool"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("nginx", "/usr/sbin/nginx"),
    (
        "libnginx-mod-stream",
        "/usr/lib/nginx/modules/ngx_stream_module.so",
    ),
    ("iperf3", "/usr/bin/iperf3"),
    ("python3-venv", "/usr/share/doc/python3-venv"),
];

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Debian packages `cargo xtask bench` drives on top of the test ones: the peers the datapath
/// is compared with (nftables NAT, haproxy as the userspace proxy; nginx and iperf3 above).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nftables", "/usr/sbin/nft"),
    ("haproxy", "/usr/sbin/haproxy"),
];

/// Installs every missing package with apt-get (one `update`, one `install`).
pub fn ensure_packages() -> Result<()> {
    install_missing(PACKAGES)
}

/// What the benchmarks need: the test prerequisites plus [`BENCH_PACKAGES`].
pub fn ensure_bench() -> Result<()> {
    ensure_all()?;
    install_missing(BENCH_PACKAGES)?;
    // The Debian haproxy package starts a system haproxy; the benchmark runs its own.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "haproxy"])
        .status();
    Ok(())
}

fn install_missing(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, path)| !Path::new(path).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run as root or install them with \
             `apt-get install -y {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed")?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {} failed", missing.join(" ")))?;
    // The Debian nginx package starts a system nginx on port 80; the tests run their own.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "nginx"])
        .status();
    Ok(())
}

/// bpffs at /sys/fs/bpf, where pins live.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs at /sys/fs/bpf failed")
}

pub fn ensure_all() -> Result<()> {
    if !is_root() {
        bail!("the test suite loads BPF programs and creates network namespaces: run it as root");
    }
    ensure_packages()?;
    ensure_bpffs()
}
