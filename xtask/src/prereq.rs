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
    // Load generator of `cargo xtask bench-http`.
    ("wrk", "/usr/bin/wrk"),
    // `systemd-analyze verify` checks deploy/task-router.service.
    ("systemd", "/usr/bin/systemd-analyze"),
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

/// The npm packages the deploy tests run (dclint with the Compose specification schema, yaml),
/// installed from `tests/deploy/package-lock.json` into `tests/deploy/node_modules`. A copy of
/// the lock file inside node_modules records what is installed, so a second run does nothing.
pub fn ensure_node_packages() -> Result<()> {
    let dir = crate::cmd::workspace_root().join("tests/deploy");
    let lock_path = dir.join("package-lock.json");
    let lock = std::fs::read(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let stamp = dir.join("node_modules/.task-router-installed-lock.json");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == lock) {
        return Ok(());
    }
    let node = output(Command::new("node").arg("--version")).context(
        "node is missing: the deploy tests need Node.js 20.19 or newer with npm (the machine \
         image ships them)",
    )?;
    let mut parts = node.trim().trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (20, 19) {
        bail!(
            "node {} is too old for the deploy tests' dclint: Node.js 20.19 or newer is needed",
            node.trim()
        );
    }
    eprintln!("xtask: installing the deploy tests' npm packages (tests/deploy)");
    cmd::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir),
    )
    .context("npm ci in tests/deploy failed")?;
    std::fs::write(&stamp, &lock).with_context(|| format!("cannot write {}", stamp.display()))
}

pub fn ensure_all() -> Result<()> {
    if !is_root() {
        bail!("the test suite loads BPF programs and creates network namespaces: run it as root");
    }
    ensure_packages()?;
    ensure_node_packages()?;
    ensure_container_tools()?;
    ensure_deploy_venv()?;
    ensure_cargo_deb()?;
    ensure_bpffs()
}

/// What the container tests and `cargo xtask image` drive: podman with runc (crun refuses this
/// kind of machine's hybrid cgroups), debootstrap for the local base images, and podman's
/// helpers for rootless networking and overlay storage.
const CONTAINER_PACKAGES: &[(&str, &str)] = &[
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("uidmap", "/usr/bin/newuidmap"),
    ("slirp4netns", "/usr/bin/slirp4netns"),
    ("fuse-overlayfs", "/usr/bin/fuse-overlayfs"),
    // The init process compose's `init: true` asks for.
    ("catatonit", "/usr/libexec/podman/catatonit"),
];

pub fn ensure_container_tools() -> Result<()> {
    install_missing(CONTAINER_PACKAGES)
}

/// The deploy tests' Python tools (podman-compose, kubernetes-validate, checkov) in a
/// project-local virtualenv, `target/deploy-venv/`, from `tests/deploy/requirements.txt`. A copy
/// of the requirements inside the venv records what is installed, so a second run does nothing.
pub fn ensure_deploy_venv() -> Result<()> {
    let root = crate::cmd::workspace_root();
    let requirements = root.join("tests/deploy/requirements.txt");
    let wanted = std::fs::read(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let dir = root.join("target/deploy-venv");
    let stamp = dir.join("task-router-requirements.txt");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the deploy tests' Python tools in {}",
        dir.display()
    );
    if !dir.join("bin/pip").exists() {
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
            .context("python3 -m venv failed (Debian package python3-venv)")?;
    }
    cmd::run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )
    .context("pip install -r tests/deploy/requirements.txt failed")?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("cannot write {}", stamp.display()))
}

/// cargo-deb, which `cargo xtask dist` packs the Debian package with.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn ensure_cargo_deb() -> Result<()> {
    if output(Command::new("cargo-deb").arg("--version"))
        .is_some_and(|v| v.contains(CARGO_DEB_VERSION))
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (about two minutes, once)");
    cmd::run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]))
    .context("cargo install cargo-deb failed")
}

/// The clearml SDK releases the tests drive (`tests/python/sdk-versions.txt`).
pub fn sdk_versions() -> Result<Vec<String>> {
    let path = crate::cmd::workspace_root().join("tests/python/sdk-versions.txt");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// One virtualenv per SDK release under `target/sdk-venv/<version>/`, created with
/// `python3 -m venv` and `pip install clearml==<version>`; kept while it holds that release.
pub fn ensure_sdk_venvs() -> Result<()> {
    let root = crate::cmd::workspace_root().join("target/sdk-venv");
    for version in sdk_versions()? {
        let dir = root.join(&version);
        let python = dir.join("bin/python");
        let installed = output(Command::new(&python).args([
            "-c",
            "import importlib.metadata as m; print(m.version('clearml'))",
        ]));
        if installed.as_deref().map(str::trim) == Some(version.as_str()) {
            continue;
        }
        eprintln!(
            "xtask: creating the clearml {version} SDK virtualenv in {}",
            dir.display()
        );
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove the stale {}", dir.display()))?;
        }
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
            .context("python3 -m venv failed (Debian package python3-venv)")?;
        cmd::run(
            Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("clearml=={version}")),
        )
        .with_context(|| format!("pip install clearml=={version} failed"))?;
    }
    Ok(())
}
