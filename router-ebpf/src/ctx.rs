//! What the shared packet logic needs from a hook: the frame, its length and ingress interface,
//! and the two operations that differ between XDP and TC (the TCP checksum update and the
//! verdict codes).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    cty::c_void,
    helpers::{
        bpf_l4_csum_replace, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
        bpf_skb_change_head,
    },
    programs::{TcContext, XdpContext},
};
use router_common::{csum, stats::Hook};

use crate::parse::{load16, ptr_at, store16};
use crate::redirect::{self, Verdict};

pub trait Packet {
    const HOOK: Hook;
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// Frame length in bytes, Ethernet header included (a GSO packet counts whole).
    fn frame_len(&self) -> u64;
    /// Wire packets this packet stands for (GSO segments, else 1).
    fn segments(&self) -> u64;
    /// Whether this is a GSO super-packet (segmented later, so the MTU check does not apply).
    fn is_gso(&self) -> bool;
    fn ifindex(&self) -> u32;
    fn raw(&self) -> *mut c_void;
    /// Updates the TCP checksum at frame offset `off` for a rewrite whose pseudo-header part
    /// changed by `pseudo` and whose ports changed by `ports` (folded deltas). Last packet
    /// operation before the verdict: on TC it may move the packet data.
    fn tcp_csum(&self, off: usize, pseudo: u16, ports: u16) -> bool;
}

impl Packet for XdpContext {
    const HOOK: Hook = Hook::Xdp;

    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        (self.data_end() - self.data()) as u64
    }

    #[inline(always)]
    fn segments(&self) -> u64 {
        1
    }

    #[inline(always)]
    fn is_gso(&self) -> bool {
        false
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed in.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    /// XDP sees only fully checksummed frames from NICs (veth senders need `tx off`), so the
    /// field is updated in place.
    #[inline(always)]
    fn tcp_csum(&self, off: usize, pseudo: u16, ports: u16) -> bool {
        let Some(p) = ptr_at(self.data(), self.data_end(), off, 2) else {
            return false;
        };
        let delta = csum::fold(pseudo as u32 + ports as u32);
        store16(p, csum::apply(load16(p), delta));
        true
    }
}

impl Packet for TcContext {
    const HOOK: Hook = Hook::Tc;

    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        self.len() as u64
    }

    #[inline(always)]
    fn segments(&self) -> u64 {
        // SAFETY: the context pointer the kernel passed in.
        let segs = unsafe { (*self.skb.skb).gso_segs };
        if segs > 1 { segs as u64 } else { 1 }
    }

    #[inline(always)]
    fn is_gso(&self) -> bool {
        // SAFETY: the context pointer the kernel passed in.
        unsafe { (*self.skb.skb).gso_size != 0 }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed in.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    /// The skb may be CHECKSUM_PARTIAL (locally generated, the field holds only the
    /// pseudo-header sum), CHECKSUM_COMPLETE or fully checksummed; only the kernel knows which,
    /// so the update goes through `bpf_l4_csum_replace`: the address part as a pseudo-header
    /// change, the port part as a payload change.
    #[inline(always)]
    fn tcp_csum(&self, off: usize, pseudo: u16, ports: u16) -> bool {
        // SAFETY: helper calls on the program's own context.
        unsafe {
            let skb = self.skb.skb;
            if pseudo != 0
                && bpf_l4_csum_replace(skb, off as u32, 0, pseudo as u64, BPF_F_PSEUDO_HDR as u64)
                    != 0
            {
                return false;
            }
            if ports != 0 && bpf_l4_csum_replace(skb, off as u32, 0, ports as u64, 0) != 0 {
                return false;
            }
        }
        true
    }
}

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
    if !matches!(v, Verdict::Pass | Verdict::Drop) {
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
/// A failure leaves the packet shared, still correct.
#[inline(always)]
fn own_buffer(ctx: &TcContext) {
    // SAFETY: a plain helper call on the program's own packet; no packet pointer is used
    // after it (the redirect helpers take only interface indexes).
    let _ = unsafe { bpf_skb_change_head(ctx.skb.skb as *mut _, 0, 0) };
}

const _: () = assert!(TC_ACT_REDIRECT == 7);
