//! Packet-path fuzzing for BPF_PROG_TEST_RUN: a seeded generator of random and mutated frames
//! (valid Ethernet/IPv4/TCP and ICMP frames for the routed ports and tracked connections, then
//! bit flips, truncations, bad IHL/lengths, IP options, fragments, odd TCP flags and data
//! offsets, VLAN tags, IPv6, ARP, runts), the oracle the invariants use (checksums recomputed
//! from scratch with [`packet::checksum`], never the crate's incremental `csum` code; which
//! frames concern the router; which bytes a translation may change), and the corpus format
//! (`tests/corpus/packets/*.hex`).

use crate::packet::{self, Mac, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Tcp4, checksum};
use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::rngs::StdRng;
use router_common::conntrack::{CtKey4, CtValue4};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

pub const ETH_LEN: usize = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// The interface a frame arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub const fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// One frame to run, with where it arrives and how it was made (for failure reports).
#[derive(Clone, Debug)]
pub struct Case {
    pub side: Side,
    pub frame: Vec<u8>,
    pub what: String,
}

/// What the generator knows of the network under test and the connection table now.
pub struct World {
    pub router: Ipv4Addr,
    pub clients: Vec<Ipv4Addr>,
    pub client_mac: Mac,
    pub client_dev_mac: Mac,
    pub nat_source: Ipv4Addr,
    pub backend: Ipv4Addr,
    pub backend_mac: Mac,
    pub backend_dev_mac: Mac,
    pub routed_ports: Vec<u16>,
    pub backend_ports: Vec<u16>,
    /// Client ports the generator draws from: few, so NAT source ports collide.
    pub client_ports: Vec<u16>,
    /// The connection table before the case, half-open connections included.
    pub table: Vec<(CtKey4, CtValue4)>,
}

pub fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

pub fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

const FLAG_CHOICES: [u8; 10] = [
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_ACK,
    TCP_ACK | TCP_PSH,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    TCP_RST | TCP_ACK,
    0,
    TCP_SYN | TCP_FIN,
    TCP_SYN | TCP_RST,
];

fn flags(rng: &mut StdRng) -> u8 {
    if rng.random_bool(0.1) {
        rng.random()
    } else {
        pick(rng, &FLAG_CHOICES)
    }
}

fn payload_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..10) {
        0..=5 => 0,
        6..=8 => rng.random_range(1..200),
        // Around the egress MTU (1500): some fit, some do not.
        _ => rng.random_range(1400..1600),
    }
}

impl World {
    fn macs(&self, side: Side) -> (Mac, Mac) {
        match side {
            Side::Client => (self.client_mac, self.client_dev_mac),
            Side::Backend => (self.backend_mac, self.backend_dev_mac),
        }
    }

    fn tcp(&self, side: Side, key: &CtKey4, flags: u8, rng: &mut StdRng) -> Vec<u8> {
        self.segment(side, key, flags, rng).build()
    }

    fn segment(&self, side: Side, key: &CtKey4, flags: u8, rng: &mut StdRng) -> Tcp4 {
        let (src, dst) = self.macs(side);
        let mut t = Tcp4::new(
            addr(key.saddr),
            u16::from_be(key.sport),
            addr(key.daddr),
            u16::from_be(key.dport),
            flags,
        )
        .macs(src, dst);
        // Fixed numbers half the time, so that a SYN-ACK (sequence 1999) and a client ACK
        // (acknowledging 2000) complete handshakes now and then; random ones otherwise.
        t.seq = if rng.random_bool(0.5) {
            pick(rng, &[1000, 1999])
        } else {
            rng.random()
        };
        t.ack = if rng.random_bool(0.5) {
            2000
        } else {
            rng.random()
        };
        let len = payload_len(rng);
        t.payload = random_bytes(rng, len);
        t
    }

    /// A client SYN (or other segment) to a routed port, mostly at the router's address.
    fn to_routed_port(&self, rng: &mut StdRng) -> Case {
        let daddr = if rng.random_bool(0.9) {
            self.router
        } else {
            Ipv4Addr::new(10, 70, 1, rng.random_range(3..255))
        };
        let key = CtKey4 {
            saddr: raw(pick(rng, &self.clients)),
            daddr: raw(daddr),
            sport: pick(rng, &self.client_ports).to_be(),
            dport: pick(rng, &self.routed_ports).to_be(),
        };
        let f = if rng.random_bool(0.7) {
            TCP_SYN
        } else {
            flags(rng)
        };
        Case {
            side: Side::Client,
            frame: self.tcp(Side::Client, &key, f, rng),
            what: format!("segment (flags {f:#04x}) to a routed port"),
        }
    }

    /// A segment of a connection in the table, as its sender sends it.
    fn on_tracked(&self, rng: &mut StdRng) -> Option<Case> {
        if self.table.is_empty() {
            return None;
        }
        let (key, value) = self.table[rng.random_range(0..self.table.len())];
        let side = if value.to_client() {
            Side::Backend
        } else {
            Side::Client
        };
        // Handshake steps more often than random flags give them: the backend's SYN-ACK
        // (sequence 1999) and the client's ACK of it (acknowledging 2000), which move
        // half-open connections into the connection table, which must fill up now and then.
        let step = rng.random_bool(0.5);
        let f = match (step, side) {
            (true, Side::Backend) => TCP_SYN | TCP_ACK,
            (true, Side::Client) => TCP_ACK,
            (false, _) => flags(rng),
        };
        let mut segment = self.segment(side, &key, f, rng);
        if step {
            (segment.seq, segment.ack) = (1999, 2000);
        }
        Some(Case {
            side,
            frame: segment.build(),
            what: format!(
                "segment (flags {f:#04x}) of a tracked connection ({}{})",
                if value.to_client() {
                    "reply"
                } else {
                    "forward"
                },
                if value.is_tombstone() {
                    ", tombstone"
                } else {
                    ""
                }
            ),
        })
    }

    /// An ICMP error about a packet the router sent for a tracked connection (or about a
    /// connection it does not track).
    fn icmp_error(&self, rng: &mut StdRng) -> Case {
        let (ty, code) = pick(rng, &[(3u8, 4u8), (3, 1), (3, 3), (11, 0), (12, 0), (8, 0)]);
        let mtu = pick(rng, &[0u16, 576, 1280, 1400, 1500]);
        let extra = pick(rng, &[0usize, 0, 8, 20, 40]);
        let tracked = !self.table.is_empty() && rng.random_bool(0.75);
        let (side, quoted, hop, what) = if tracked {
            let (_, v) = self.table[rng.random_range(0..self.table.len())];
            // What the router sent for this entry: the rewritten tuple.
            let quoted = Tcp4::new(
                addr(v.saddr),
                u16::from_be(v.sport),
                addr(v.daddr),
                u16::from_be(v.dport),
                flags(rng),
            )
            .build();
            let side = if v.to_client() {
                Side::Client
            } else {
                Side::Backend
            };
            let hop = if rng.random_bool(0.5) {
                addr(v.daddr)
            } else {
                Ipv4Addr::new(10, 70, 9, 254)
            };
            (side, quoted, (hop, addr(v.saddr)), "tracked")
        } else {
            let quoted = Tcp4::new(
                self.nat_source,
                rng.random(),
                self.backend,
                pick(rng, &self.backend_ports),
                TCP_SYN,
            )
            .build();
            (
                Side::Backend,
                quoted,
                (self.backend, self.nat_source),
                "untracked",
            )
        };
        let mut frame = packet::icmp_error(hop.0, hop.1, ty, code, mtu, &quoted, extra);
        let (src, dst) = self.macs(side);
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
        Case {
            side,
            frame,
            what: format!("ICMP {ty}/{code} quoting a {what} connection ({extra} extra bytes)"),
        }
    }

    /// Traffic that is not for the router's range: other ports, other protocols, VLAN, IPv6,
    /// ARP.
    fn other_traffic(&self, rng: &mut StdRng) -> Case {
        let (src, dst) = self.macs(Side::Client);
        let client = pick(rng, &self.clients);
        let port = pick(rng, &self.routed_ports);
        let (what, frame) = match rng.random_range(0..8) {
            0 => {
                let dport = pick(rng, &[22u16, 443, 80, 53, 19999, 20100]);
                let key = CtKey4 {
                    saddr: raw(client),
                    daddr: raw(self.router),
                    sport: pick(rng, &self.client_ports).to_be(),
                    dport: dport.to_be(),
                };
                (
                    "TCP to another port",
                    self.tcp(Side::Client, &key, flags(rng), rng),
                )
            }
            1 => {
                let mut udp = Vec::new();
                udp.extend_from_slice(&40000u16.to_be_bytes());
                udp.extend_from_slice(&port.to_be_bytes());
                udp.extend_from_slice(&8u16.to_be_bytes());
                udp.extend_from_slice(&[0, 0]);
                let f = packet::ipv4_frame(src, dst, client, self.router, 17, 64, 0, &[], &udp);
                ("UDP to a routed port", f)
            }
            2 => {
                let mut echo = vec![8, 0, 0, 0, 0, 1, 0, 1];
                echo.extend(random_bytes(rng, 16));
                let c = checksum(&echo);
                echo[2..4].copy_from_slice(&c.to_be_bytes());
                let f = packet::ipv4_frame(src, dst, client, self.router, 1, 64, 0, &[], &echo);
                ("ICMP echo", f)
            }
            3 => {
                let mut arp = vec![0xffu8; 6];
                arp.extend_from_slice(&src);
                arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
                arp.extend_from_slice(&src);
                arp.extend_from_slice(&client.octets());
                arp.extend_from_slice(&[0; 6]);
                arp.extend_from_slice(&self.router.octets());
                ("ARP request", arp)
            }
            4 => {
                // IPv6 carrying TCP to a routed port.
                let mut v6 = dst.to_vec();
                v6.extend_from_slice(&src);
                v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
                v6.extend(random_bytes(rng, 32));
                v6.extend_from_slice(&40000u16.to_be_bytes());
                v6.extend_from_slice(&port.to_be_bytes());
                v6.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, TCP_SYN, 0xff, 0xff]);
                v6.extend_from_slice(&[0, 0, 0, 0]);
                ("IPv6 TCP to a routed port", v6)
            }
            5 => {
                // An 802.1Q-tagged SYN to a routed port: the programs see only untagged IPv4.
                let key = CtKey4 {
                    saddr: raw(client),
                    daddr: raw(self.router),
                    sport: pick(rng, &self.client_ports).to_be(),
                    dport: port.to_be(),
                };
                let mut f = self.tcp(Side::Client, &key, TCP_SYN, rng);
                insert_vlan(&mut f, rng.random_range(1..4095));
                ("VLAN-tagged SYN to a routed port", f)
            }
            6 => {
                // A stray segment from a backend port that matches no connection.
                let key = CtKey4 {
                    saddr: raw(self.backend),
                    daddr: raw(self.nat_source),
                    sport: pick(rng, &self.backend_ports).to_be(),
                    dport: rng.random::<u16>().to_be(),
                };
                let f = flags(rng);
                return Case {
                    side: Side::Backend,
                    frame: self.tcp(Side::Backend, &key, f, rng),
                    what: format!("untracked segment (flags {f:#04x}) from a backend port"),
                };
            }
            _ => {
                let ethertype = pick(rng, &[[0x88u8, 0xcc], [0x88, 0x47], [0x08, 0x06], [0, 0]]);
                let mut f = dst.to_vec();
                f.extend_from_slice(&src);
                f.extend_from_slice(&ethertype);
                let len = rng.random_range(0..80);
                f.extend(random_bytes(rng, len));
                ("another ethertype", f)
            }
        };
        Case {
            side: Side::Client,
            frame,
            what: what.into(),
        }
    }

    /// Runts and random bytes, some dressed as Ethernet/IPv4.
    fn garbage(&self, rng: &mut StdRng) -> Case {
        let len = pick(
            rng,
            &[0usize, 1, 13, 14, 20, 33, 34, 40, 53, 54, 60, 64, 100],
        );
        let len = len + rng.random_range(0..3);
        let mut frame = random_bytes(rng, len);
        if frame.len() >= 16 && rng.random_bool(0.7) {
            frame[12..14].copy_from_slice(&ETH_P_IP);
            frame[14] = 0x45;
            if frame.len() >= 24 {
                frame[23] = pick(rng, &[6u8, 1]);
            }
        }
        Case {
            side: pick(rng, &[Side::Client, Side::Backend]),
            frame,
            what: format!("{len}+ random bytes"),
        }
    }

    /// A new random case: a template, then (mostly) mutations, then (half the time) checksums
    /// made valid again so the mutated headers themselves are what the programs meet.
    pub fn generate(&self, rng: &mut StdRng) -> Case {
        let mut case = match rng.random_range(0..100) {
            0..=24 => self.to_routed_port(rng),
            25..=49 => self
                .on_tracked(rng)
                .unwrap_or_else(|| self.to_routed_port(rng)),
            50..=62 => self.icmp_error(rng),
            63..=84 => self.other_traffic(rng),
            _ => self.garbage(rng),
        };
        if rng.random_bool(0.6) {
            for _ in 0..rng.random_range(1..=3) {
                let m = mutate(rng, &mut case.frame);
                let _ = write!(case.what, "; {m}");
            }
            if rng.random_bool(0.5) {
                fix_checksums(&mut case.frame);
                case.what.push_str("; checksums recomputed");
            }
        }
        case
    }
}

/// Inserts an 802.1Q tag before the EtherType.
pub fn insert_vlan(frame: &mut Vec<u8>, vid: u16) {
    if frame.len() < 12 {
        return;
    }
    let tag = [0x81, 0x00, (vid >> 8) as u8 & 0x0f, vid as u8];
    frame.splice(12..12, tag);
}

fn ihl_bytes(frame: &[u8]) -> usize {
    frame.get(ETH_LEN).map_or(20, |b| (b & 0x0f) as usize * 4)
}

/// One random mutation of `frame`; returns what it did.
pub fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>) -> String {
    let len = frame.len();
    let l4 = ETH_LEN + ihl_bytes(frame).max(20);
    match rng.random_range(0..14) {
        0 | 1 if len > 0 => {
            let n = rng.random_range(1..=4);
            let mut at = Vec::new();
            for _ in 0..n {
                // Mostly in the headers, where the programs look.
                let off = if rng.random_bool(0.8) {
                    rng.random_range(0..len.min(ETH_LEN + 60 + 28))
                } else {
                    rng.random_range(0..len)
                };
                let bit = rng.random_range(0..8);
                frame[off] ^= 1 << bit;
                at.push(format!("{off}.{bit}"));
            }
            format!("flipped bits {}", at.join(","))
        }
        2 if len > 0 => {
            let to = rng.random_range(0..len);
            frame.truncate(to);
            format!("truncated to {to}")
        }
        3 if len > ETH_LEN => {
            let ihl = rng.random_range(0..16u8);
            frame[ETH_LEN] = (frame[ETH_LEN] & 0xf0) | ihl;
            format!("IHL {ihl}")
        }
        4 if len > ETH_LEN => {
            let v = pick(rng, &[0u8, 4, 5, 6, 15]);
            frame[ETH_LEN] = (v << 4) | (frame[ETH_LEN] & 0x0f);
            format!("version {v}")
        }
        5 if len >= ETH_LEN + 4 => {
            let actual = (len - ETH_LEN) as u16;
            let tot = match rng.random_range(0..6) {
                0 => 0,
                1 => rng.random_range(1..40),
                2 => actual.saturating_sub(rng.random_range(1..30)),
                3 => actual.saturating_add(rng.random_range(1..30)),
                4 => 0xffff,
                _ => rng.random(),
            };
            frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
            format!("total length {tot} (frame has {actual})")
        }
        6 if len >= ETH_LEN + 20 && frame[ETH_LEN] & 0x0f == 5 => {
            let words = rng.random_range(1..=10usize);
            let mut opts = Vec::with_capacity(words * 4);
            for _ in 0..words * 4 {
                let any: u8 = rng.random();
                opts.push(pick(rng, &[0u8, 1, 1, 7, 0x44, 0x94, any]));
            }
            let at = ETH_LEN + 20;
            frame.splice(at..at, opts);
            frame[ETH_LEN] = 0x40 | (5 + words as u8);
            let tot = u16::from_be_bytes([frame[ETH_LEN + 2], frame[ETH_LEN + 3]]);
            let tot = tot.wrapping_add(words as u16 * 4);
            frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
            format!("{words} words of IP options")
        }
        7 if len >= ETH_LEN + 8 => {
            let v = pick(
                rng,
                &[0x2000u16, 0x2001, 0x0001, 0x1fff, 0x4000, 0x8000, 0x3fff],
            );
            frame[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&v.to_be_bytes());
            format!("flags/fragment {v:#06x}")
        }
        8 if len > l4 + 13 => {
            let f: u8 = rng.random();
            frame[l4 + 13] = f;
            format!("TCP flags {f:#04x}")
        }
        9 if len > l4 + 12 => {
            let doff = rng.random_range(0..16u8);
            frame[l4 + 12] = (doff << 4) | (frame[l4 + 12] & 0x0f);
            format!("TCP data offset {doff}")
        }
        10 if len > ETH_LEN + 8 => {
            let ttl = pick(rng, &[0u8, 1, 2, 255]);
            frame[ETH_LEN + 8] = ttl;
            format!("TTL {ttl}")
        }
        11 => {
            let n = rng.random_range(1..64);
            frame.extend(random_bytes(rng, n));
            format!("{n} bytes appended")
        }
        12 if len > ETH_LEN + 9 => {
            let p = pick(rng, &[0u8, 1, 6, 17, 47, 255]);
            frame[ETH_LEN + 9] = p;
            format!("protocol {p}")
        }
        13 => {
            insert_vlan(frame, 7);
            "VLAN tag".into()
        }
        _ => "no mutation (frame too short)".into(),
    }
}

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

/// A corpus file: `# what it exercises` (one line), `from: client|backend`, optional
/// `expect-xdp: <reason>` / `expect-tc: <reason>` (counter names), then the frame in hex
/// (whitespace ignored).
#[derive(Clone, Debug)]
pub struct CorpusEntry {
    pub name: String,
    pub comment: String,
    pub side: Side,
    pub expect_xdp: Option<String>,
    pub expect_tc: Option<String>,
    pub frame: Vec<u8>,
}

pub fn parse_corpus_entry(name: &str, text: &str) -> Result<CorpusEntry> {
    let mut comment = None;
    let mut side = None;
    let (mut expect_xdp, mut expect_tc) = (None, None);
    let mut hex = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix('#') {
            comment.get_or_insert_with(|| c.trim().to_string());
        } else if let Some(s) = line.strip_prefix("from:") {
            side = Some(match s.trim() {
                "client" => Side::Client,
                "backend" => Side::Backend,
                other => bail!("{name}: `from:` is `{other}`, not client or backend"),
            });
        } else if let Some(r) = line.strip_prefix("expect-xdp:") {
            expect_xdp = Some(r.trim().to_string());
        } else if let Some(r) = line.strip_prefix("expect-tc:") {
            expect_tc = Some(r.trim().to_string());
        } else {
            hex.extend(line.chars().filter(|c| !c.is_whitespace()));
        }
    }
    if !hex.len().is_multiple_of(2) {
        bail!("{name}: odd number of hex digits");
    }
    let frame = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("{name}: the frame is not hex"))?;
    Ok(CorpusEntry {
        name: name.to_string(),
        comment: comment.with_context(|| format!("{name}: no `# comment` line"))?,
        side: side.with_context(|| format!("{name}: no `from:` line"))?,
        expect_xdp,
        expect_tc,
        frame,
    })
}

/// Every `*.hex` file of `dir`, by name.
pub fn load_corpus(dir: &Path) -> Result<Vec<CorpusEntry>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "hex") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            entries.push(parse_corpus_entry(&name, &text)?);
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// A corpus file's text for a frame.
pub fn corpus_text(comment: &str, side: Side, frame: &[u8]) -> String {
    let mut s = format!("# {comment}\nfrom: {}\n", side.name());
    for chunk in frame.chunks(16) {
        for b in chunk {
            let _ = write!(s, "{b:02x}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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

    #[test]
    fn corpus_text_round_trips() {
        let mut rng = StdRng::seed_from_u64(1);
        let frame = random_bytes(&mut rng, 77);
        let text = corpus_text("a comment", Side::Backend, &frame);
        let e = parse_corpus_entry("x.hex", &text).expect("parses");
        assert_eq!((e.comment.as_str(), e.side), ("a comment", Side::Backend));
        assert_eq!(e.frame, frame);
        assert!(parse_corpus_entry("y.hex", "from: client\nabc").is_err());
    }
}
