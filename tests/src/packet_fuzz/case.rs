//! A frame to run and the interface it arrives on; addresses as the connection table keeps
//! them.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub(super) const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// The IPv4 header length a frame's IHL says (20 when the frame ends before it).
pub(super) fn ihl_bytes(frame: &[u8]) -> usize {
    frame.get(ETH_LEN).map_or(20, |b| (b & 0x0f) as usize * 4)
}

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

pub fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

pub fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}
