//! The oracle the invariants use: checksums recomputed from scratch with
//! [`crate::packet::checksum`] (never the crate's incremental `csum` code), which frames
//! concern the router, which bytes a translation may change.

use super::case::{ETH_LEN, ETH_P_IP, ihl_bytes};
use crate::packet::checksum;
use router_common::conntrack::{CtKey4, CtValue4};
use std::collections::HashMap;

/// The IPv4 header and L4 part of an Ethernet/IPv4 frame, when they are well-formed enough to
/// have checksums: version 4, IHL ≥ 5, header inside the frame; L4 = the bytes the total
/// length covers (`None` when it does not fit the frame or is shorter than the header).
struct Ipv4View<'a> {
    header: &'a [u8],
    l4: Option<&'a [u8]>,
    proto: u8,
}

fn ipv4(frame: &[u8]) -> Option<Ipv4View<'_>> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != ETH_P_IP {
        return None;
    }
    let l3 = &frame[ETH_LEN..];
    let ihl = (l3[0] & 0x0f) as usize * 4;
    if l3[0] >> 4 != 4 || ihl < 20 || ihl > l3.len() {
        return None;
    }
    let tot = u16::from_be_bytes([l3[2], l3[3]]) as usize;
    let l4 = (tot >= ihl && tot <= l3.len()).then(|| &l3[ihl..tot]);
    Some(Ipv4View {
        header: &l3[..ihl],
        l4,
        proto: l3[9],
    })
}

fn pseudo_sum_ok(header: &[u8], proto: u8, segment: &[u8]) -> bool {
    let mut v = Vec::with_capacity(12 + segment.len());
    v.extend_from_slice(&header[12..20]);
    v.push(0);
    v.push(proto);
    v.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    v.extend_from_slice(segment);
    checksum(&v) == 0
}

/// Which checksums of a frame are right (`None`: the frame has no such checksum, or its
/// lengths make it undefined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksums {
    pub ipv4: Option<bool>,
    /// TCP over pseudo-header and segment, or ICMP over the message.
    pub l4: Option<bool>,
    /// The IPv4 header an ICMP error quotes.
    pub quoted_ipv4: Option<bool>,
}

pub fn checksums(frame: &[u8]) -> Checksums {
    let mut c = Checksums {
        ipv4: None,
        l4: None,
        quoted_ipv4: None,
    };
    let Some(ip) = ipv4(frame) else {
        return c;
    };
    c.ipv4 = Some(checksum(ip.header) == 0);
    match (ip.proto, ip.l4) {
        (6, Some(seg)) if seg.len() >= 20 => {
            c.l4 = Some(pseudo_sum_ok(ip.header, 6, seg));
        }
        (1, Some(msg)) if msg.len() >= 8 => {
            c.l4 = Some(checksum(msg) == 0);
            if msg.len() >= 28 && msg[8] == 0x45 {
                c.quoted_ipv4 = Some(checksum(&msg[8..28]) == 0);
            }
        }
        _ => {}
    }
    c
}

/// Recomputes every checksum the frame has (as far as its lengths allow): after a mutation,
/// so the mutated headers rather than a bad checksum are what the programs meet.
pub fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != ETH_P_IP {
        return;
    }
    let ihl = ihl_bytes(frame);
    if ihl < 20 || ETH_LEN + ihl > frame.len() {
        return;
    }
    let l3 = ETH_LEN;
    let tot = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) as usize;
    let end = if tot >= ihl && l3 + tot <= frame.len() {
        l3 + tot
    } else {
        frame.len()
    };
    let l4 = l3 + ihl;
    match frame[l3 + 9] {
        6 if end >= l4 + 18 => {
            frame[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
            let mut v = frame[l3 + 12..l3 + 20].to_vec();
            v.extend_from_slice(&[0, 6]);
            v.extend_from_slice(&((end - l4) as u16).to_be_bytes());
            v.extend_from_slice(&frame[l4..end]);
            let c = checksum(&v);
            frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        }
        1 if end >= l4 + 4 => {
            let q = l4 + 8;
            if end >= q + 20 && frame[q] == 0x45 {
                frame[q + 10..q + 12].copy_from_slice(&[0, 0]);
                let c = checksum(&frame[q..q + 20]);
                frame[q + 10..q + 12].copy_from_slice(&c.to_be_bytes());
            }
            frame[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
            let c = checksum(&frame[l4..end]);
            frame[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[l3..l3 + ihl]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// The TCP tuple of an Ethernet/IPv4 frame read at the fixed offsets the programs use (a
/// 20-byte IPv4 header), as a connection-table key.
pub fn tcp_key(frame: &[u8]) -> Option<CtKey4> {
    if frame.len() < ETH_LEN + 24 || frame[12..14] != ETH_P_IP || frame[ETH_LEN + 9] != 6 {
        return None;
    }
    Some(key_at(frame, ETH_LEN, ETH_LEN + 20))
}

/// The IPv4 source and destination (network order, read natively) of an Ethernet/IPv4 frame.
pub fn ipv4_addrs(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != ETH_P_IP {
        return None;
    }
    let k = key_at(frame, ETH_LEN, ETH_LEN);
    Some((k.saddr, k.daddr))
}

fn key_at(frame: &[u8], ip: usize, ports: usize) -> CtKey4 {
    let w32 = |o: usize| u32::from_ne_bytes([frame[o], frame[o + 1], frame[o + 2], frame[o + 3]]);
    let w16 = |o: usize| u16::from_ne_bytes([frame[o], frame[o + 1]]);
    CtKey4 {
        saddr: w32(ip + 12),
        daddr: w32(ip + 16),
        sport: w16(ports),
        dport: w16(ports + 2),
    }
}

/// For an ICMP destination-unreachable or time-exceeded frame quoting an IPv4/TCP packet:
/// the key of the entry that matches answers to the quoted packet (its tuple swapped).
pub fn icmp_quote_key(frame: &[u8]) -> Option<CtKey4> {
    let q = ETH_LEN + 20 + 8;
    if frame.len() < q + 24 || frame[12..14] != ETH_P_IP || frame[ETH_LEN + 9] != 1 {
        return None;
    }
    if !matches!(frame[ETH_LEN + 20], 3 | 11) {
        return None;
    }
    Some(key_at(frame, q, q + 20).swapped())
}

/// Whether the router has any business with this frame: TCP to a routed port, a segment of a
/// tracked connection, or an ICMP error about one. Every other frame must leave untouched.
pub fn concerns_router(
    frame: &[u8],
    routed_ports: &[u16],
    table: &HashMap<CtKey4, CtValue4>,
) -> bool {
    let tracked = |k: &CtKey4| table.get(k).is_some_and(|v| !v.is_tombstone());
    if frame.len() < ETH_LEN + 20 || frame[12..14] != ETH_P_IP {
        return false;
    }
    match frame[ETH_LEN + 9] {
        6 => {
            // Ports where a 20-byte header puts them, and where the IHL puts them.
            let ihl = ihl_bytes(frame).max(20);
            [ETH_LEN + 20, ETH_LEN + ihl].iter().any(|&ports| {
                frame.len() >= ports + 4 && {
                    let key = key_at(frame, ETH_LEN, ports);
                    routed_ports.contains(&u16::from_be(key.dport)) || tracked(&key)
                }
            })
        }
        1 => icmp_quote_key(frame).is_some_and(|k| tracked(&k)),
        _ => false,
    }
}

/// Byte positions a translation may change: MACs, TTL, addresses and header checksum; TCP
/// ports and checksum; for an ICMP error also its checksum and the quoted addresses, header
/// checksum and ports. Any other changed byte is a bug.
pub fn may_change(frame: &[u8], at: usize) -> bool {
    let ip = ETH_LEN;
    let l4 = ETH_LEN + 20;
    if at < 12 || at == ip + 8 || (ip + 10..ip + 20).contains(&at) {
        return true;
    }
    match frame.get(ip + 9) {
        Some(6) => {
            (l4..l4 + 4).contains(&at)
                || (l4 + 16..l4 + 18).contains(&at)
                || (mss_option(frame).is_some() && (l4 + 22..l4 + 24).contains(&at))
        }
        Some(1) => {
            let q = l4 + 8;
            (l4 + 2..l4 + 4).contains(&at)
                || (q + 10..q + 20).contains(&at)
                || (q + 20..q + 24).contains(&at)
        }
        _ => false,
    }
}

/// The MSS a handshake segment asks for, when it is the first TCP option (where the programs
/// clamp it to the links' MTU; the only option they may change).
pub fn mss_option(frame: &[u8]) -> Option<u16> {
    let l4 = ETH_LEN + 20;
    let syn = frame.get(l4 + 13)? & 0x02 != 0;
    let doff = (frame.get(l4 + 12)? >> 4) as usize;
    let opt = frame.get(l4 + 20..l4 + 24)?;
    (syn && doff >= 6 && opt[0] == 2 && opt[1] == 4).then(|| u16::from_be_bytes([opt[2], opt[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{self, TCP_SYN, Tcp4};
    use std::net::Ipv4Addr;

    #[test]
    fn checksums_see_a_flipped_bit_and_fix_restores_them() {
        let f = Tcp4::new(
            Ipv4Addr::new(10, 0, 0, 1),
            1,
            Ipv4Addr::new(10, 0, 0, 2),
            2,
            TCP_SYN,
        )
        .payload(b"abc")
        .build();
        let ok = Checksums {
            ipv4: Some(true),
            l4: Some(true),
            quoted_ipv4: None,
        };
        assert_eq!(checksums(&f), ok);
        let mut bad = f.clone();
        bad[ETH_LEN + 20 + 4] ^= 0x10;
        assert_eq!(checksums(&bad).l4, Some(false));
        fix_checksums(&mut bad);
        assert_eq!(checksums(&bad), ok);
        let icmp = packet::icmp_error(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            3,
            4,
            1400,
            &f,
            8,
        );
        assert_eq!(
            checksums(&icmp),
            Checksums {
                quoted_ipv4: Some(true),
                ..ok
            }
        );
        let key = icmp_quote_key(&icmp).expect("quotes TCP");
        assert_eq!(key, tcp_key(&f).expect("tcp").swapped());
    }
}
