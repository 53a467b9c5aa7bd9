//! TCP timestamp translation (`CtValue4::ts_off`). Full NAT puts every client behind one tuple
//! space toward a task; when the task closes first it holds each tuple in TIME_WAIT for 60 s,
//! and at a few thousand connections per second the tuples must be reused within that time.
//! The task accepts a SYN on a tuple in TIME_WAIT when its timestamp is newer than the last one
//! it saw there (RFC 6191); clients' timestamp clocks are unrelated, so without translation
//! about half of the reuses meet PAWS and wait for a 1 s SYN retransmission. With it, every
//! connection's timestamps toward the task start at the router's timestamp clock when its SYN
//! passes and advance at the client's rate, so they are newer than any earlier connection's on
//! the tuple as long as the router's clock runs faster than the clients'. It ticks every
//! 65.5 µs (15 kHz; clients tick at most every millisecond, RFC 7323): a tuple reused a tenth of
//! a millisecond after its last connection began still gets a newer timestamp, and the
//! comparison the task makes (32-bit, signed) holds for 39 hours of a connection's life.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use router_common::{
    conntrack::{CtValue4, F_TO_CLIENT, TS_TICK_SHIFT},
    csum,
};

use crate::ctx::Packet;
use crate::parse::{ETH_LEN, IP_LEN, TCP_DOFF, TCP_LEN, load8, ptr_at, store8};

const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOPT_WS: u8 = 3;
const TCPOPT_SACK_PERM: u8 = 4;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOPT_TIMESTAMP_LEN: u8 = 10;
/// Frame offset of the TCP options (IPv4 without options, which the programs pass untouched).
const OPTIONS: usize = ETH_LEN + IP_LEN + TCP_LEN;

/// Whether the two option bytes at `at` are SACK-permitted or two NOPs (what stacks put
/// before the timestamp of a handshake).
#[inline(always)]
fn sack_perm_or_nops(at: usize) -> bool {
    let (a, b) = (load8(at), load8(at + 1));
    (a == TCPOPT_SACK_PERM && b == 2) || (a == TCPOPT_NOP && b == TCPOPT_NOP)
}

#[inline(always)]
fn is_timestamp(at: usize) -> bool {
    load8(at) == TCPOPT_TIMESTAMP && load8(at + 1) == TCPOPT_TIMESTAMP_LEN
}

/// The frame offset of the timestamp option's TSval, when the TCP header (at `tcp`, 20 bytes
/// bounds-checked) has one where the common stacks put it: after two NOPs (every segment after
/// the handshake: Linux, the BSDs, macOS, Windows); after MSS and SACK-permitted or two NOPs
/// (Linux handshakes); after MSS, NOP, window scale and SACK-permitted or two NOPs (FreeBSD,
/// macOS handshakes). Fixed places, not a walk over the options: a loop over up to 40 bytes
/// at every translated packet would cost more, and the verifier more still. A connection whose
/// handshake puts it elsewhere is not translated.
#[inline(always)]
fn find<P: Packet>(p: &P, tcp: usize) -> Option<usize> {
    let len = ((load8(tcp + TCP_DOFF) >> 4) as usize * 4).checked_sub(TCP_LEN)?;
    let (start, end) = (p.start(), p.end());
    if len < 12 {
        return None;
    }
    let o = ptr_at(start, end, OPTIONS, 12)?;
    if load8(o) == TCPOPT_NOP && load8(o + 1) == TCPOPT_NOP && is_timestamp(o + 2) {
        return Some(OPTIONS + 4);
    }
    if load8(o) != TCPOPT_MSS || load8(o + 1) != 4 {
        return None;
    }
    if len >= 16 && sack_perm_or_nops(o + 4) && is_timestamp(o + 6) {
        ptr_at(start, end, OPTIONS, 16)?;
        return Some(OPTIONS + 8);
    }
    if len >= 20 && load8(o + 4) == TCPOPT_NOP && load8(o + 5) == TCPOPT_WS && load8(o + 6) == 3 {
        let o = ptr_at(start, end, OPTIONS, 20)?;
        if sack_perm_or_nops(o + 8) && is_timestamp(o + 10) {
            return Some(OPTIONS + 12);
        }
    }
    None
}

/// The 4 bytes at frame offset `off` as a big-endian value (byte loads: the option may sit at
/// any offset).
#[inline(always)]
fn load_be32<P: Packet>(p: &P, off: usize) -> Option<u32> {
    let b = ptr_at(p.start(), p.end(), off, 4)?;
    Some(u32::from_be_bytes([
        load8(b),
        load8(b + 1),
        load8(b + 2),
        load8(b + 3),
    ]))
}

/// Writes `value` big-endian at frame offset `off` and returns the folded TCP checksum delta.
#[inline(always)]
fn store_be32<P: Packet>(p: &P, off: usize, old: u32, value: u32) -> Option<u16> {
    let b = ptr_at(p.start(), p.end(), off, 4)?;
    let new = value.to_be_bytes();
    store8(b, new[0]);
    store8(b + 1, new[1]);
    store8(b + 2, new[2]);
    store8(b + 3, new[3]);
    let delta = csum::fold(csum::delta32(
        0,
        u32::from_ne_bytes(old.to_be_bytes()),
        u32::from_ne_bytes(new),
    ));
    // Every place `find` accepts is at an even offset of the TCP header: one pair of
    // checksum words.
    Some(delta)
}

/// The offset that makes the SYN's TSval the router's timestamp clock, or 0 when the SYN
/// (TCP header at `tcp`) carries no timestamp.
#[inline(always)]
pub fn offset_for_syn<P: Packet>(p: &P, tcp: usize) -> u32 {
    let Some(off) = find(p, tcp) else {
        return 0;
    };
    let Some(tsval) = load_be32(p, off) else {
        return 0;
    };
    // SAFETY: a helper without arguments.
    let now = (unsafe { bpf_ktime_get_ns() } >> TS_TICK_SHIFT) as u32;
    // 0 means "no translation": one tick later instead.
    match now.wrapping_sub(tsval) {
        0 => 1,
        o => o,
    }
}

/// Translates the timestamp option of a packet of the connection of entry `v` (TCP header at
/// `tcp`): TSval + offset toward the backend, TSecr - offset toward the client. Returns the
/// folded TCP checksum delta (0: nothing changed).
#[inline(always)]
pub fn translate<P: Packet>(p: &P, tcp: usize, v: &CtValue4) -> u16 {
    if v.ts_off == 0 {
        return 0;
    }
    let Some(tsval) = find(p, tcp) else {
        return 0;
    };
    let (field, to_client) = if v.flags & F_TO_CLIENT != 0 {
        (tsval + 4, true)
    } else {
        (tsval, false)
    };
    let Some(old) = load_be32(p, field) else {
        return 0;
    };
    let new = if to_client {
        old.wrapping_sub(v.ts_off)
    } else {
        old.wrapping_add(v.ts_off)
    };
    store_be32(p, field, old, new).unwrap_or(0)
}
