//! Toolchain set-up for the kernel build: nightly `rust-src` and a `bpf-linker` linked against
//! the nightly toolchain's own libLLVM (there is no system LLVM of the same major version).
//!
//! bpf-linker's build only looks for `bin/llvm-config` under `LLVM_PREFIX` and links
//! `lib/libLLVM.so`; a prefix with a stub `llvm-config` and symlinks to the nightly's library is
//! enough, and the installed binary keeps that prefix as its RUNPATH.

use crate::cmd::{self, output};
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_FEATURE: &str = "llvm-22";

/// Makes sure every piece is in place; a second run finds them and does nothing.
pub fn ensure() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .context(
        "cannot list the nightly toolchain's components: is rustup installed and the `nightly` \
         toolchain present (`rustup toolchain install nightly`)?",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to the nightly toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("adding rust-src failed; the kernel crate needs it for -Z build-std=core")
}

/// The nightly's libLLVM, e.g. `<sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
            .context(
                "cannot find the nightly toolchain's sysroot (`rustc +nightly --print sysroot`)",
            )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libLLVM.so.") {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this nightly toolchain does not ship its LLVM as a shared library",
        lib.display()
    )
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/task-router")
}

/// bpf-linker is usable when it runs (its libLLVM resolves) and was built for the current nightly.
fn bpf_linker_ok(libllvm: &Path) -> bool {
    let Some(version) = output(Command::new("bpf-linker").arg("--version")) else {
        return false;
    };
    if !version.contains(BPF_LINKER_VERSION) {
        return false;
    }
    let stamp = cache_dir().join("bpf-linker.stamp");
    fs::read_to_string(stamp).is_ok_and(|s| s.trim() == libllvm.to_string_lossy())
}

fn ensure_bpf_linker() -> Result<()> {
    let libllvm = nightly_libllvm()?;
    if bpf_linker_ok(&libllvm) {
        return Ok(());
    }
    let prefix = cache_dir().join("llvm-prefix");
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let stub = bin.join("llvm-config");
    fs::write(
        &stub,
        "#!/bin/sh\n# Stub: bpf-linker's build only checks that it exists.\nexit 1\n",
    )
    .with_context(|| format!("cannot write {}", stub.display()))?;
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), libllvm.display()))?;
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about 2 minutes)",
        libllvm.display()
    );
    cmd::run(
        cmd::cargo_for(Some(NIGHTLY))
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                LLVM_FEATURE,
            ])
            .env("LLVM_PREFIX", &prefix)
            .env("LLVM_SYS_221_PREFIX", &prefix),
    )
    .context("building bpf-linker failed; see the cargo output above")?;
    fs::write(
        cache_dir().join("bpf-linker.stamp"),
        libllvm.to_string_lossy().as_bytes(),
    )?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}
