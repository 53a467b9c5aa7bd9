//! The generator of random frames: valid Ethernet/IPv4/TCP and ICMP frames for the routed
//! ports and the tracked connections of the [`World`], then mutated.

use super::case::{Case, ETH_P_IP, Side, addr, raw};
use super::mutate::{insert_vlan, mutate};
use super::oracle::fix_checksums;
use super::random::{pick, random_bytes};
use crate::packet::{self, Mac, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Tcp4, checksum};
use rand::Rng;
use rand::rngs::StdRng;
use router_common::conntrack::{CtKey4, CtValue4};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

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
