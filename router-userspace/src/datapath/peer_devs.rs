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
use super::object::maps::PEER_DEVS;
use aya::maps::Map;
use router_common::conntrack::PEER_DEVS_MAX;
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

// rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h).
const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Every link of the calling thread's network namespace (`RTM_GETLINK` dump).
pub fn dump_links() -> io::Result<Vec<Link>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let seq: u32 = 1;
    let mut req = [0u8; NLMSG_HDR + IFINFOMSG];
    req[0..4].copy_from_slice(&((NLMSG_HDR + IFINFOMSG) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[NLMSG_HDR] = libc::AF_UNSPEC as u8;
    // SAFETY: `req` is a live buffer of the length given; the kernel is the destination (a
    // zeroed sockaddr_nl).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a live buffer of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if parse_dump(&buf[..n as usize], seq, &mut links)? {
            return Ok(links);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink answer: {what}"),
    )
}

/// Parses one datagram of a link dump into `links`; true when the dump is complete.
pub fn parse_dump(mut b: &[u8], seq: u32, links: &mut Vec<Link>) -> io::Result<bool> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        let kind = u16_at(b, 4).unwrap_or(0);
        if len < NLMSG_HDR || len > b.len() {
            return Err(malformed("message length"));
        }
        let msg_seq = u32_at(b, 8).unwrap_or(0);
        let body = &b[NLMSG_HDR..len];
        if msg_seq == seq {
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let errno = u32_at(body, 0).ok_or_else(|| malformed("error message"))? as i32;
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                RTM_NEWLINK => links.push(parse_link(body)?),
                _ => {}
            }
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok(false)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes of a netlink attribute stream: (type, payload).
fn attributes(mut b: &[u8]) -> impl Iterator<Item = io::Result<(u16, &[u8])>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16_at(b, 0).unwrap_or(0) as usize;
        let kind = u16_at(b, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            b = &[];
            return Some(Err(malformed("attribute length")));
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some(Ok((kind, payload)))
    })
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
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

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
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
