//! MSS clamping of the handshake. A translated packet larger than the egress link takes cannot
//! be fragmented here (most carry DF) and the kernel's own "fragmentation needed" about it would
//! go to the router's NAT address, not to the sender: path-MTU discovery cannot help for the
//! router's own links. So, like a router with `TCPMSS --clamp-mss-to-pmtu`, the MSS option of a
//! SYN is lowered to what the link toward the backend carries, and that of a SYN-ACK to what
//! both of the connection's links carry: neither end then sends a segment the router must drop.

use router_common::csum;

use crate::ctx::Packet;
use crate::parse::{ETH_LEN, IP_LEN, TCP_DOFF, TCP_LEN, load8, load16, ptr_at, store16};

const TCPOPT_MSS: u8 = 2;
const TCPOPT_MSS_LEN: u8 = 4;
/// IPv4 and TCP headers without options: MSS = MTU - 40.
const HEADERS: u16 = (IP_LEN + TCP_LEN) as u16;

/// The smaller of two MTUs, 0 (unknown) counting as no limit.
#[inline(always)]
pub fn min_mtu(a: u16, b: u16) -> u16 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// Lowers the MSS option of a handshake packet to `mtu - 40` when it asks for more; returns the
/// folded TCP checksum delta of the change (0 when nothing changed). Only a first option is
/// looked at: every common stack puts MSS first, and a bounded walk over all options would cost
/// every SYN more than the rare stack that does otherwise gains.
#[inline(always)]
pub fn clamp<P: Packet>(p: &P, tcp: usize, mtu: u16) -> u16 {
    if mtu <= HEADERS || load8(tcp + TCP_DOFF) >> 4 < 6 {
        return 0;
    }
    let Some(opt) = ptr_at(p.start(), p.end(), ETH_LEN + IP_LEN + TCP_LEN, 4) else {
        return 0;
    };
    if load8(opt) != TCPOPT_MSS || load8(opt + 1) != TCPOPT_MSS_LEN {
        return 0;
    }
    let old = load16(opt + 2);
    let limit = mtu - HEADERS;
    if u16::from_be(old) <= limit {
        return 0;
    }
    let new = limit.to_be();
    store16(opt + 2, new);
    // The value sits at an even offset of the TCP header: one checksum word.
    csum::fold(csum::delta16(0, old, new))
}
