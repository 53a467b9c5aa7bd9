//! `cargo xtask dist`: what a release ships, in `target/dist/`: the Debian package (cargo-deb:
//! the daemon, its systemd unit, the example configuration, man pages and shell completions,
//! the maintainer scripts Debian expects) and the OCI image of `cargo xtask image` as an
//! archive. Both carry the same binary.

use crate::build::{self, EbpfOptions};
use crate::cmd::{self, workspace_root};
use crate::image::{self, ImageOptions};
use crate::prereq;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args)]
pub struct DistOptions {
    /// Package the debug build instead of a release build (the package test does, to keep CI
    /// time down; a release never does).
    #[arg(long)]
    pub debug: bool,
    /// Only the Debian package, no image.
    #[arg(long)]
    pub no_image: bool,
    /// Build the image on local base images (see `cargo xtask image --help`).
    #[arg(long)]
    pub local_bases: bool,
}

/// Where the release artifacts land.
pub fn dist_dir() -> PathBuf {
    workspace_root().join("target/dist")
}

/// The unit as installed by hand (deploy/task-router.service) runs /usr/local/bin/task-router;
/// the package's binary is /usr/bin/task-router.
const MANUAL_BINARY: &str = "/usr/local/bin/task-router";
const PACKAGE_BINARY: &str = "/usr/bin/task-router";

pub fn run(opts: &DistOptions) -> Result<()> {
    prereq::ensure_cargo_deb()?;
    let binary = build_binary(opts.debug)?;
    let deb = debian_package(&binary, opts.debug)?;
    println!("{}", deb.display());
    if !opts.no_image {
        prereq::ensure_container_tools()?;
        let built = image::build(&ImageOptions {
            tag: None,
            prebuilt: Some(binary),
            local_bases: opts.local_bases,
            engine: "podman".into(),
        })?;
        let version = image::workspace_version()?;
        let archive = dist_dir().join(format!("task-router-{version}.oci.tar"));
        let _ = std::fs::remove_file(&archive);
        cmd::run(
            image::engine("podman")
                .args(["save", "--format", "oci-archive", "-o"])
                .arg(&archive)
                .arg(&built.image),
        )
        .context("saving the image as an OCI archive failed")?;
        println!("{}", archive.display());
    }
    Ok(())
}

/// The daemon, as `cargo xtask build` makes it; a release build takes the commit's date as its
/// build date (`SOURCE_DATE_EPOCH`), so two builds of one tag report the same (the debug build
/// is the test suite's own, left as it is).
fn build_binary(debug: bool) -> Result<PathBuf> {
    let object = build::ebpf(&EbpfOptions { release: true })?;
    let mut cargo = build::host_cargo(&object);
    cargo.args(["build", "--package", "router-userspace", "--bins"]);
    if !debug {
        cargo.arg("--release");
    }
    if !debug
        && let Some(epoch) = cmd::output(
            Command::new("git")
                .args(["log", "-1", "--format=%ct"])
                .current_dir(workspace_root()),
        )
    {
        cargo.env("SOURCE_DATE_EPOCH", epoch.trim());
    }
    cmd::run(&mut cargo).context("building the daemon failed")?;
    let profile = if debug { "debug" } else { "release" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("task-router"))
}

/// Generates what the package holds besides the binary, then runs cargo-deb on the binary
/// already built; returns the `.deb`'s path.
fn debian_package(binary: &Path, debug: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let dist = dist_dir();
    let assets = dist.join("assets");
    let _ = std::fs::remove_dir_all(&assets);
    cmd::run(
        Command::new(binary)
            .args(["generate-assets", "--out-dir"])
            .arg(&assets)
            // Its list of files; stdout is for the package's path.
            .stdout(std::process::Stdio::null()),
    )
    .context("generating the man pages and completions failed")?;
    // Debian installs man pages compressed; -n keeps the timestamp out (reproducible).
    let man = assets.join("man");
    for page in std::fs::read_dir(&man).with_context(|| format!("cannot read {}", man.display()))? {
        cmd::run(Command::new("gzip").args(["-9nf"]).arg(page?.path()))?;
    }
    maintainer_files(&dist.join("debian"))?;
    let mut cargo_deb = Command::new("cargo");
    cargo_deb
        .current_dir(&root)
        .args([
            "deb",
            "--package",
            "router-userspace",
            "--no-build",
            "--output",
        ])
        .arg(&dist);
    if debug {
        // cargo-deb takes the binary from <target dir>/release/ (its dev-profile support is
        // going away): a target dir of its own with the debug build there, symbols stripped.
        let target = dist.join("debug-target");
        let release = target.join("release");
        std::fs::create_dir_all(&release)
            .with_context(|| format!("cannot create {}", release.display()))?;
        std::fs::copy(binary, release.join("task-router"))
            .with_context(|| format!("cannot copy {}", binary.display()))?;
        cmd::run(
            Command::new("strip")
                .arg("--strip-debug")
                .arg(release.join("task-router")),
        )?;
        cargo_deb.env("CARGO_TARGET_DIR", &target);
    }
    let out = cargo_deb.output().context("could not start cargo deb")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(
        deb.ends_with(".deb") && Path::new(&deb).exists(),
        "cargo deb printed no package path: {deb:?}"
    );
    Ok(PathBuf::from(deb))
}

/// `dir/`: the systemd unit (deploy/task-router.service with the package's binary path) and the
/// maintainer scripts (deploy/debian/), where cargo-deb adds the systemd snippets.
fn maintainer_files(dir: &Path) -> Result<()> {
    let root = workspace_root();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let unit_path = root.join("deploy/task-router.service");
    let unit = std::fs::read_to_string(&unit_path)
        .with_context(|| format!("cannot read {}", unit_path.display()))?;
    std::fs::write(dir.join("task-router.service"), package_unit(&unit)?)
        .context("cannot write the package's unit")?;
    for script in ["prerm", "postrm"] {
        let from = root.join("deploy/debian").join(script);
        std::fs::copy(&from, dir.join(script))
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    Ok(())
}

/// The unit with the package's binary path in `ExecStart=` (the hand-install comments stay
/// out: the package did those steps).
fn package_unit(unit: &str) -> Result<String> {
    let exec = format!("ExecStart={MANUAL_BINARY} ");
    if unit.matches(&exec).count() != 1 {
        bail!("deploy/task-router.service has no single `{exec}` line");
    }
    let body: String = unit
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(format!(
        "# task-router, as installed by its Debian package (made from deploy/task-router.service).\n\
         # Configure /etc/task-router/runtime.env, then `systemctl restart task-router`.\n{}",
        body.replace(&exec, &format!("ExecStart={PACKAGE_BINARY} "))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_unit_runs_the_package_binary() {
        let unit = std::fs::read_to_string(workspace_root().join("deploy/task-router.service"))
            .expect("unit");
        let packaged = package_unit(&unit).expect("package unit");
        assert!(
            packaged.contains("ExecStart=/usr/bin/task-router run"),
            "{packaged}"
        );
        assert!(!packaged.contains(MANUAL_BINARY), "{packaged}");
        assert!(packaged.contains("\n[Unit]\n") && packaged.contains("\n[Install]\n"));
    }
}
