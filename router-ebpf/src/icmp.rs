//! ICMP errors about tracked connections (destination unreachable, fragmentation needed, time
//! exceeded), translated like the connection's packets so the other end sees an error about
//! the packet it sent: path-MTU discovery keeps working through the NAT.

use router_common::{conntrack::CtKey4, csum, stats::StatReason};

use crate::config;
use crate::conntrack;
use crate::ctx::Packet;
use crate::half_open;
use crate::nat::ttl_expires;
use crate::parse::{
    ETH_LEN, ICMP_LEN, IP_CHECK, IP_DADDR, IP_LEN, IP_SADDR, IP_TOT_LEN, IP_TTL, IPPROTO_TCP,
    load8, load16, load32, ptr_at, store_mac, store8, store16, store32,
};
use crate::redirect::{self, Out};
use crate::verdict::{Verdict, drop, pass};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// The part of the offending packet an error must quote for us: its IPv4 header and ports.
const QUOTE_LEN: usize = IP_LEN + 8;

#[inline(always)]
pub fn handle<P: Packet>(p: &P, ip: usize) -> Verdict {
    let (start, end) = (p.start(), p.end());
    let Some(icmp) = ptr_at(start, end, ETH_LEN + IP_LEN, ICMP_LEN) else {
        return pass(p, StatReason::PassMalformed);
    };
    let ty = load8(icmp);
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return pass(p, StatReason::PassNotForRange);
    }
    let Some(inner) = ptr_at(start, end, ETH_LEN + IP_LEN + ICMP_LEN, QUOTE_LEN) else {
        return pass(p, StatReason::PassNotForRange);
    };
    if load8(inner) != 0x45 || load8(inner + 9) != IPPROTO_TCP {
        return pass(p, StatReason::PassNotForRange);
    }
    // The quote must lie inside the IPv4 packet: bytes past its total length (trailing bytes
    // of the frame) are outside the ICMP checksum, and rewriting them would break it (found
    // by the packet fuzzer).
    let tot_len = u16::from_be(load16(ip + IP_TOT_LEN)) as u64;
    if tot_len < (IP_LEN + ICMP_LEN + QUOTE_LEN) as u64 {
        return pass(p, StatReason::PassNotForRange);
    }
    if ETH_LEN as u64 + tot_len > p.frame_len() {
        return pass(p, StatReason::PassMalformed);
    }
    let ports = inner + IP_LEN;
    let (q_saddr, q_daddr) = (load32(inner + IP_SADDR), load32(inner + IP_DADDR));
    let (q_sport, q_dport) = (load16(ports), load16(ports + 2));
    // The quoted packet is one the router sent; the entry that matches its answers translates
    // it back toward the other end.
    let key = CtKey4 {
        saddr: q_daddr,
        daddr: q_saddr,
        sport: q_dport,
        dport: q_sport,
    };
    // In CT4, or in the half-open table (an error about the SYN itself).
    let entry = match conntrack::lookup(&key) {
        Some(entry) => entry,
        None => match half_open::lookup(&key) {
            // SAFETY: a map value pointer from the look-up.
            Some(entry) => unsafe { &mut (*entry).ct as *mut _ },
            None => return pass(p, StatReason::PassNotForRange),
        },
    };
    // SAFETY: a map value pointer from the conntrack look-up.
    if unsafe { &*entry }.is_tombstone() {
        return pass(p, StatReason::PassNotForRange);
    }
    let outer_src = load32(ip + IP_SADDR);
    let outer_dst = load32(ip + IP_DADDR);
    if outer_dst != q_saddr {
        return pass(p, StatReason::PassNotForRange);
    }
    // SAFETY: a map value pointer from the conntrack look-up.
    let v = unsafe { &mut *entry };
    let epoch = match config::settings() {
        Some(s) => s.nh_epoch,
        None => 0,
    };
    let out = redirect::next_hop(p, v, epoch);
    if let Out::Stop(reason) = out {
        return pass(p, reason);
    }
    if ttl_expires(ip, 0) {
        return drop(p, StatReason::DropTtlExceeded);
    }
    // Outer header: from the router's address the other end talks to, to that end.
    let mut l3 = csum::delta32(0, outer_src, v.saddr);
    l3 = csum::delta32(l3, outer_dst, v.daddr);
    l3 += csum::TTL_DEC_DELTA as u32;
    store8(ip + IP_TTL, load8(ip + IP_TTL) - 1);
    store32(ip + IP_SADDR, v.saddr);
    store32(ip + IP_DADDR, v.daddr);
    store16(
        ip + IP_CHECK,
        csum::apply(load16(ip + IP_CHECK), csum::fold(l3)),
    );
    // Quoted header: as the other end sent it (its tuple is the entry's, swapped).
    let mut addrs = csum::delta32(0, q_saddr, v.daddr);
    addrs = csum::delta32(addrs, q_daddr, v.saddr);
    let old_check = load16(inner + IP_CHECK);
    let new_check = csum::apply(old_check, csum::fold(addrs));
    let mut body = csum::delta16(addrs, old_check, new_check);
    body = csum::delta16(body, q_sport, v.dport);
    body = csum::delta16(body, q_dport, v.sport);
    store32(inner + IP_SADDR, v.daddr);
    store32(inner + IP_DADDR, v.saddr);
    store16(inner + IP_CHECK, new_check);
    store16(ports, v.dport);
    store16(ports + 2, v.sport);
    store16(icmp + 2, csum::apply(load16(icmp + 2), csum::fold(body)));
    crate::stats::count(P::HOOK, StatReason::IcmpTranslated, p.frame_len());
    match out {
        Out::Neigh(ifindex, nh) => Verdict::RedirectNeigh(ifindex, nh),
        _ => {
            let eth = ip - ETH_LEN;
            store_mac(eth, &v.nh_dmac);
            store_mac(eth + 6, &v.nh_smac);
            redirect::cached(v)
        }
    }
}
