//! Next hops: `bpf_fib_lookup` once per connection direction (cached in the entry, refreshed
//! when the daemon bumps the epoch), and the redirect itself: `TX_PORTS` (a DEVMAP) for XDP,
//! `bpf_redirect` / `bpf_redirect_neigh` / `bpf_redirect_peer` for TC.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup,
        xdp_action,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup as fib_lookup_helper},
    macros::map,
    maps::{DevMapHash, HashMap},
};
use router_common::{
    conntrack::{CtValue4, NH_MASK, NH_PEER, NH_VALID, NH_XDP_CHECKED, NH_XDP_OK, PEER_DEVS_MAX},
    stats::{Hook, StatReason},
};

use crate::ctx::Packet;
use crate::parse::IPPROTO_TCP;
use crate::verdict::Verdict;

pub const AF_INET: u32 = 2;

/// Interfaces XDP may redirect to, keyed by ifindex: those attached in (native) XDP mode, whose
/// drivers take redirected frames. Anything else goes through TC.
#[map(name = "TX_PORTS")]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(256, 0);

/// Interfaces of this namespace whose peer device lives in another namespace (veth, netkit:
/// the router's ends of container links), keyed by ifindex; the daemon keeps the set current
/// and bumps the next-hop epoch after each refresh. TC hands packets for them straight to the
/// peer's ingress (`bpf_redirect_peer`): no trip through the router-side device's transmit
/// path and the per-CPU backlog. Toward any other interface (a NIC, a bridge, a veth whose peer
/// is in this namespace, where `bpf_redirect_peer` would drop) TC redirects to its egress.
#[map(name = "PEER_DEVS")]
static PEER_DEVS: HashMap<u32, u32> = HashMap::with_max_entries(PEER_DEVS_MAX, 0);

#[inline(always)]
pub fn xdp_redirect(ifindex: u32) -> u32 {
    // A failed redirect of an already translated frame cannot be undone: it aborts (visible
    // through the xdp_exception tracepoint). `NH_XDP_OK` makes this unreachable.
    TX_PORTS
        .redirect(ifindex, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

/// A `bpf_fib_lookup` answer.
pub enum Fib {
    Found(bpf_fib_lookup),
    /// Route found, neighbour not resolved: egress ifindex, next-hop address, and the answer
    /// (with the source address when asked for).
    NoNeigh(u32, u32, bpf_fib_lookup),
    Failed,
}

/// Looks up the route from `src` to `dst` (network order) as if forwarding a packet that came in
/// on the packet's interface. `want_src` asks the kernel to pick the source address (`ipv4_src`
/// of the answer), as it would for its own connection to `dst`.
#[inline(always)]
pub fn fib<P: Packet>(p: &P, src: u32, dst: u32, want_src: bool) -> Fib {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET as u8;
    params.l4_protocol = IPPROTO_TCP;
    // tot_len stays 0: no MTU check here (GSO packets would fail it); the entry keeps the MTU.
    params.ifindex = p.ifindex();
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    let flags = if want_src { BPF_FIB_LOOKUP_SRC } else { 0 };
    // SAFETY: `params` lives on the stack for the call; the context is the program's own.
    let rc = unsafe {
        fib_lookup_helper(
            p.raw(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Fib::Found(params)
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // SAFETY: union fields written by the kernel as IPv4.
        Fib::NoNeigh(
            params.ifindex,
            unsafe { params.__bindgen_anon_4.ipv4_dst },
            params,
        )
    } else {
        Fib::Failed
    }
}

/// Stores a lookup's answer as the entry's next hop for `epoch`.
#[inline(always)]
pub fn cache(v: &mut CtValue4, found: &bpf_fib_lookup, epoch: u16) {
    v.nh_ifindex = found.ifindex;
    v.nh_smac = found.smac;
    v.nh_dmac = found.dmac;
    // SAFETY: on success the kernel writes the egress MTU into this union member.
    v.nh_mtu = unsafe { found.__bindgen_anon_1.mtu_result };
    v.nh_epoch = epoch;
    // SAFETY: a read of a map the daemon writes with plain values.
    let peer = unsafe { PEER_DEVS.get(&found.ifindex) }.is_some();
    v.flags = (v.flags & !NH_MASK) | NH_VALID | if peer { NH_PEER } else { 0 };
}

/// The redirect through the entry's cached next hop.
#[inline(always)]
pub fn cached(v: &CtValue4) -> Verdict {
    if v.flags & NH_PEER != 0 {
        Verdict::RedirectPeer(v.nh_ifindex)
    } else {
        Verdict::Redirect(v.nh_ifindex)
    }
}

/// How a translated packet leaves.
pub enum Out {
    /// Through the entry's cached next hop.
    Cached,
    /// TC: through `bpf_redirect_neigh` (ifindex, next hop).
    Neigh(u32, u32),
    /// Not from here: the packet goes on untouched with this reason.
    Stop(StatReason),
}

/// Makes sure the entry has a usable next hop for this hook.
#[inline(always)]
pub fn next_hop<P: Packet>(p: &P, v: &mut CtValue4, epoch: u16) -> Out {
    if v.flags & NH_VALID == 0 || v.nh_epoch != epoch {
        match fib(p, v.saddr, v.daddr, false) {
            Fib::Found(found) => cache(v, &found, epoch),
            Fib::NoNeigh(ifindex, nh, _) => {
                return if P::HOOK == Hook::Xdp {
                    Out::Stop(StatReason::XdpToTcNoNeigh)
                } else {
                    Out::Neigh(ifindex, nh)
                };
            }
            Fib::Failed => return Out::Stop(StatReason::PassFibFailed),
        }
    }
    if P::HOOK == Hook::Xdp {
        if v.flags & NH_XDP_CHECKED == 0 {
            let ok = TX_PORTS.get_ifindex(v.nh_ifindex).is_some();
            v.flags |= NH_XDP_CHECKED | if ok { NH_XDP_OK } else { 0 };
        }
        if v.flags & NH_XDP_OK == 0 {
            return Out::Stop(StatReason::XdpToTcNotXdpTarget);
        }
    }
    Out::Cached
}

/// The MTU of device `ifindex` (0 if there is none), for when no fib answer gave it.
#[inline(always)]
pub fn dev_mtu<P: Packet>(p: &P, ifindex: u32) -> u16 {
    let mut mtu: u32 = 0;
    // SAFETY: `mtu` lives on the stack for the call; the context is the program's own. With
    // `*mtu_len == 0` the helper checks the packet's own length and always writes the MTU.
    unsafe { bpf_check_mtu(p.raw(), ifindex, &mut mtu, 0, 0) };
    mtu.min(u16::MAX as u32) as u16
}

/// Whether XDP can redirect to `ifindex`.
#[inline(always)]
pub fn is_xdp_target(ifindex: u32) -> bool {
    TX_PORTS.get_ifindex(ifindex).is_some()
}
