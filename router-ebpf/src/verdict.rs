//! What a program does with a packet, and the two verdicts that only count their reason.

use router_common::stats::StatReason;

use crate::ctx::Packet;
use crate::stats;

/// What a program does with a packet.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// To the host stack (XDP: and then TC), untouched.
    Pass,
    Drop,
    /// Out of an interface, Ethernet header already written.
    Redirect(u32),
    /// TC: into the ingress of the peer device of an interface (`PEER_DEVS`), Ethernet header
    /// already written; XDP treats it as `Redirect`.
    RedirectPeer(u32),
    /// TC only: out of an interface through the neighbour subsystem, to the IPv4 next hop
    /// (network order; 0 = route the packet's destination).
    RedirectNeigh(u32, u32),
}

/// Counts `reason` and lets the packet go on untouched.
#[inline(always)]
pub fn pass<P: Packet>(p: &P, reason: StatReason) -> Verdict {
    stats::count(P::HOOK, reason, p.frame_len());
    Verdict::Pass
}

/// Counts `reason` and drops the packet.
#[inline(always)]
pub fn drop<P: Packet>(p: &P, reason: StatReason) -> Verdict {
    stats::count(P::HOOK, reason, p.frame_len());
    Verdict::Drop
}
