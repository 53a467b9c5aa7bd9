//! Owner of `PEER_DEVS`: the interfaces of the datapath's namespace whose peer device lives in
//! another namespace (veth and netkit pairs: the router's ends of container links). TC hands a
//! packet leaving through one of them straight to the peer's ingress (`bpf_redirect_peer`),
//! skipping the router-side device's transmit path and a round through the per-CPU backlog.
//!
//! Why the set must be exact: the kernel drops a packet redirected to the peer of a device
//! that has none (a NIC, a bridge) or whose peer is in the same namespace. So the set is read
//! from the kernel's own answer, an `RTM_GETLINK` dump: a device with a peer reports its kind
//! (`veth`, `netkit`) and, only when the peer is in another namespace, that namespace's id
//! (`IFLA_LINK_NETNSID`). The sweep refreshes the set and then bumps the next-hop epoch, so a
//! connection's cached choice is at most one sweep old.
//!
//! Side effect an operator may notice: forwarded packets toward such an interface are not
//! counted in its transmit statistics and not seen by a packet capture on it (they appear on
//! the peer's receive side).

use super::DatapathError;
use super::key_set::KeySet;
use super::netlink::{self, NLM_F_DUMP, NLM_F_REQUEST, attributes, c_string, malformed, u32_at};
use super::object::maps::PEER_DEVS;
use aya::maps::Map;
use router_common::conntrack::PEER_DEVS_MAX;
use std::collections::BTreeSet;
use std::io;

/// Device kinds whose peer `bpf_redirect_peer` can deliver to.
const PEER_KINDS: &[&str] = &["veth", "netkit"];

pub struct PeerDevs {
    set: KeySet,
    /// Whether the "more interfaces than room" warning was given (once per daemon).
    warned_full: bool,
}

impl PeerDevs {
    /// Takes the (never pinned, so empty) map and programs the namespace's current set. Must
    /// run in the network namespace the datapath serves.
    pub fn new(map: Map) -> Result<PeerDevs, DatapathError> {
        let mut owner = PeerDevs {
            set: KeySet::open(map, PEER_DEVS)?,
            warned_full: false,
        };
        owner.refresh()?;
        Ok(owner)
    }

    /// The ifindexes programmed.
    pub fn programmed(&self) -> &BTreeSet<u32> {
        self.set.keys()
    }

    /// Re-reads the namespace's links and updates the map. Must run in the network namespace
    /// the datapath serves.
    pub fn refresh(&mut self) -> Result<(), DatapathError> {
        let links = dump_links().map_err(DatapathError::Links)?;
        let qualifying: Vec<&Link> = links.iter().filter(|l| l.peer_elsewhere()).collect();
        let mut wanted: BTreeSet<u32> = qualifying.iter().map(|l| l.index).collect();
        if wanted.len() > PEER_DEVS_MAX as usize {
            if !self.warned_full {
                tracing::warn!(
                    interfaces = wanted.len(),
                    room = PEER_DEVS_MAX,
                    "more container-side interfaces than room for peer hand-off: the rest are \
                     forwarded through their own egress (correct, slower)"
                );
                self.warned_full = true;
            }
            wanted = wanted.into_iter().take(PEER_DEVS_MAX as usize).collect();
        }
        if self.set.sync(&wanted)? {
            tracing::debug!(
                interfaces = ?qualifying.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
                "interfaces whose peer is in another namespace (TC peer hand-off)"
            );
        }
        Ok(())
    }
}

/// What the kernel says about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); `None` for devices without one (NICs, lo).
    pub kind: Option<String>,
    /// `IFLA_LINK_NETNSID`: present only when the device's peer or lower device is in another
    /// namespace.
    pub link_netnsid: Option<i32>,
}

impl Link {
    /// Whether `bpf_redirect_peer` to this device reaches its peer.
    pub fn peer_elsewhere(&self) -> bool {
        self.link_netnsid.is_some()
            && self
                .kind
                .as_deref()
                .is_some_and(|k| PEER_KINDS.contains(&k))
    }
}

// rtnetlink constants (linux/rtnetlink.h, linux/if_link.h).
const IFINFOMSG: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;

/// Every link of the calling thread's network namespace (`RTM_GETLINK` dump).
pub fn dump_links() -> io::Result<Vec<Link>> {
    let seq: u32 = 1;
    let mut ifinfomsg = [0u8; IFINFOMSG];
    ifinfomsg[0] = libc::AF_UNSPEC as u8;
    let request = netlink::message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, &ifinfomsg);
    let mut links = Vec::new();
    netlink::exchange(libc::NETLINK_ROUTE, &request, |datagram| {
        parse_dump(datagram, seq, &mut links)
    })?;
    Ok(links)
}

/// Parses one datagram of a link dump into `links`; true when the dump is complete.
pub fn parse_dump(b: &[u8], seq: u32, links: &mut Vec<Link>) -> io::Result<bool> {
    netlink::answer_datagram(b, seq, |kind, body| {
        if kind == RTM_NEWLINK {
            links.push(parse_link(body)?);
        }
        Ok(())
    })
}

/// One `RTM_NEWLINK` body: `ifinfomsg`, then attributes.
fn parse_link(body: &[u8]) -> io::Result<Link> {
    let index = u32_at(body, 4).ok_or_else(|| malformed("ifinfomsg"))?;
    let attrs = body
        .get(IFINFOMSG..)
        .ok_or_else(|| malformed("ifinfomsg"))?;
    let mut link = Link {
        index,
        name: String::new(),
        kind: None,
        link_netnsid: None,
    };
    for attr in attributes(attrs) {
        let (kind, payload) = attr?;
        match kind {
            IFLA_IFNAME => link.name = c_string(payload),
            IFLA_LINK_NETNSID => {
                link.link_netnsid =
                    Some(u32_at(payload, 0).ok_or_else(|| malformed("IFLA_LINK_NETNSID"))? as i32)
            }
            IFLA_LINKINFO => {
                for info in attributes(payload) {
                    let (info_kind, info_payload) = info?;
                    if info_kind == IFLA_INFO_KIND {
                        link.kind = Some(c_string(info_payload));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::datapath::netlink::{NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, attr};

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        netlink::message(kind, 0, seq, body)
    }

    fn newlink(index: u32, name: &str, kind: Option<&str>, netnsid: Option<i32>) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if let Some(kind) = kind {
            // IFLA_LINKINFO is nested (NLA_F_NESTED set, masked off when parsing).
            let info = attr(IFLA_INFO_KIND, kind.as_bytes());
            body.extend(attr(IFLA_LINKINFO | 0x8000, &info));
        }
        if let Some(id) = netnsid {
            body.extend(attr(IFLA_LINK_NETNSID, &id.to_ne_bytes()));
        }
        message(RTM_NEWLINK, 1, &body)
    }

    #[test]
    fn only_veth_and_netkit_with_a_peer_namespace_take_the_peer_hand_off() {
        let mut dump = Vec::new();
        dump.extend(newlink(1, "lo", None, None));
        dump.extend(newlink(2, "eth0", None, None));
        dump.extend(newlink(3, "veth-task", Some("veth"), Some(0)));
        dump.extend(newlink(4, "veth-same-ns", Some("veth"), None));
        dump.extend(newlink(5, "br0", Some("bridge"), None));
        dump.extend(newlink(6, "nk0", Some("netkit"), Some(2)));
        // A macvlan over a device in another namespace has a link namespace but no peer.
        dump.extend(newlink(7, "mv0", Some("macvlan"), Some(1)));
        dump.extend(message(NLMSG_DONE, 1, &0u32.to_ne_bytes()));
        let mut links = Vec::new();
        assert!(parse_dump(&dump, 1, &mut links).expect("parse"));
        let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lo",
                "eth0",
                "veth-task",
                "veth-same-ns",
                "br0",
                "nk0",
                "mv0"
            ]
        );
        let peers: Vec<u32> = links
            .iter()
            .filter(|l| l.peer_elsewhere())
            .map(|l| l.index)
            .collect();
        assert_eq!(peers, [3, 6]);
    }

    #[test]
    fn a_dump_spread_over_datagrams_completes_only_at_done() {
        let mut links = Vec::new();
        assert!(
            !parse_dump(&newlink(3, "a", Some("veth"), Some(0)), 1, &mut links).expect("first")
        );
        let done = message(NLMSG_DONE, 1, &0u32.to_ne_bytes());
        assert!(parse_dump(&done, 1, &mut links).expect("second"));
        assert_eq!(links.len(), 1);
    }

    #[test]
    fn truncated_or_failed_answers_are_errors_not_panics() {
        let full = newlink(3, "veth-task", Some("veth"), Some(0));
        let cut_at = |cut: usize| {
            let mut m = full[..cut].to_vec();
            // The header claims only what is there; what is inside is cut short.
            m[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let mut links = Vec::new();
            parse_dump(&m, 1, &mut links).map(|_| links)
        };
        // No room for the ifinfomsg, or for its index.
        assert!(cut_at(17).is_err());
        assert!(cut_at(20).is_err());
        // The last attribute (the namespace id) cut short.
        assert!(cut_at(full.len() - 3).is_err());
        // A stub of less than an attribute header after the ifinfomsg is ignored.
        let stub = cut_at(NLMSG_HDR + IFINFOMSG + 1).expect("stub");
        assert_eq!(stub[0].index, 3);
        assert!(!stub[0].peer_elsewhere());
        let mut bad_len = full.clone();
        bad_len[0..4].copy_from_slice(&(full.len() as u32 + 100).to_ne_bytes());
        assert!(parse_dump(&bad_len, 1, &mut Vec::new()).is_err());
        let error = message(NLMSG_ERROR, 1, &(-libc::EPERM).to_ne_bytes());
        let e = parse_dump(&error, 1, &mut Vec::new()).expect_err("an error answer");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn the_kernel_answers_a_dump_with_the_loopback_device() {
        let links = dump_links().expect("RTM_GETLINK dump");
        assert!(
            links.iter().any(|l| l.name == "lo" && !l.peer_elsewhere()),
            "{links:?}"
        );
    }
}
