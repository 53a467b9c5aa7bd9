//! nftables DNAT + masquerade in a namespace, the kernel NAT peer the benchmarks compare the
//! datapath with: router ports translated to backend ports, everything toward the backend
//! masqueraded. The table lives in the namespace and goes with it.

use crate::netns::Netns;
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;

/// Loads table `table` into `ns`: `router:port` → `backend:backend_port` for each
/// `(port, backend_port)`, and masquerade toward `backend`. The rules file is written to `dir`.
pub fn dnat_masquerade(
    ns: &Netns,
    dir: &Path,
    table: &str,
    router: Ipv4Addr,
    ports: &[(u16, u16)],
    backend: Ipv4Addr,
) -> Result<()> {
    let dnat: String = ports
        .iter()
        .map(|(p, bp)| format!("ip daddr {router} tcp dport {p} dnat to {backend}:{bp}; "))
        .collect();
    let rules = format!(
        "table ip {table} {{\n\
         chain pre {{ type nat hook prerouting priority dstnat; {dnat}}}\n\
         chain post {{ type nat hook postrouting priority srcnat; \
         ip daddr {backend} masquerade; }}\n}}\n"
    );
    let file = dir.join(format!("{table}.nft"));
    std::fs::write(&file, rules).with_context(|| format!("write {}", file.display()))?;
    ns.run("nft", &["-f", file.to_str().context("utf-8 path")?])
        .map(|_| ())
}
