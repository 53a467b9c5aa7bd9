//! task-router kernel programs.
//!
//! One module per concern, after Cilium's `bpf/lib/`: `stats` counts every verdict; the
//! forwarding concerns (parse, conntrack, nat, csum, redirect) build on it.
#![no_std]
#![no_main]

mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use router_common::stats::StatReason;

/// Entry point on interfaces where native XDP serves (physical NICs, or veth when asked).
#[xdp]
pub fn task_router_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats::count(StatReason::XdpSeen, len);
    if len == 0 {
        debug!(&ctx, "empty frame");
    }
    stats::count(StatReason::PassNotForRange, len);
    xdp_action::XDP_PASS
}

/// Entry point on the TC ingress hook (veth, bridges, and the task-facing side).
#[classifier]
pub fn task_router_tc(ctx: TcContext) -> i32 {
    let len = ctx.len() as u64;
    stats::count(StatReason::TcSeen, len);
    stats::count(StatReason::PassNotForRange, len);
    TC_ACT_OK
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
