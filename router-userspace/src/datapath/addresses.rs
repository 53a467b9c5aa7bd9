//! Owner of `LOCAL_ADDRS`: the router's IPv4 addresses, on which router ports accept new
//! connections (`R`). Configured, or discovered from the interfaces of the namespace the
//! datapath serves. The NAT source toward a backend (`R'`) is not kept here: the kernel picks
//! it per backend with `bpf_fib_lookup(BPF_FIB_LOOKUP_SRC)`, as it would for its own connection.

use super::DatapathError;
use super::object::maps::LOCAL_ADDRS;
use aya::maps::{HashMap, Map, MapData};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub struct LocalAddresses {
    map: HashMap<MapData, u32, u32>,
    programmed: BTreeSet<Ipv4Addr>,
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

fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl LocalAddresses {
    /// Takes the map (a pinned one with an earlier daemon's addresses, or a new one) and
    /// programs the wanted addresses.
    pub fn new(map: Map, fixed: &[Ipv4Addr]) -> Result<LocalAddresses, DatapathError> {
        let map: HashMap<MapData, u32, u32> =
            HashMap::try_from(map).map_err(|source| DatapathError::MapRead {
                map: LOCAL_ADDRS,
                source: Box::new(source),
            })?;
        let mut programmed = BTreeSet::new();
        for key in map.keys() {
            let key = key.map_err(|source| DatapathError::MapRead {
                map: LOCAL_ADDRS,
                source: Box::new(source),
            })?;
            programmed.insert(Ipv4Addr::from(key.to_ne_bytes()));
        }
        let mut owner = LocalAddresses {
            map,
            programmed,
            fixed: fixed.to_vec(),
        };
        owner.refresh()?;
        Ok(owner)
    }

    pub fn addresses(&self) -> &BTreeSet<Ipv4Addr> {
        &self.programmed
    }

    /// Re-reads the interface addresses (when not configured) and updates the map. Must run in
    /// the network namespace the datapath serves.
    pub fn refresh(&mut self) -> Result<(), DatapathError> {
        let wanted: BTreeSet<Ipv4Addr> = if self.fixed.is_empty() {
            discover()?
        } else {
            self.fixed.iter().copied().collect()
        };
        for gone in self
            .programmed
            .difference(&wanted)
            .copied()
            .collect::<Vec<_>>()
        {
            self.map
                .remove(&key(gone))
                .map_err(|source| DatapathError::MapWrite {
                    map: LOCAL_ADDRS,
                    source: Box::new(source),
                })?;
            self.programmed.remove(&gone);
        }
        for new in wanted
            .difference(&self.programmed)
            .copied()
            .collect::<Vec<_>>()
        {
            self.map
                .insert(key(new), 1, 0)
                .map_err(|source| DatapathError::MapWrite {
                    map: LOCAL_ADDRS,
                    source: Box::new(source),
                })?;
            self.programmed.insert(new);
        }
        Ok(())
    }
}
