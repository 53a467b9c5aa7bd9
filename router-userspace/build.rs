//! Embeds the kernel object built by `cargo xtask build-ebpf` so one binary is all a host needs,
//! and records the build's identity (`task-router --version`, `task_router_build_info`): the
//! git revision and the build date, read here because only the build sees the checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    embed_kernel_object();
    record_revision();
    record_build_date();
}

fn embed_kernel_object() {
    println!("cargo:rerun-if-env-changed=TASK_ROUTER_EBPF_OBJECT");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/router-ebpf");
    let object = std::env::var_os("TASK_ROUTER_EBPF_OBJECT").map_or(default, PathBuf::from);
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the kernel object {} is missing: build it with `cargo xtask build-ebpf --release` \
             (or build everything with `cargo xtask build`)",
            object.display()
        );
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::copy(&object, out.join("router-ebpf.o")).expect("copy the kernel object into OUT_DIR");
}

fn git(args: &[&str]) -> Option<String> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// `TASK_ROUTER_GIT_REVISION` when set (an image build has no `.git`: `cargo xtask image` passes
/// it), else the checkout's HEAD commit; `unknown` outside a checkout (a source tarball). No
/// `-dirty` mark: editing a file does not re-run this script, so the mark would go stale.
fn record_revision() {
    println!("cargo:rerun-if-env-changed=TASK_ROUTER_GIT_REVISION");
    let revision = std::env::var("TASK_ROUTER_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "HEAD"])?;
            // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs.
            for path in ["HEAD", "packed-refs"] {
                watch_git_path(path);
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch_git_path(&branch);
            }
            Some(head)
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TASK_ROUTER_GIT_REVISION={revision}");
}

fn watch_git_path(name: &str) {
    if let Some(path) = git(&["rev-parse", "--git-path", name]) {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
        let path = Path::new(&path);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            manifest.join(path)
        };
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// The UTC date of the build, or of `SOURCE_DATE_EPOCH` when set (reproducible builds: `cargo
/// xtask dist` and the image pass the commit's date); `unknown` where `date` cannot say.
fn record_build_date() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let mut date = Command::new("date");
    date.args(["-u", "+%F"]);
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|s| s.trim().parse::<i64>().is_ok())
    {
        date.arg(format!("--date=@{}", epoch.trim()));
    }
    let day = date
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TASK_ROUTER_BUILD_DATE={day}");
}
