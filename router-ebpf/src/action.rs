//! A verdict as the hook's return code: the XDP action or the TC action (with the helper call
//! that redirects).

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_head},
    programs::TcContext,
};

use crate::parse::{
    ETH_LEN, ETH_P_IP, IP_PROTO, IP_TOT_LEN, IPPROTO_TCP, TCP_DOFF, load8, load16, ptr_at,
};
use crate::redirect;
use crate::verdict::Verdict;

/// The XDP action for a verdict.
#[inline(always)]
pub fn xdp_action(v: Verdict) -> u32 {
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Redirect(ifindex) | Verdict::RedirectPeer(ifindex) => {
            redirect::xdp_redirect(ifindex)
        }
        // XDP never produces it: it hands such packets to TC untouched.
        Verdict::RedirectNeigh(..) => xdp_action::XDP_PASS,
    }
}

/// The TC action for a verdict. Passing is `TC_ACT_UNSPEC` (TCX "next"): other programs on the
/// hook still see the host's traffic.
#[inline(always)]
pub fn tc_action(ctx: &TcContext, v: Verdict) -> i32 {
    if !matches!(v, Verdict::Pass | Verdict::Drop) && !is_bare_tcp_segment(ctx) {
        own_buffer(ctx);
    }
    match v {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        // SAFETY: plain helper calls.
        Verdict::Redirect(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        // SAFETY: a plain helper call. Only reached for interfaces in `PEER_DEVS`, from TC
        // ingress (the only TC hook the program is attached to), as the helper requires.
        Verdict::RedirectPeer(ifindex) => unsafe { bpf_redirect_peer(ifindex, 0) as i32 },
        Verdict::RedirectNeigh(ifindex, nh) => {
            if nh == 0 {
                // SAFETY: a null next hop asks the kernel to route the packet itself.
                unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
            } else {
                let mut params = aya_ebpf::bindings::bpf_redir_neigh {
                    nh_family: redirect::AF_INET,
                    __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                        ipv4_nh: nh,
                    },
                };
                // SAFETY: `params` lives on the stack for the call.
                unsafe {
                    bpf_redirect_neigh(
                        ifindex,
                        &mut params,
                        core::mem::size_of::<aya_ebpf::bindings::bpf_redir_neigh>() as i32,
                        0,
                    ) as i32
                }
            }
        }
    }
}

/// Gives a forwarded packet a buffer of its own, as kernel forwarding does (`skb_cow` in
/// `ip_forward`). A local sender's TCP transmits clones that share their data with the copy it
/// keeps for retransmission, until acknowledged; the headers were rewritten in the clone's
/// private part, but a receiver on this host (a task's container) cannot merge later segments
/// into a shared one, so it queues every super-packet apart and reads slower (4-stream bulk
/// ~12 % lower). The helper with no room to add un-clones a cloned packet (a new head, the data
/// pages kept) and does nothing else; packets from a NIC are not clones and cost a check.
/// A failure leaves the packet shared, still correct. Segments without payload skip it
/// ([`is_bare_tcp_segment`]).
#[inline(always)]
fn own_buffer(ctx: &TcContext) {
    // SAFETY: a plain helper call on the program's own packet; no packet pointer is used
    // after it (the redirect helpers take only interface indexes).
    let _ = unsafe { bpf_skb_change_head(ctx.skb.skb as *mut _, 0, 0) };
}

/// Whether the packet is an IPv4 TCP segment without payload (a SYN, a pure ACK, a bare FIN or
/// RST): the receiver queues nothing of it to merge into, so it keeps its shared buffer and
/// skips [`own_buffer`]'s head copy, which short connections would otherwise pay on nearly every
/// packet. Anything else, or in doubt (a GSO packet's IPv4 total length may be 0), is not.
#[inline(always)]
fn is_bare_tcp_segment(ctx: &TcContext) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(eth_proto) = ptr_at(start, end, 12, 2) else {
        return false;
    };
    let Some(ip) = ptr_at(start, end, ETH_LEN, IP_PROTO + 1) else {
        return false;
    };
    if u16::from_be(load16(eth_proto)) != ETH_P_IP || load8(ip + IP_PROTO) != IPPROTO_TCP {
        return false;
    }
    let ip_header = ((load8(ip) & 0x0f) as usize) * 4;
    let Some(doff) = ptr_at(start, end, ETH_LEN + ip_header + TCP_DOFF, 1) else {
        return false;
    };
    let tcp_header = ((load8(doff) >> 4) as usize) * 4;
    u16::from_be(load16(ip + IP_TOT_LEN)) as usize == ip_header + tcp_header
}

const _: () = assert!(TC_ACT_REDIRECT == 7);
