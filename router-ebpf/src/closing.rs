//! How far a connection's close got: its FINs and their acknowledgments, written as packets
//! pass (`note`), and whether the connection ended (`has_ended`: a SYN on its client tuple
//! starts a new one) or closed both ways (`has_closed`: its tuple toward the backend may go to
//! another client at once).
//!
//! A tuple is handed over only once both FINs are acknowledged: when the task closes first, the
//! client's FIN is followed by the task's last ACK; a new connection given the tuple before that
//! ACK passed would receive it on its half-open entry, and its client, in SYN_SENT, would answer
//! with a RST and send its SYN again (and the old client, in LAST_ACK, would never get the ACK).

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_or};

use router_common::conntrack::{
    CtKey4, CtValue4, TCP_ACK, TCP_FIN, TCP_PEER_FIN, TCP_PEER_FIN_ACKED, TCP_RST, TCP_TAKEN,
};

use crate::conntrack;
use crate::ctx::Packet;
use crate::parse::{
    ETH_LEN, IP_LEN, IP_TOT_LEN, TCP_ACK_SEQ, TCP_DOFF, TCP_SEQ, load8, load16, load32,
};

/// Whether a packet with TCP flags `flags` on entry `v` has closing to note: it carries a FIN,
/// or the entry awaits the acknowledgment of its partner's FIN. One test of flags already read
/// on the established path.
#[inline(always)]
pub fn has_news(v: &CtValue4, flags: u8) -> bool {
    flags & TCP_FIN != 0 || v.tcp_flags & (TCP_PEER_FIN | TCP_PEER_FIN_ACKED) == TCP_PEER_FIN
}

/// Notes the close of the packet at `ip`/`tcp` (bounds-checked IPv4 and 20-byte TCP headers)
/// with TCP flags `flags` passing entry `v`: an acknowledgment of the partner's FIN marks `v`;
/// the first FIN of `v`'s direction tells the partner entry which acknowledgment number
/// acknowledges it (one partner look-up per FIN).
#[inline(always)]
pub fn note<P: Packet>(p: &P, ip: usize, tcp: usize, v: &mut CtValue4, flags: u8) {
    if v.tcp_flags & (TCP_PEER_FIN | TCP_PEER_FIN_ACKED) == TCP_PEER_FIN
        && flags & TCP_ACK != 0
        && u32::from_be(load32(tcp + TCP_ACK_SEQ)).wrapping_sub(v.awaited_ack) as i32 >= 0
    {
        v.tcp_flags |= TCP_PEER_FIN_ACKED;
    }
    if flags & TCP_FIN == 0 {
        return;
    }
    let Some(partner) = conntrack::lookup(&CtKey4::partner_of(v)) else {
        return;
    };
    // SAFETY: a map value pointer from the look-up.
    let partner = unsafe { &mut *partner };
    if partner.tcp_flags & TCP_PEER_FIN != 0 {
        // A retransmitted FIN: the first one's number stands.
        return;
    }
    let headers = (IP_LEN + (load8(tcp + TCP_DOFF) >> 4) as usize * 4) as u32;
    // A GSO packet's IPv4 total length may be 0 (BIG TCP): its length is the skb's.
    let ip_len = if p.is_gso() {
        (p.frame_len() as u32).wrapping_sub(ETH_LEN as u32)
    } else {
        u16::from_be(load16(ip + IP_TOT_LEN)) as u32
    };
    let payload = ip_len.wrapping_sub(headers);
    // The FIN takes one sequence number after the payload.
    partner.awaited_ack = u32::from_be(load32(tcp + TCP_SEQ))
        .wrapping_add(payload)
        .wrapping_add(1);
    partner.tcp_flags |= TCP_PEER_FIN;
}

/// Whether either direction of the connection of entry `value` saw a FIN or a RST (or its
/// partner is gone). Only asked for a SYN on an existing entry, which is rare.
#[inline(always)]
pub fn has_ended(value: &CtValue4) -> bool {
    if value.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        return true;
    }
    match conntrack::lookup(&CtKey4::partner_of(value)) {
        // SAFETY: a map value pointer from the look-up, read once.
        Some(partner) => unsafe {
            (*partner).tcp_flags & (TCP_FIN | TCP_RST) != 0 || (*partner).is_tombstone()
        },
        None => true,
    }
}

/// Takes the tuple of the connection of reply entry `reply` for a SYN of another connection:
/// true when the connection is over in both directions (`has_closed`) and its own client is
/// not restarting it; the caller then removes the pair. The tuple's two claimants meet on one
/// atomic word: this sets `TCP_TAKEN` in `reply`'s TCP flags and reads what they were, while
/// [`reopen`] (the own client's SYN restarting the pair in place) clears them and reads what
/// they were, so exactly one of the two gets the tuple. Without it, a restart on one CPU and a
/// take-over on the other both sent a SYN on the tuple: the task answered one, and the other
/// client reset that answer and retransmitted after 1 s (about once per 5-10 million
/// connections under churn; every few seconds with a narrow NAT range).
#[inline(always)]
pub fn take_closed(reply: *mut CtValue4) -> bool {
    let word = tcp_flags_word(reply);
    // SAFETY: an aligned word inside a map value; atomic, as another CPU may update it.
    let before = unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(word, TAKEN_BIT) };
    let flags = (before >> TCP_FLAGS_SHIFT) as u8;
    if flags & TCP_TAKEN != 0 {
        // Another SYN is taking it at this moment.
        return false;
    }
    if has_closed(flags, reply) {
        return true;
    }
    // SAFETY: as above.
    unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(word, !TAKEN_BIT) };
    false
}

/// Clears the TCP flags of reply entry `reply` for a new connection of its own client on the
/// pair (a restart in place); false when a SYN of another connection has taken the tuple
/// ([`take_closed`]): the pair is going, and the client's SYN must open a new one.
#[inline(always)]
pub fn reopen(reply: *mut CtValue4) -> bool {
    // SAFETY: as in `take_closed`.
    let before = unsafe {
        atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(
            tcp_flags_word(reply),
            !(0xff_u64 << TCP_FLAGS_SHIFT),
        )
    };
    (before >> TCP_FLAGS_SHIFT) as u8 & TCP_TAKEN == 0
}

/// `CtValue4::tcp_flags` is the top byte of the aligned little-endian 64-bit word at this
/// offset (the BPF target of the build has atomic read-modify-writes of 64 bits only).
const TCP_FLAGS_WORD: usize = 32;
const TCP_FLAGS_SHIFT: u32 = 56;
const TAKEN_BIT: u64 = (TCP_TAKEN as u64) << TCP_FLAGS_SHIFT;
const _: () = assert!(core::mem::offset_of!(CtValue4, tcp_flags) == TCP_FLAGS_WORD + 7);
const _: () = assert!(TCP_FLAGS_WORD % core::mem::align_of::<u64>() == 0);

#[inline(always)]
fn tcp_flags_word(v: *mut CtValue4) -> *mut u64 {
    (v as *mut u8).wrapping_add(TCP_FLAGS_WORD) as *mut u64
}

/// Whether the connection of entry `value`, whose TCP flags are `flags`, is over in both
/// directions: a RST either way, or a FIN each way with both acknowledged (a missing partner
/// counts as over).
#[inline(always)]
fn has_closed(flags: u8, value: *const CtValue4) -> bool {
    const CLOSED: u8 = TCP_FIN | TCP_PEER_FIN_ACKED;
    // SAFETY: a map value pointer from `lookup`, one field read.
    let partner = CtKey4::partner_of(unsafe { &*value });
    let partner_flags = match conntrack::lookup(&partner) {
        // SAFETY: as above.
        Some(p) => unsafe { (*p).tcp_flags },
        None => CLOSED,
    };
    (flags | partner_flags) & TCP_RST != 0 || flags & partner_flags & CLOSED == CLOSED
}
