//! Owner of `TX_PORTS`: the interfaces native XDP may redirect to. An interface attached in
//! native XDP mode is one only while the kernel says it takes redirected frames (its
//! `xdp-features` has `ndo-xmit`, see [`super::xdp_features`]): a veth does only while its peer
//! runs XDP or has GRO on, and a frame redirected into one that does not is lost after the
//! XDP program translated it (the kernel answers the redirect with EOPNOTSUPP; only the
//! `xdp:xdp_redirect_err` tracepoint shows it). Toward any other interface XDP hands the
//! packet to the TC program untouched (`xdp_to_tc_not_xdp_target`), which forwards it.
//!
//! Re-read every sweep: a veth peer turning GRO on or off changes the answer. The sweep then
//! bumps the next-hop epoch, so connections re-check their cached choice. Targets added by
//! hand ([`XdpTargets::add`], for BPF_PROG_TEST_RUN) are kept as they are.
//!
//! Redirects can be turned off altogether ([`XdpTargets::set_redirects`]): XDP then
//! translates nothing and hands every packet to TC. The daemon does that while a veth runs
//! native XDP, because what a local sender puts on a veth carries a partial checksum XDP
//! cannot see, and a redirected frame leaves with it (corrupt on arrival).

use super::DatapathError;
use super::attach;
use super::object::maps::TX_PORTS;
use super::xdp_features::xdp_features;
use aya::Ebpf;
use aya::maps::DevMapHash;
use std::collections::BTreeSet;

pub struct XdpTargets {
    /// Interfaces attached in native XDP mode.
    native: Vec<String>,
    /// Targets added by hand, kept whatever the kernel says.
    manual: BTreeSet<u32>,
    /// What the map holds.
    programmed: BTreeSet<u32>,
    /// Whether native XDP interfaces may be targets at all.
    redirects: bool,
    /// Whether "the kernel cannot tell" was logged (once per daemon).
    warned_unknown: bool,
}

fn devmap(ebpf: &mut Ebpf) -> Result<DevMapHash<&mut aya::maps::MapData>, DatapathError> {
    let map = ebpf
        .map_mut(TX_PORTS)
        .ok_or(DatapathError::MissingMap(TX_PORTS))?;
    DevMapHash::try_from(map).map_err(|source| DatapathError::MapRead {
        map: TX_PORTS,
        source: Box::new(source),
    })
}

impl XdpTargets {
    /// The owner of the map as it is (a pinned one holds an earlier daemon's targets until
    /// the first [`XdpTargets::refresh`]), managing no interface yet.
    pub fn open(ebpf: &mut Ebpf) -> Result<XdpTargets, DatapathError> {
        let programmed = devmap(ebpf)?
            .keys()
            .collect::<Result<BTreeSet<u32>, _>>()
            .map_err(|source| DatapathError::MapRead {
                map: TX_PORTS,
                source: Box::new(source),
            })?;
        Ok(XdpTargets {
            native: Vec::new(),
            manual: BTreeSet::new(),
            programmed,
            redirects: true,
            warned_unknown: false,
        })
    }

    /// Sets the interfaces attached in native XDP mode (the candidates of the next refresh).
    pub fn manage(&mut self, native: Vec<String>) {
        self.native = native;
    }

    /// Allows or forbids redirects to the native XDP interfaces (the next refresh applies it).
    pub fn set_redirects(&mut self, allowed: bool) {
        self.redirects = allowed;
    }

    /// Makes `ifindex` a target whatever the kernel says (tests and benchmarks that drive the
    /// programs through BPF_PROG_TEST_RUN).
    pub fn add(&mut self, ebpf: &mut Ebpf, ifindex: u32) -> Result<(), DatapathError> {
        self.manual.insert(ifindex);
        attach::add_xdp_target(ebpf, ifindex)?;
        self.programmed.insert(ifindex);
        Ok(())
    }

    /// Re-reads which native-XDP interfaces take redirects and makes the map hold exactly
    /// those (and the manual ones); whether anything changed (connections that cached the
    /// old answer must look again: bump the next-hop epoch). Must run in the datapath's
    /// network namespace.
    pub fn refresh(&mut self, ebpf: &mut Ebpf) -> Result<bool, DatapathError> {
        let mut wanted = self.manual.clone();
        if self.redirects {
            wanted.extend(self.taking_redirects());
        }
        if wanted == self.programmed {
            return Ok(false);
        }
        let gone: Vec<u32> = self.programmed.difference(&wanted).copied().collect();
        let new: Vec<u32> = wanted.difference(&self.programmed).copied().collect();
        if !gone.is_empty() {
            let mut map = devmap(ebpf)?;
            for index in gone {
                map.remove(index)
                    .map_err(|source| DatapathError::MapWrite {
                        map: TX_PORTS,
                        source: Box::new(source),
                    })?;
                self.programmed.remove(&index);
                tracing::info!(
                    ifindex = index,
                    "no longer an XDP redirect target (XDP hands its packets to TC)"
                );
            }
        }
        for index in new {
            attach::add_xdp_target(ebpf, index)?;
            self.programmed.insert(index);
            tracing::info!(ifindex = index, "XDP redirect target");
        }
        Ok(true)
    }

    /// The native XDP interfaces the kernel says take redirects (all of them when it cannot
    /// say).
    fn taking_redirects(&mut self) -> BTreeSet<u32> {
        if self.native.is_empty() {
            return BTreeSet::new();
        }
        let features = match xdp_features() {
            Ok(Some(f)) => Some(f),
            Ok(None) | Err(_) => {
                if !self.warned_unknown {
                    tracing::warn!(
                        "the kernel cannot say which interfaces take XDP redirects (no netdev \
                         family): every native XDP interface is a redirect target"
                    );
                    self.warned_unknown = true;
                }
                None
            }
        };
        self.native
            .iter()
            .filter_map(|name| attach::ifindex(name).ok())
            .filter(|index| {
                features
                    .as_ref()
                    .is_none_or(|f| f.get(index).is_some_and(|x| x.takes_redirects()))
            })
            .collect()
    }
}
