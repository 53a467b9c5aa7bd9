//! podman for the container tests, and everything they create removed on drop (also when a test
//! fails): images built by `cargo xtask image` under names unique to the test process, compose
//! projects (containers, pod, volumes), pods played from Kubernetes manifests, the datapath's
//! pins on the host's bpffs, and veth links from the host's network namespace into the test's.
//!
//! podman gets the project's settings for this kind of machine through `CONTAINERS_CONF` (never
//! `/etc/containers`): `tests/deploy/containers.conf` (no rlimit raise, cgroupfs, runc) plus a
//! seccomp profile generated under `target/` from the system's own. Debian 12's podman 4.3 profile
//! allows `bpf` and `perf_event_open` only with CAP_SYS_ADMIN; the generated one also allows them
//! with CAP_BPF and CAP_PERFMON, as Docker's default profile does since Docker 23, so the router
//! runs with the capabilities the compose file lists and no more.

#![allow(dead_code)] // each test binary uses a different part

use router_tests::netns::{Netns, unique};
use router_tests::workspace_root;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A tool of the deploy tests' virtualenv (`target/deploy-venv`, made by `cargo xtask test`).
pub fn venv_tool(name: &str) -> PathBuf {
    let path = workspace_root().join("target/deploy-venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test` (it installs \
         tests/deploy/requirements.txt there)",
        path.display()
    );
    path
}

/// The `CONTAINERS_CONF` file of the tests, generated once per process.
pub fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let dir = target_dir().join("deploy-podman");
        std::fs::create_dir_all(&dir).expect("create target/deploy-podman");
        let system: Value = serde_json::from_str(
            &std::fs::read_to_string("/usr/share/containers/seccomp.json")
                .expect("podman's default seccomp profile (Debian package podman)"),
        )
        .expect("the seccomp profile is JSON");
        let seccomp = dir.join(format!("seccomp.{}.json", std::process::id()));
        std::fs::write(&seccomp, seccomp_with_bpf_caps(system).to_string())
            .expect("write the seccomp profile");
        let base = std::fs::read_to_string(workspace_root().join("tests/deploy/containers.conf"))
            .expect("tests/deploy/containers.conf");
        let conf = base.replacen(
            "[containers]\n",
            &format!(
                "[containers]\nseccomp_profile = \"{}\"\n",
                seccomp.display()
            ),
            1,
        );
        assert_ne!(
            conf, base,
            "tests/deploy/containers.conf has a [containers] table"
        );
        let path = dir.join(format!("containers.{}.conf", std::process::id()));
        std::fs::write(&path, conf).expect("write containers.conf");
        path
    })
}

/// The system profile with Docker 23's rules for eBPF: `bpf` with CAP_BPF and `perf_event_open`
/// with CAP_PERFMON are allowed, and their "permission denied" rule no longer applies then.
fn seccomp_with_bpf_caps(mut profile: Value) -> Value {
    let pairs = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")];
    let rules = profile["syscalls"]
        .as_array_mut()
        .expect("a seccomp profile has syscalls");
    for rule in rules.iter_mut() {
        if rule["action"] != "SCMP_ACT_ERRNO" {
            continue;
        }
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !pairs.iter().any(|(name, _)| n == name));
        }
    }
    for (name, cap) in pairs {
        rules.push(json!({"names": [name], "action": "SCMP_ACT_ALLOW",
                          "includes": {"caps": [cap]}, "excludes": {}}));
        rules.push(
            json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN", cap]}}),
        );
    }
    profile
}

/// `podman` with the tests' settings.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", containers_conf());
    cmd
}

/// Runs `podman args`, panicking with its output when it fails; returns stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman().args(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {} failed:\n{}",
        args.join(" "),
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every name `cargo xtask image --tag TAG` may make (xtask/src/image.rs, `LocalNames`): what a
/// test removes, also when the build failed half-way and printed none.
pub fn image_names(tag: &str) -> Vec<String> {
    let (name, version) = tag.rsplit_once(':').expect("name:tag");
    let mut all: Vec<String> = ["base-debian", "base-webserver", "base-rust"]
        .iter()
        .map(|suffix| format!("{name}-{suffix}:{version}"))
        .collect();
    all.push(tag.to_string());
    all
}

/// The router image and its local bases, built by `cargo xtask image --local-bases --prebuilt`
/// with the daemon `cargo xtask test` built; removed on drop.
pub struct Images {
    pub router: String,
    /// The local stand-in for the nginx image: the webserver runs it, the router is built on it.
    pub webserver: String,
    all: Vec<String>,
}

impl Images {
    pub fn build(prefix: &str) -> Images {
        let tag = format!("localhost/{}:test", unique(prefix));
        let xtask = target_dir().join("debug/xtask");
        let out = Command::new(&xtask)
            .args(["image", "--local-bases", "--tag", &tag, "--prebuilt"])
            .arg(router_tests::daemon_binary())
            .env("CONTAINERS_CONF", containers_conf())
            .output()
            .unwrap_or_else(|e| panic!("run {} (built by `cargo xtask`): {e}", xtask.display()));
        let made: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let all = image_names(&tag);
        let images = Images {
            router: tag.clone(),
            webserver: made
                .iter()
                .find(|i| i.contains("-base-webserver:"))
                .cloned()
                .unwrap_or_default(),
            all,
        };
        assert!(
            out.status.success() && !images.webserver.is_empty(),
            "cargo xtask image failed:\n{}",
            show(&out)
        );
        images
    }

    /// The image's labels.
    pub fn labels(&self) -> serde_json::Map<String, Value> {
        let text = podman_ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .Labels}}",
            &self.router,
        ]);
        serde_json::from_str::<Value>(&text)
            .expect("labels are JSON")
            .as_object()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in &self.all {
            let _ = podman().args(["image", "rm", "--force", image]).output();
        }
    }
}

/// Where compose puts the router's pins on the host: `/sys/fs/bpf` is mounted into the
/// container and `ROUTER_BPFFS` is fixed below it (deploy/docker-compose.yml).
pub const HOST_PINS: &str = "/sys/fs/bpf/task-router";

/// The host's pin directory, claimed for one test: refused when something already pinned
/// there (a real installation's datapath is not ours to touch), removed on drop.
pub struct HostPins;

impl HostPins {
    pub fn claim() -> HostPins {
        assert!(
            !Path::new(HOST_PINS).exists(),
            "{HOST_PINS} exists: a task-router runs on this host (or a test left it); the \
             container tests pin there and will not touch it"
        );
        HostPins
    }

    pub fn layout_dir(&self) -> PathBuf {
        Path::new(HOST_PINS).join(format!("layout-{}", router_common::LAYOUT_VERSION))
    }
}

impl Drop for HostPins {
    fn drop(&mut self) {
        // Unpinning a link whose daemon is gone detaches its program; the maps go with the
        // last reference.
        let _ = std::fs::remove_dir_all(HOST_PINS);
    }
}

/// A veth pair from the host's network namespace (where host-network containers run) into a
/// test namespace: `host_dev` with `host_addr/24` here, `ns_dev` with `ns_addr/24` in `ns`.
/// Deleted on drop (the namespace's end goes with it).
pub struct HostLink {
    pub host_dev: String,
    pub ns_dev: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        show(&out)
    );
}

impl HostLink {
    pub fn new(ns: &Netns, host_addr: Ipv4Addr, ns_addr: Ipv4Addr) -> HostLink {
        let (host_dev, ns_dev) = (unique("tdh"), unique("tdn"));
        // Made inside the namespace, then one end moved here: a failure half-way leaves
        // nothing in the host's namespace that the namespace's removal would not take.
        ns.ip(&[
            "link", "add", &ns_dev, "type", "veth", "peer", "name", &host_dev,
        ])
        .expect("veth");
        let link = HostLink {
            host_dev,
            ns_dev,
            host_addr,
            ns_addr,
        };
        let pid = std::process::id().to_string();
        ns.ip(&["link", "set", &link.host_dev, "netns", &pid])
            .expect("move the veth end to the host");
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/24"),
            "dev",
            &link.host_dev,
        ]);
        ip(&["link", "set", &link.host_dev, "up"]);
        ns.ip(&["addr", "add", &format!("{ns_addr}/24"), "dev", &link.ns_dev])
            .expect("address");
        ns.ip(&["link", "set", &link.ns_dev, "up"]).expect("up");
        link
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .output();
    }
}

/// A free TCP port on the host's loopback (bound, then released for a container to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The names of the programs attached to `dev` of the host's namespace at the TCX hooks, with
/// their kernel tags (16 hex digits).
pub fn tcx_programs(dev: &str) -> Vec<(String, String)> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut found = Vec::new();
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(dev, hook).expect("query TCX programs");
        found.extend(progs.iter().map(|p| {
            (
                p.name_as_str().unwrap_or("?").to_string(),
                format!("{:016x}", p.tag()),
            )
        }));
    }
    found
}

/// The kernel's view (`/proc/PID/status`) of the `task-router run` process in `container`.
pub fn daemon_status(container: &str) -> String {
    let top = podman_ok(&["top", container, "hpid", "args"]);
    let pid = top
        .lines()
        .find(|l| l.contains("task-router run") && !l.contains("podman-init"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no task-router process in:\n{top}"));
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status")
}

/// A hex capability mask line (`CapEff:` ...) of a status file.
pub fn status_mask(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} in {status}"));
    u64::from_str_radix(hex.trim(), 16).expect("hex capability mask")
}

/// The mask of `caps` (`CAP_*` or bare names) less those this machine cannot grant at all: the
/// sandbox has no CAP_SYS_RESOURCE in its bounding set, so no container can get it.
pub fn grantable_mask(caps: &[String]) -> u64 {
    let bit = |cap: &str| match cap.trim_start_matches("CAP_") {
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for {other}"),
    };
    let ours = std::fs::read_to_string("/proc/self/status").expect("status");
    caps.iter()
        .map(|c| 1u64 << bit(c))
        .fold(0, |all, b| all | b)
        & status_mask(&ours, "CapBnd:")
}

/// The daemon in `container` runs as uid 0, without new privileges, with exactly `caps`.
pub fn assert_daemon_privileges(container: &str, caps: &[String]) {
    let status = daemon_status(container);
    let expected = grantable_mask(caps);
    assert_eq!(status_mask(&status, "CapEff:"), expected, "{status}");
    assert_eq!(status_mask(&status, "CapBnd:"), expected, "{status}");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid");
    assert_eq!(
        uid.split_whitespace().next(),
        Some("0"),
        "runs as uid 0: {uid}"
    );
    let no_new_privs = status.lines().find_map(|l| l.strip_prefix("NoNewPrivs:"));
    assert_eq!(no_new_privs.map(str::trim), Some("1"), "no new privileges");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_profile_lets_bpf_through_with_cap_bpf_only() {
        let system = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}, "excludes": {}},
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ERRNO",
             "errnoRet": 1, "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        ]});
        let rules = seccomp_with_bpf_caps(system)["syscalls"].clone();
        assert_eq!(rules[1]["names"], json!(["setns"]));
        assert!(
            rules
                .as_array()
                .expect("rules")
                .iter()
                .any(|r| r["names"] == json!(["bpf"])
                    && r["action"] == "SCMP_ACT_ALLOW"
                    && r["includes"]["caps"] == json!(["CAP_BPF"]))
        );
    }
}
