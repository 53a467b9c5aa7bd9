//! task-router kernel programs: full-NAT TCP forwarding of the router's port range.
//!
//! One module per concern, after Cilium's `bpf/lib/`: `parse` (bounds-checked packet access),
//! `ctx` (what differs between XDP and TC), `verdict` (what a program does with a packet),
//! `action` (a verdict as the hook's return code), `config` (settings and filters from the
//! daemon), `conntrack` (the connection table), `half_open` (connections until their handshake
//! completes), `nat` (translation and opening connections),
//! `redirect` (next hops and the redirect itself), `icmp` (errors about tracked connections),
//! `stats` (one counted reason per packet), `timestamps` (TCP timestamp translation), `clock`,
//! `closing` (how far a connection's close got: when its tuple may go to another client).
//! `client_allow` (which clients may open
//! a connection) is asked only for a SYN that would open one.
//!
//! Both entry points run the same logic. Every packet that is not TCP for a router port or a
//! tracked connection leaves as it came, after a filter of two array look-ups.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod action;
mod client_allow;
mod clock;
mod closing;
mod config;
mod conntrack;
mod ctx;
mod half_open;
mod icmp;
mod mss;
mod nat;
mod parse;
mod redirect;
mod stats;
mod timestamps;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use router_common::{
    conntrack::{CtKey4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::StatReason,
};

use ctx::Packet;
use parse::{
    ETH_LEN, ETH_P_IP, IP_DADDR, IP_FRAG, IP_LEN, IP_PROTO, IP_SADDR, IP_TOT_LEN, IPPROTO_ICMP,
    IPPROTO_TCP, TCP_DOFF, TCP_FLAGS, TCP_LEN, load8, load16, load32, ptr_at,
};
use verdict::{Verdict, pass};

/// Entry point on interfaces where native XDP serves (physical NICs, or veth when asked). What
/// it cannot deliver itself it passes untouched to the TC program on the same interface.
#[xdp]
pub fn task_router_xdp(ctx: XdpContext) -> u32 {
    upgrade_test_mark();
    action::xdp_action(handle(&ctx))
}

/// The `upgrade-test` build (`cargo xtask test` builds it for the hitless-upgrade test) reads
/// one more constant per packet, so its programs differ from the normal build's (another
/// program tag) while doing the same. Nothing in the normal build.
#[inline(always)]
fn upgrade_test_mark() {
    #[cfg(feature = "upgrade-test")]
    {
        static UPGRADE_TEST_MARK: u32 = 1;
        // SAFETY: reading a valid static.
        let _ = unsafe { core::ptr::read_volatile(&UPGRADE_TEST_MARK) };
    }
}

/// Entry point on the TC ingress hook (veth, bridges, and behind XDP).
#[classifier]
pub fn task_router_tc(ctx: TcContext) -> i32 {
    upgrade_test_mark();
    make_headers_linear(&ctx);
    action::tc_action(&ctx, handle(&ctx))
}

/// What the programs read must be in the linear part of the skb: Ethernet, IPv4 and TCP
/// headers (the fixed 20 bytes; options are read within bounds only), or for an ICMP error the
/// quoted IPv4 header and ports too. Only as much as that: a GSO packet from a local sender
/// carries exactly its headers in the linear part, and pulling payload bytes in would
/// reallocate its head for every super-packet.
#[inline(always)]
fn make_headers_linear(ctx: &TcContext) {
    const TCP_HEADERS: usize = ETH_LEN + IP_LEN + TCP_LEN;
    const ICMP_QUOTE: usize = ETH_LEN + IP_LEN + 8 + IP_LEN + 8;
    let linear = ctx.data_end() - ctx.data();
    if linear >= ICMP_QUOTE || ctx.len() as usize <= linear {
        return;
    }
    // Read through the helper, which copies from the non-linear part too.
    let icmp = matches!(ctx.load::<u8>(ETH_LEN + IP_PROTO), Ok(IPPROTO_ICMP));
    let need = if icmp { ICMP_QUOTE } else { TCP_HEADERS };
    if linear < need {
        let want = if (ctx.len() as usize) < need {
            ctx.len()
        } else {
            need as u32
        };
        let _ = ctx.pull_data(want);
    }
}

/// Stores the kernel's jiffies where the daemon reads them (run by the daemon through
/// BPF_PROG_TEST_RUN; never attached).
#[xdp]
pub fn task_router_clock(_ctx: XdpContext) -> u32 {
    clock::publish();
    xdp_action::XDP_PASS
}

/// Baselines for per-packet cost measurements (never attached).
#[xdp]
pub fn bench_empty_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn bench_empty_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn handle<P: Packet>(p: &P) -> Verdict {
    let (start, end) = (p.start(), p.end());
    let Some(eth) = ptr_at(start, end, 0, ETH_LEN) else {
        return pass(p, StatReason::PassNotForRange);
    };
    if load16(eth + 12) != ETH_P_IP.to_be() {
        return pass(p, StatReason::PassNotForRange);
    }
    let Some(ip) = ptr_at(start, end, ETH_LEN, IP_LEN) else {
        return pass(p, StatReason::PassMalformed);
    };
    let vihl = load8(ip);
    let proto = load8(ip + IP_PROTO);
    if proto != IPPROTO_TCP && proto != IPPROTO_ICMP {
        return pass(p, StatReason::PassNotForRange);
    }
    if vihl != 0x45 {
        return unusual_header(p, ip, vihl, proto);
    }
    if load16(ip + IP_FRAG) & 0x3fffu16.to_be() != 0 {
        return fragment(p, proto);
    }
    if proto == IPPROTO_ICMP {
        return icmp::handle(p, ip);
    }
    let Some(tcp) = ptr_at(start, end, ETH_LEN + IP_LEN, TCP_LEN) else {
        return pass(p, StatReason::PassMalformed);
    };
    handle_tcp(p, ip, tcp)
}

#[inline(always)]
fn fragment<P: Packet>(p: &P, proto: u8) -> Verdict {
    if proto == IPPROTO_TCP {
        pass(p, StatReason::PassFragment)
    } else {
        pass(p, StatReason::PassNotForRange)
    }
}

/// Not a plain 20-byte IPv4 header: counted and left to the stack.
#[inline(never)]
fn unusual_header<P: Packet>(p: &P, ip: usize, vihl: u8, proto: u8) -> Verdict {
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return pass(p, StatReason::PassMalformed);
    }
    if load16(ip + IP_FRAG) & 0x3fffu16.to_be() != 0 {
        return fragment(p, proto);
    }
    if proto != IPPROTO_TCP {
        return pass(p, StatReason::PassNotForRange);
    }
    let Some(ports) = ptr_at(p.start(), p.end(), ETH_LEN + ihl * 4, 4) else {
        return pass(p, StatReason::PassMalformed);
    };
    let (sport, dport) = (u16::from_be(load16(ports)), u16::from_be(load16(ports + 2)));
    if config::is_router_port(dport) || config::is_backend_port(sport) {
        pass(p, StatReason::PassIpOptions)
    } else {
        pass(p, StatReason::PassNotForRange)
    }
}

/// Whether the IPv4 total length holds the whole TCP header (`doff` words) and ends inside the
/// frame. Translating anything else would rewrite ports and checksums outside the bytes the
/// receiver checks (found by the packet fuzzer). GSO packets are the stack's own and exempt (a
/// BIG TCP packet carries a total length of 0).
#[inline(always)]
fn tcp_header_fits<P: Packet>(p: &P, ip: usize, doff: u8) -> bool {
    if p.is_gso() {
        return true;
    }
    let tot_len = u16::from_be(load16(ip + IP_TOT_LEN)) as u64;
    tot_len >= (IP_LEN as u64) + (doff as u64) * 4 && ETH_LEN as u64 + tot_len <= p.frame_len()
}

#[inline(always)]
fn handle_tcp<P: Packet>(p: &P, ip: usize, tcp: usize) -> Verdict {
    let (sport, dport) = (load16(tcp), load16(tcp + 2));
    let router_port = u16::from_be(dport);
    let to_router = config::is_router_port(router_port);
    if !to_router && !config::is_backend_port(u16::from_be(sport)) {
        return pass(p, StatReason::PassNotForRange);
    }
    let doff = load8(tcp + TCP_DOFF) >> 4;
    if doff < 5 || !tcp_header_fits(p, ip, doff) {
        return pass(p, StatReason::PassMalformed);
    }
    let flags = load8(tcp + TCP_FLAGS);
    let key = CtKey4 {
        saddr: load32(ip + IP_SADDR),
        daddr: load32(ip + IP_DADDR),
        sport,
        dport,
    };
    let handshake = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    let mut found = None;
    if let Some(entry) = conntrack::lookup(&key)
        // SAFETY: a map value pointer from the look-up.
        && !unsafe { &*entry }.is_tombstone()
    {
        // SAFETY: as above.
        let v = unsafe { &*entry };
        if v.to_client() || handshake != TCP_SYN || !closing::has_ended(v) {
            found = Some((entry, StatReason::Forwarded));
        } else if to_router
            && client_allow::admits(key.saddr, router_port)
            && nat::restart_in_place(p, tcp, &key, router_port, entry)
        {
            // A new SYN on a connection that ended (the client reuses its port), on the same
            // route: the pair starts afresh.
            found = Some((entry, StatReason::NewConnection));
        } else {
            // Otherwise a new connection on the current route (or none).
            conntrack::remove_pair(&key, entry);
        }
    }
    if found.is_none() {
        match half_open::handle(p, tcp, &key, flags) {
            half_open::Step::Forward(entry, reason) => found = Some((entry, reason)),
            half_open::Step::Done(verdict) => return verdict,
            half_open::Step::Missing => {}
        }
    }
    // One call site: `forward` is inlined, and each copy takes program stack.
    if let Some((entry, reason)) = found {
        return nat::forward(p, ip, tcp, entry, flags, reason);
    }
    if !to_router {
        return pass(p, StatReason::PassNotForRange);
    }
    if handshake != TCP_SYN {
        return pass(p, StatReason::PassNoConnection);
    }
    nat::open(p, ip, tcp, &key, router_port)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_fib_lookup` and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
