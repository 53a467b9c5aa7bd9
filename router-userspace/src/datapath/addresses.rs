//! Owner of `LOCAL_ADDRS`: the router's IPv4 addresses, on which router ports accept new
//! connections (`R`). Configured, or discovered from the interfaces of the namespace the
//! datapath serves. The NAT source toward a backend (`R'`) is not kept here: the kernel picks
//! it per backend with `bpf_fib_lookup(BPF_FIB_LOOKUP_SRC)`, as it would for its own connection.

use super::DatapathError;
use super::key_set::KeySet;
use super::object::maps::LOCAL_ADDRS;
use aya::maps::Map;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub struct LocalAddresses {
    set: KeySet,
    /// Configured addresses; empty = discover.
    fixed: Vec<Ipv4Addr>,
}

/// The IPv4 addresses of this network namespace's interfaces.
pub fn discover() -> Result<BTreeSet<Ipv4Addr>, DatapathError> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| DatapathError::Addresses(std::io::Error::from(e)))?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|a| a.as_sockaddr_in().map(|sin| sin.ip()))
        .filter(|ip| !ip.is_unspecified())
        .collect())
}

/// The map key of an address: its bytes in network order, as the programs read them.
fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl LocalAddresses {
    /// Takes the map (a pinned one with an earlier daemon's addresses, or a new one) and
    /// programs the wanted addresses.
    pub fn new(map: Map, fixed: &[Ipv4Addr]) -> Result<LocalAddresses, DatapathError> {
        let mut owner = LocalAddresses {
            set: KeySet::open(map, LOCAL_ADDRS)?,
            fixed: fixed.to_vec(),
        };
        owner.refresh()?;
        Ok(owner)
    }

    /// The addresses programmed.
    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.set
            .keys()
            .iter()
            .map(|k| Ipv4Addr::from(k.to_ne_bytes()))
            .collect()
    }

    /// Re-reads the interface addresses (when not configured) and updates the map. Must run in
    /// the network namespace the datapath serves.
    pub fn refresh(&mut self) -> Result<(), DatapathError> {
        let wanted: BTreeSet<u32> = if self.fixed.is_empty() {
            discover()?.into_iter().map(key).collect()
        } else {
            self.fixed.iter().copied().map(key).collect()
        };
        self.set.sync(&wanted)?;
        Ok(())
    }
}
