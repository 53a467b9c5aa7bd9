//! Owner of `CLIENT_ALLOW` (an LPM trie, layout in `router_common::client_allow`): each TCP
//! route's effective client allow-list. The kernel asks it only when a SYN would open a
//! connection, so a change applies to new connections at once and established ones keep
//! flowing (they never look at it again).
//!
//! Writes are ordered so no moment admits a client that neither the old nor the new list
//! admits: a port's CIDRs go in before its refusing entry, the refusing entry goes before its
//! CIDRs when the port opens to everyone, and CIDRs a list dropped go last.

use super::DatapathError;
use super::object::maps::CLIENT_ALLOW;
use crate::client_allow::ClientAllow;
use crate::routes::{RouteRef, TcpRoute};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use ipnet::Ipv4Net;
use router_common::client_allow::{
    CLIENT_ALLOWED, CLIENT_REFUSED, ClientAllowData, PORT_PREFIX_LEN,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub struct ClientAllowMap {
    map: LpmTrie<MapData, ClientAllowData, u32>,
    /// The restricted ports in the map (each with its refusing entry) and their CIDRs.
    programmed: BTreeMap<u16, BTreeSet<Ipv4Net>>,
}

fn port_key(port: u16) -> Key<ClientAllowData> {
    Key::new(PORT_PREFIX_LEN, ClientAllowData::new(port, 0))
}

fn net_key(port: u16, net: &Ipv4Net) -> Key<ClientAllowData> {
    let addr = u32::from_ne_bytes(net.network().octets());
    Key::new(
        PORT_PREFIX_LEN + u32::from(net.prefix_len()),
        ClientAllowData::new(port, addr),
    )
}

fn write_err(source: aya::maps::MapError) -> DatapathError {
    DatapathError::MapWrite {
        map: CLIENT_ALLOW,
        source: Box::new(source),
    }
}

impl ClientAllowMap {
    /// Takes the map with what it holds (empty when fresh; an earlier daemon's lists when
    /// pinned, enforced until the first `set` for each port).
    pub fn new(map: Map) -> Result<ClientAllowMap, DatapathError> {
        let read_err = |source| DatapathError::MapRead {
            map: CLIENT_ALLOW,
            source: Box::new(source),
        };
        let map = LpmTrie::try_from(map).map_err(read_err)?;
        let mut programmed: BTreeMap<u16, BTreeSet<Ipv4Net>> = BTreeMap::new();
        for key in map.keys() {
            let key: Key<ClientAllowData> = key.map_err(read_err)?;
            let data = key.data();
            let port = u16::from_be_bytes(data.port_be);
            let cidrs = programmed.entry(port).or_default();
            let len = key.prefix_len().saturating_sub(PORT_PREFIX_LEN);
            if len > 0
                && let Ok(net) = Ipv4Net::new(Ipv4Addr::from(data.addr), len as u8)
            {
                cidrs.insert(net);
            }
        }
        Ok(ClientAllowMap { map, programmed })
    }

    /// The restricted ports and their CIDRs, as in the map.
    pub fn programmed(&self) -> &BTreeMap<u16, BTreeSet<Ipv4Net>> {
        &self.programmed
    }

    /// Programs the allow-list of each wanted route; returns the routes whose list is in force
    /// (a route whose list could not be written is left out, so it is never served wider than
    /// asked) and the failures.
    pub fn apply(
        &mut self,
        wanted: &BTreeMap<u16, TcpRoute>,
    ) -> (BTreeMap<u16, TcpRoute>, Vec<(RouteRef, String)>) {
        let mut failed = Vec::new();
        let mut kept = BTreeMap::new();
        for (&port, route) in wanted {
            match self.set(port, &route.allow) {
                Ok(()) => {
                    kept.insert(port, route.clone());
                }
                Err(e) => failed.push((
                    RouteRef::Tcp(port),
                    format!(
                        "programming its client allow-list: {}",
                        crate::error::error_chain(&e)
                    ),
                )),
            }
        }
        (kept, failed)
    }

    /// Makes `port` admit exactly `allow`.
    pub fn set(&mut self, port: u16, allow: &ClientAllow) -> Result<(), DatapathError> {
        let Some(nets) = allow.nets() else {
            return self.clear(port);
        };
        let wanted: BTreeSet<Ipv4Net> = nets.iter().copied().collect();
        let had = self.programmed.get(&port).cloned();
        for net in &wanted {
            if had.as_ref().is_none_or(|h| !h.contains(net)) {
                self.map
                    .insert(&net_key(port, net), CLIENT_ALLOWED, 0)
                    .map_err(write_err)?;
                self.programmed.entry(port).or_default().insert(*net);
            }
        }
        if had.is_none() {
            self.map
                .insert(&port_key(port), CLIENT_REFUSED, 0)
                .map_err(write_err)?;
            self.programmed.entry(port).or_default();
        }
        for net in had.unwrap_or_default().difference(&wanted) {
            self.remove(&net_key(port, net))?;
            if let Some(cidrs) = self.programmed.get_mut(&port) {
                cidrs.remove(net);
            }
        }
        Ok(())
    }

    /// Removes every restricted port `keep` says no to (its route went).
    pub fn retain(&mut self, keep: impl Fn(u16) -> bool) -> Result<(), DatapathError> {
        let gone: Vec<u16> = self
            .programmed
            .keys()
            .copied()
            .filter(|p| !keep(*p))
            .collect();
        for port in gone {
            self.clear(port)?;
        }
        Ok(())
    }

    /// Opens `port` to everyone: its refusing entry first, then its CIDRs.
    fn clear(&mut self, port: u16) -> Result<(), DatapathError> {
        let Some(cidrs) = self.programmed.get(&port).cloned() else {
            return Ok(());
        };
        self.remove(&port_key(port))?;
        for net in &cidrs {
            self.remove(&net_key(port, net))?;
        }
        self.programmed.remove(&port);
        Ok(())
    }

    /// Deletes `key`; one already gone is no error.
    fn remove(&mut self, key: &Key<ClientAllowData>) -> Result<(), DatapathError> {
        match self.map.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(write_err(source)),
        }
    }
}
