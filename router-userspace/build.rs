//! Embeds the kernel object built by `cargo xtask build-ebpf` so one binary is all a host needs.

use std::path::PathBuf;

fn main() {
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
