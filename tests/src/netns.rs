//! Network namespaces and veth links owned by a test: created on construction, removed on drop.
//!
//! Names carry the test process's PID and a counter so parallel tests (and other sessions on
//! the same kernel) never collide; interface names stay within 15 bytes.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process: `<prefix><pid%100000>x<n>`.
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "interface name {name} is too long");
    name
}

/// Prefixes of the names this crate's fixtures give namespaces.
const OWN_PREFIXES: [&str; 3] = ["tr", "td", "e2"];

/// The PID (mod 100 000) in a name [`unique`] made with one of [`OWN_PREFIXES`]; `None` for any
/// other name.
fn owner_pid(name: &str) -> Option<u32> {
    if !OWN_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let (head, counter) = name.rsplit_once('x')?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == head.len() {
        return None;
    }
    head[head.len() - digits..].parse().ok()
}

/// Whether a process whose PID is `pid_mod` modulo 100 000 runs now.
fn any_process_with(pid_mod: u32) -> bool {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    (pid_mod..=pid_max)
        .step_by(100_000)
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes, once per process, the namespaces of test processes that no longer run (killed
/// before their fixtures' drop could run: a timeout, a SIGKILL), so a suite starts clean.
fn remove_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(out) = ip(&["netns", "list"]) else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if owner_pid(name).is_some_and(|pid| !any_process_with(pid)) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    });
}

fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace, deleted (with every link inside it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Netns> {
        remove_stale_once();
        let name = unique(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a shell-less command inside the namespace, failing on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` in {} failed: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates belong to the
    /// namespace for their whole life, so they can be used from any thread afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let handle = std::thread::spawn(move || -> Result<T> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the test namespace")?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// A TCP connection made from inside the namespace, with `timeout` for the connect and
    /// for every read and write after it.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let stream = self
            .enter(move || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connect to {addr} from {}", self.name))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }

    /// Sets a sysctl inside the namespace, e.g. `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.run("sysctl", &["-qw", setting]).map(|_| ())
    }

    /// `dev`'s index and byte counters, as `ip -s link` shows them.
    pub fn link_counters(&self, dev: &str) -> Result<LinkCounters> {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", dev])?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("`ip -j -s link show dev {dev}` answered no JSON"))?;
        let link = &json[0];
        let number = |v: &serde_json::Value, what: &str| {
            v.as_u64()
                .with_context(|| format!("`ip -j -s link show dev {dev}` has no {what}"))
        };
        Ok(LinkCounters {
            ifindex: number(&link["ifindex"], "ifindex")? as u32,
            rx_bytes: number(&link["stats64"]["rx"]["bytes"], "rx bytes")?,
            tx_bytes: number(&link["stats64"]["tx"]["bytes"], "tx bytes")?,
        })
    }

    /// The namespace's IP, TCP and TcpExt counters (`/proc/net/snmp` and `/proc/net/netstat`
    /// as seen from inside it), by section and name (`Tcp.InSegs`, `TcpExt.TCPRcvCoalesce`).
    pub fn tcp_counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut counters = BTreeMap::new();
        for file in ["/proc/net/snmp", "/proc/net/netstat"] {
            let out = self.run("cat", &[file])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().collect();
            // Pairs of lines: `Tcp: name name ...` then `Tcp: value value ...`.
            for pair in lines.chunks(2) {
                let [names, values] = pair else {
                    bail!("{file} in {} has an unpaired line", self.name);
                };
                let mut names = names.split_whitespace();
                let section = names.next().unwrap_or_default().trim_end_matches(':');
                for (name, value) in names.zip(values.split_whitespace().skip(1)) {
                    // Some are signed (Tcp MaxConn is -1): not counters.
                    if let Ok(v) = value.parse::<u64>() {
                        counters.insert(format!("{section}.{name}"), v);
                    }
                }
            }
        }
        Ok(counters)
    }

    /// Turns checksum/segmentation offload on or off for `dev` (`ethtool -K dev tx on|off`).
    pub fn tx_offload(&self, dev: &str, on: bool) -> Result<()> {
        self.run("ethtool", &["-K", dev, "tx", if on { "on" } else { "off" }])
            .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// What [`Netns::link_counters`] reads.
#[derive(Clone, Copy, Debug)]
pub struct LinkCounters {
    pub ifindex: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One end of a veth pair as placed in a namespace.
#[derive(Clone, Debug)]
pub struct VethEnd {
    pub ns: String,
    pub dev: String,
    pub addr: Ipv4Addr,
}

/// Links namespaces `a` and `b` with a veth pair, addresses `addr_a/24` and `addr_b/24`, both
/// up. The pair lives inside the namespaces and goes with them.
pub fn veth(
    a: &Netns,
    addr_a: Ipv4Addr,
    b: &Netns,
    addr_b: Ipv4Addr,
) -> Result<(VethEnd, VethEnd)> {
    let (dev_a, dev_b) = (unique("tva"), unique("tvb"));
    ip(&[
        "link", "add", &dev_a, "netns", &a.name, "type", "veth", "peer", "name", &dev_b, "netns",
        &b.name,
    ])?;
    for (ns, dev, addr) in [(a, &dev_a, addr_a), (b, &dev_b, addr_b)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok((
        VethEnd {
            ns: a.name.clone(),
            dev: dev_a,
            addr: addr_a,
        },
        VethEnd {
            ns: b.name.clone(),
            dev: dev_b,
            addr: addr_b,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_fixture_name_is_read_back() {
        assert_eq!(owner_pid("trpt30705x38"), Some(30705));
        assert_eq!(owner_pid("e2c1234x0"), Some(1234));
        assert_eq!(
            owner_pid(&unique("tdwr")),
            Some(std::process::id() % 100_000)
        );
        for other in ["ns1", "trpt", "trptx3", "trpt12x", "myns30705x38", "tr12xy"] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn this_process_counts_as_running() {
        assert!(any_process_with(std::process::id() % 100_000));
    }
}
