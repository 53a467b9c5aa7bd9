//! What the shared packet logic needs from a hook: the frame, its length and ingress interface,
//! and the TCP checksum update, which differs between XDP and TC (the verdict codes, the other
//! difference, are in `action`).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_PSEUDO_HDR,
    cty::c_void,
    helpers::bpf_l4_csum_replace,
    programs::{TcContext, XdpContext},
};
use router_common::{csum, stats::Hook};

use crate::parse::{load16, ptr_at, store16};

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
