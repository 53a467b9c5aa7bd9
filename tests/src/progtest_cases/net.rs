//! The router namespace of the BPF_PROG_TEST_RUN tests as the cases address it, and the
//! frames its client and backend send.

use crate::packet::{TCP_SYN, Tcp4};
use crate::topology::{ProgTestAddrs, ProgTestNet};
use std::net::Ipv4Addr;

/// The router port routed to the backend.
pub const PORT: u16 = 20000;
/// The router port routed to a backend without a neighbour entry.
pub const PORT_UNRESOLVED: u16 = 20001;
/// A router port no route was ever programmed for.
pub const PORT_NEVER_ROUTED: u16 = 20002;
pub const BACKEND_PORT: u16 = 8080;
/// The acknowledgment number of client packets with ACK (`Tcp4`'s default).
pub const CLIENT_ACK: u32 = 2000;
/// Where a moved route sends new connections.
pub const MOVED_BACKEND_PORT: u16 = 9090;
/// A router on the backend's path that sends ICMP errors.
pub const HOP: Ipv4Addr = Ipv4Addr::new(10, 70, 2, 254);

/// The addresses of a [`ProgTestNet`], usable inside it (see there), and the frames its
/// client and backend send.
#[derive(Clone, Debug)]
pub struct Net(ProgTestAddrs);

impl std::ops::Deref for Net {
    type Target = ProgTestAddrs;

    fn deref(&self) -> &ProgTestAddrs {
        &self.0
    }
}

impl Net {
    pub fn of(t: &ProgTestNet) -> Net {
        Net(t.addrs.clone())
    }

    /// The routes every table starts with: [`PORT`] → backend, [`PORT_UNRESOLVED`] → the
    /// backend without a neighbour entry.
    pub fn routes(&self) -> Vec<(u16, Ipv4Addr, u16)> {
        vec![
            (PORT, self.backend, BACKEND_PORT),
            (PORT_UNRESOLVED, self.backend_unresolved, BACKEND_PORT),
        ]
    }

    /// [`Net::routes`] with [`PORT`] moved to [`MOVED_BACKEND_PORT`].
    pub fn moved_routes(&self) -> Vec<(u16, Ipv4Addr, u16)> {
        vec![
            (PORT, self.backend, MOVED_BACKEND_PORT),
            (PORT_UNRESOLVED, self.backend_unresolved, BACKEND_PORT),
        ]
    }

    /// A client packet to the router port.
    pub fn client_packet(&self, sport: u16, flags: u8) -> Tcp4 {
        self.packet_from(self.client, sport, flags)
    }

    /// A packet from another client address `from` to the router port.
    pub fn packet_from(&self, from: Ipv4Addr, sport: u16, flags: u8) -> Tcp4 {
        Tcp4::new(from, sport, self.router, PORT, flags).macs(self.client_mac, self.client_dev_mac)
    }

    /// A backend packet to the NAT source. A SYN-ACK's sequence number is the one the client
    /// packets' default acknowledgment number acknowledges, so the client's next ACK completes
    /// the handshake (the connection moves from the half-open table into the main one).
    pub fn backend_packet(&self, dport: u16, flags: u8) -> Tcp4 {
        let mut p = Tcp4::new(self.backend, BACKEND_PORT, self.nat_source, dport, flags)
            .macs(self.backend_mac, self.backend_dev_mac);
        if flags & TCP_SYN != 0 {
            p.seq = CLIENT_ACK - 1;
        }
        p
    }

    /// A backend packet to the client's own address (a connection in destination-only mode),
    /// a SYN-ACK numbered as [`Net::backend_packet`]'s.
    pub fn backend_packet_to_client(&self, dport: u16, flags: u8) -> Tcp4 {
        let mut p = self.backend_packet(dport, flags);
        p.daddr = self.client;
        p
    }

    /// The client's SYN from `sport` as the router sends it on in destination-only mode.
    pub fn sent_syn_keeping_the_client(&self, sport: u16) -> Vec<u8> {
        let mut syn = Tcp4::new(self.client, sport, self.backend, BACKEND_PORT, TCP_SYN)
            .macs(self.backend_dev_mac, self.backend_mac);
        syn.ttl = 63;
        syn.build()
    }

    /// The client's SYN from `sport` as the router sends it on toward the backend (what an
    /// ICMP error from the backend's path quotes).
    pub fn sent_syn(&self, sport: u16) -> Vec<u8> {
        let mut syn = Tcp4::new(self.nat_source, sport, self.backend, BACKEND_PORT, TCP_SYN)
            .macs(self.backend_dev_mac, self.backend_mac);
        syn.ttl = 63;
        syn.build()
    }
}

/// TCP options of a Linux handshake segment: MSS 1460, SACK permitted, timestamps, NOP,
/// window scale 7.
pub fn handshake_timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o.extend_from_slice(&[1, 3, 3, 7]);
    o
}

/// TCP options of a segment after the handshake: NOP, NOP, timestamps.
pub fn segment_timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

/// (TSval, TSecr) of a frame built with [`handshake_timestamps`] or [`segment_timestamps`].
pub fn timestamps_of(frame: &[u8]) -> Option<(u32, u32)> {
    let p = crate::packet::parse(frame)?;
    let opts = &p.l4[20..(p.l4[12] >> 4) as usize * 4];
    let at = opts.windows(2).position(|w| w == [8, 10])?;
    let word = |i: usize| u32::from_be_bytes(opts[i..i + 4].try_into().expect("4 bytes"));
    Some((word(at + 2), word(at + 6)))
}

/// `len` bytes of a pattern.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}
