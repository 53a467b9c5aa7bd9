//! NAT of TCP: translating a packet by its connection entry, and opening a connection (route
//! look-up, NAT source address and port, both entries, half-open until confirmed). Full NAT,
//! or destination-only NAT for a route that keeps the client's address
//! (`ROUTE_PRESERVE_CLIENT`): the same entries with the client's address as the source toward
//! the backend.

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use router_common::{
    config::NAT_PORT_PROBES,
    conntrack::{
        CtKey4, CtValue4, F_KEEP_TTL, F_PRESERVE_CLIENT, F_TO_CLIENT, HalfOpen4, NH_VALID,
        NH_XDP_CHECKED, NH_XDP_OK, TCP_SYN, TCP_TRACKED,
    },
    route::{FAMILY_IPV4, ROUTE_MAP_SIZE, RouteKey, RouteValue},
    stats::{Hook, StatReason},
};

use crate::clock;
use crate::closing;
use crate::config;
use crate::conntrack;
use crate::ctx::Packet;
use crate::half_open;
use crate::mss;
use crate::parse::{
    ETH_LEN, IP_CHECK, IP_DADDR, IP_LEN, IP_SADDR, IP_TTL, TCP_CHECK, TCP_DPORT, TCP_SPORT, load8,
    load16, store_mac, store8, store16, store32,
};
use crate::redirect::{self, Fib, Out};
use crate::timestamps;
use crate::verdict::{Verdict, drop, pass};

/// Scratch room for the two half-open entries [`open`] builds (slot [`FWD_SLOT`]: the client's,
/// [`REPLY_SLOT`]: the backend's): on the stack, beside the FIB look-up and the keys, they took
/// the TC program past BPF's 512 bytes once the entries carried the timestamp offset.
#[map(name = "OPEN_ENTRIES")]
static OPEN_ENTRIES: PerCpuArray<HalfOpen4> = PerCpuArray::with_max_entries(2, 0);
const FWD_SLOT: u32 = 0;
const REPLY_SLOT: u32 = 1;

/// This CPU's scratch entry `slot` of [`OPEN_ENTRIES`].
#[inline(always)]
fn scratch(slot: u32) -> Option<&'static mut HalfOpen4> {
    // SAFETY: a per-CPU map value; each slot has one user, within one program run (a program
    // runs to its end on its CPU).
    OPEN_ENTRIES.get_ptr_mut(slot).map(|e| unsafe { &mut *e })
}

#[map(name = "ROUTES")]
static ROUTES: HashMap<RouteKey, RouteValue> =
    HashMap::with_max_entries(ROUTE_MAP_SIZE, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Frame offset of the TCP checksum (IPv4 without options).
const TCP_CHECK_OFF: usize = ETH_LEN + IP_LEN + TCP_CHECK;

/// Writes the entry's tuple, TTL and checksums into the IPv4/TCP headers at `ip`/`tcp` (both
/// already bounds-checked), its timestamp translation, and its cached Ethernet addresses when
/// `l2`; `extra` is the folded checksum delta of other TCP header changes (a clamped MSS). The
/// TCP checksum comes last: on TC it may move the packet.
#[inline(always)]
fn rewrite<P: Packet>(p: &P, ip: usize, tcp: usize, v: &CtValue4, l2: bool, extra: u16) -> bool {
    if v.flags & F_KEEP_TTL == 0 {
        store8(ip + IP_TTL, load8(ip + IP_TTL) - 1);
    }
    store32(ip + IP_SADDR, v.saddr);
    store32(ip + IP_DADDR, v.daddr);
    store16(
        ip + IP_CHECK,
        router_common::csum::apply(load16(ip + IP_CHECK), v.l3_csum),
    );
    store16(tcp + TCP_SPORT, v.sport);
    store16(tcp + TCP_DPORT, v.dport);
    if l2 {
        let eth = ip - ETH_LEN;
        store_mac(eth, &v.nh_dmac);
        store_mac(eth + 6, &v.nh_smac);
    }
    let ts = timestamps::translate(p, tcp, v);
    let l4 = if extra == 0 && ts == 0 {
        v.l4_port_csum
    } else {
        router_common::csum::fold(v.l4_port_csum as u32 + extra as u32 + ts as u32)
    };
    p.tcp_csum(TCP_CHECK_OFF, v.l4_pseudo_csum, l4)
}

/// The MSS clamp of a handshake packet on a tracked connection: a SYN (retransmitted) to the
/// link toward the backend, a SYN-ACK to both links (the forward entry knows the backend's).
#[inline(always)]
fn clamp_handshake<P: Packet>(p: &P, tcp: usize, v: &CtValue4, out: &Out) -> u16 {
    let mut mtu = match out {
        // Not cached yet (no neighbour entry): the device's MTU.
        Out::Neigh(ifindex, _) => redirect::dev_mtu(p, *ifindex),
        _ => v.nh_mtu,
    };
    if v.flags & F_TO_CLIENT != 0 {
        // The reply entry translates to (router:port -> client:port); the forward entry is
        // keyed by the client's tuple.
        let forward_key = CtKey4 {
            saddr: v.daddr,
            daddr: v.saddr,
            sport: v.dport,
            dport: v.sport,
        };
        // In CT4, or in the half-open table while the handshake is under way.
        let fwd_mtu = match conntrack::lookup(&forward_key) {
            // SAFETY: a map value pointer from the look-up; one field read.
            Some(fwd) => unsafe { (*fwd).nh_mtu },
            None => match half_open::lookup(&forward_key) {
                // SAFETY: as above.
                Some(fwd) => unsafe { (*fwd).ct.nh_mtu },
                None => 0,
            },
        };
        mtu = mss::min_mtu(mtu, fwd_mtu);
    }
    if mtu == 0 {
        return 0;
    }
    mss::clamp(p, tcp, mtu)
}

/// The TTL after translation would be zero.
#[inline(always)]
pub fn ttl_expires(ip: usize, flags: u8) -> bool {
    let dec = if flags & F_KEEP_TTL != 0 { 0 } else { 1 };
    load8(ip + IP_TTL) <= dec
}

/// Translates and sends on a packet of a tracked connection; `tcp_flags` are the packet's,
/// `reason` what it is counted as.
#[inline(always)]
pub fn forward<P: Packet>(
    p: &P,
    ip: usize,
    tcp: usize,
    entry: *mut CtValue4,
    tcp_flags: u8,
    reason: StatReason,
) -> Verdict {
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
    if ttl_expires(ip, v.flags) {
        return drop(p, StatReason::DropTtlExceeded);
    }
    if let Out::Cached = out {
        let tot_len = u16::from_be(load16(ip + 2));
        if v.nh_mtu != 0 && tot_len > v.nh_mtu && !p.is_gso() {
            return if P::HOOK == Hook::Xdp {
                pass(p, StatReason::XdpToTcTooBig)
            } else {
                drop(p, StatReason::DropTooBig)
            };
        }
    }
    let seen = tcp_flags & TCP_TRACKED;
    if v.tcp_flags | seen != v.tcp_flags {
        v.tcp_flags |= seen;
    }
    let now = clock::now();
    if v.last_seen != now {
        v.last_seen = now;
    }
    if closing::has_news(v, tcp_flags) {
        closing::note(p, ip, tcp, v, tcp_flags);
    }
    v.packets += p.segments();
    v.bytes += p.frame_len();
    let l2 = matches!(out, Out::Cached);
    let extra = if tcp_flags & TCP_SYN != 0 {
        clamp_handshake(p, tcp, v, &out)
    } else {
        0
    };
    if !rewrite(p, ip, tcp, v, l2, extra) {
        return drop(p, StatReason::DropRewriteFailed);
    }
    crate::stats::count(P::HOOK, reason, p.frame_len());
    match out {
        Out::Neigh(ifindex, nh) => Verdict::RedirectNeigh(ifindex, nh),
        _ => redirect::cached(v),
    }
}

/// A SYN on the client tuple of a connection that ended (`entry` is its forward entry, still
/// tracked: closing connections stay 10 s, and a busy client wraps its ephemeral ports faster):
/// when the route and the next hop are still what the pair was made for, restarts the pair in
/// place and returns true; the caller then forwards the SYN on it. That is the same tuple
/// toward the backend `reserve_reply` would give this client once the pair were gone,
/// without the two deletes and two inserts of removing it and opening it again (in a large
/// table those LRU operations are most of what a new connection costs). The counters carry
/// on, so per-route totals never go back. The timestamp offset is taken afresh from the SYN
/// (`tcp`: its TCP header), as a new pair's is: the backend then sees a TSval from the
/// router's clock, above every one the last connection on the tuple sent (those ran from an
/// earlier reading at the client's slower clock), even when the client reuses its port within
/// one tick of its own clock. With the old offset, such a SYN's TSval would equal the last
/// one the backend holds in TIME_WAIT: neither newer nor a PAWS reject, it is accepted only if
/// its sequence number lies above the last connection's (true of clients whose initial
/// sequence numbers rise per tuple, as RFC 6528's and Linux's do; not of those that draw them
/// at random), else answered with an ACK, and the client resets and retransmits after 1 s.
/// Fields are read through the pointers, not copied: the program's stack is small.
#[inline(always)]
pub fn restart_in_place<P: Packet>(
    p: &P,
    tcp: usize,
    key: &CtKey4,
    port: u16,
    entry: *mut CtValue4,
) -> bool {
    let Some(route) = ROUTES.get_ptr(RouteKey::tcp(port)) else {
        return false;
    };
    let Some(settings) = config::settings() else {
        return false;
    };
    // SAFETY: map value pointers from look-ups; single fields read.
    let (fwd, route) = unsafe { (&mut *entry, &*route) };
    if route.family != FAMILY_IPV4
        || route.route_id != fwd.route_id
        || route.ipv4_raw() != fwd.daddr
        || route.port_be != fwd.dport
        || route.preserves_client() != fwd.preserves_client()
        || fwd.flags & NH_VALID == 0
        || fwd.nh_epoch != settings.nh_epoch
    {
        return false;
    }
    let Some(reply) = conntrack::lookup(&CtKey4::partner_of(fwd)) else {
        return false;
    };
    // SAFETY: as above.
    let reply = unsafe { &mut *reply };
    // The pair's own reply entry: it translates back to exactly this client tuple.
    if reply.is_tombstone()
        || !reply.to_client()
        || reply.saddr != key.daddr
        || reply.daddr != key.saddr
        || reply.sport != key.dport
        || reply.dport != key.sport
    {
        return false;
    }
    if !closing::reopen(reply as *mut CtValue4) {
        return false;
    }
    let ts_off = timestamps::offset_for_syn(p, tcp);
    fwd.ts_off = ts_off;
    reply.ts_off = ts_off;
    fwd.tcp_flags = 0;
    reply.last_seen = clock::now();
    true
}

/// Opens a connection for a SYN (`key` is its tuple, `port` the router port in host order): a
/// half-open pair in `HALF_OPEN4` (see `half_open`), which the client's completing ACK moves into
/// `CT4`.
#[inline(always)]
pub fn open<P: Packet>(p: &P, ip: usize, tcp: usize, key: &CtKey4, port: u16) -> Verdict {
    if !config::is_local(key.daddr) {
        return pass(p, StatReason::PassNotForRange);
    }
    let Some(route) = ROUTES.get_ptr(RouteKey::tcp(port)) else {
        return pass(p, StatReason::PassNoRoute);
    };
    // SAFETY: a map value pointer; copied out at once.
    let route = unsafe { *route };
    if route.family != FAMILY_IPV4 {
        return pass(p, StatReason::PassNoRoute);
    }
    if !crate::client_allow::admits(key.saddr, port) {
        return drop(p, StatReason::DropClientNotAllowed);
    }
    let Some(settings) = config::settings() else {
        return pass(p, StatReason::PassNoRoute);
    };
    if ttl_expires(ip, 0) {
        return drop(p, StatReason::DropTtlExceeded);
    }
    if conntrack::live() >= settings.max_connections as u64 {
        return drop(p, StatReason::DropTableFull);
    }
    let backend = route.ipv4_raw();
    // The next hop toward the backend, and the source address the kernel would use there (R').
    let (found, neigh) = match redirect::fib(p, 0, backend, true) {
        Fib::Found(found) => (found, None),
        Fib::NoNeigh(ifindex, nh, found) => {
            if P::HOOK == Hook::Xdp {
                return pass(p, StatReason::XdpToTcNoNeigh);
            }
            (found, Some((ifindex, nh)))
        }
        Fib::Failed => return pass(p, StatReason::PassFibFailed),
    };
    // SAFETY: union member written by the kernel for BPF_FIB_LOOKUP_SRC.
    let router_src = unsafe { found.__bindgen_anon_3.ipv4_src };
    if router_src == 0 {
        return pass(p, StatReason::PassFibFailed);
    }
    let (nat_src, mode) = source_toward_backend(&route, key.saddr, router_src);
    if P::HOOK == Hook::Xdp && !redirect::is_xdp_target(found.ifindex) {
        return pass(p, StatReason::XdpToTcNotXdpTarget);
    }
    let now = clock::now();
    let client_side = key.swapped();
    let ticket = half_open::next_ticket();
    // The tuple the connection has toward the backend; its source port is allocated below.
    let mut out = CtKey4 {
        saddr: nat_src,
        daddr: backend,
        sport: key.sport,
        dport: route.port_be,
    };
    let pair = Pair {
        client_side: &client_side,
        route_id: route.route_id,
        now,
        ticket,
        mode,
        ts_off: timestamps::offset_for_syn(p, tcp),
    };
    if !allocate_source_port(&mut out, &pair, key.sport, settings) {
        return drop(p, StatReason::DropNoSourcePort);
    }
    let Some(fwd) = scratch(FWD_SLOT) else {
        return drop(p, StatReason::DropConntrackInsert);
    };
    fwd.ct = CtValue4::rewrite(key, &out, mode);
    fwd.ticket = ticket;
    fwd.ct.route_id = route.route_id;
    fwd.ct.ts_off = pair.ts_off;
    fwd.ct.tcp_flags = TCP_SYN;
    fwd.ct.last_seen = now;
    fwd.ct.packets = p.segments();
    fwd.ct.bytes = p.frame_len();
    match neigh {
        None => {
            redirect::cache(&mut fwd.ct, &found, settings.nh_epoch);
            if P::HOOK == Hook::Xdp {
                fwd.ct.flags |= NH_XDP_CHECKED | NH_XDP_OK;
            }
        }
        // The next hop is not cached, but the SYN-ACK's MSS clamp reads the link's MTU here.
        Some((ifindex, _)) => fwd.ct.nh_mtu = redirect::dev_mtu(p, ifindex),
    }
    if !half_open::insert_new(key, fwd) {
        // Another CPU opened the same connection (a retransmitted SYN) a moment ago, on
        // another tuple (the reply entries are unique): this one's reservation goes.
        half_open::remove(&out.swapped());
        return match half_open::lookup(key) {
            // SAFETY: a map value pointer from the look-up.
            Some(existing) => forward(
                p,
                ip,
                tcp,
                unsafe { &mut (*existing).ct },
                TCP_SYN,
                StatReason::Forwarded,
            ),
            None => drop(p, StatReason::DropConntrackInsert),
        };
    }
    let reason = if half_open::admit(key, ticket) {
        StatReason::NewConnectionEvicting
    } else {
        StatReason::NewConnection
    };
    let extra = mss::clamp(p, tcp, fwd.ct.nh_mtu);
    if !rewrite(p, ip, tcp, &fwd.ct, neigh.is_none(), extra) {
        return drop(p, StatReason::DropRewriteFailed);
    }
    crate::stats::count(P::HOOK, reason, p.frame_len());
    match neigh {
        Some((ifindex, nh)) => Verdict::RedirectNeigh(ifindex, nh),
        None => redirect::cached(&fwd.ct),
    }
}

/// The source address toward the backend and the entries' mode bit: the client's own address
/// for a route in destination-only mode (the backend's replies come back through the router:
/// the daemon checked, or was told so), else the router's address `router_src`.
#[inline(always)]
fn source_toward_backend(route: &RouteValue, client: u32, router_src: u32) -> (u32, u8) {
    if route.preserves_client() {
        (client, F_PRESERVE_CLIENT)
    } else {
        (router_src, 0)
    }
}

/// Reserves a source port for the connection's side toward the backend (`out`): the client's
/// own port `client_port` when it is free there and, in full NAT, outside the router host's
/// ephemeral range, else independent random tries among the NAT source ports (sequential probing from
/// one random start would walk into the clusters earlier allocations leave, and fail long
/// before the range is full). A port the host's stack may pick for its own connections to the
/// task (nginx, health checks) is never given to a client: the task may still hold that tuple
/// in TIME_WAIT with unrelated timestamps, or the host may be using it now. False: none found.
#[inline(always)]
fn allocate_source_port(
    out: &mut CtKey4,
    pair: &Pair,
    client_port: u16,
    settings: &router_common::config::Settings,
) -> bool {
    let own = u16::from_be(client_port);
    // Only the router's address is the host's too: with the client's address kept toward the
    // backend (destination-only NAT) its port is never one of the host's tuples.
    let host_may_pick = pair.mode & F_PRESERVE_CLIENT == 0
        && own >= settings.host_ephemeral_min
        && own <= settings.host_ephemeral_max;
    if !host_may_pick && reserve_reply(out, pair, client_port) {
        return true;
    }
    let count = settings.nat_port_count;
    if count == 0 {
        return false;
    }
    let mut i = 0;
    while i < NAT_PORT_PROBES {
        // SAFETY: a helper without arguments.
        let port = nat_port(settings, unsafe { bpf_get_prandom_u32() } % count);
        if reserve_reply(out, pair, port.to_be()) {
            return true;
        }
        i += 1;
    }
    false
}

/// The `n`th NAT source port (`n` below `nat_port_count`), counting through the spans in order.
#[inline(always)]
fn nat_port(settings: &router_common::config::Settings, n: u32) -> u16 {
    let mut rest = n;
    for span in settings.nat_ports.iter() {
        let len = span.len();
        if rest < len {
            return span.first + rest as u16;
        }
        rest -= len;
    }
    settings.nat_ports[0].first
}

/// What the two entries of a connection being opened share.
struct Pair<'a> {
    /// The client's tuple as replies leave toward it (router:port -> client:port).
    client_side: &'a CtKey4,
    route_id: u32,
    now: u32,
    ticket: u64,
    /// `F_PRESERVE_CLIENT` or 0, for both entries.
    mode: u8,
    /// The connection's timestamp translation (0: its SYN has no timestamp).
    ts_off: u32,
}

/// Claims source port `sport` (network order) for the connection's backend side by inserting
/// its reply entry into the half-open table; fails when another connection to the same backend
/// has the tuple, half-open or in `CT4`. The exceptions are tuples of ended connections (their
/// `CT4` reply entry a tombstone) the backend will accept this SYN on although it may still hold
/// them in TIME_WAIT: it accepts a new SYN there only when its timestamp (or sequence number)
/// is newer. That holds for the tuple the same client tuple used last (the same clock and
/// offset, as without NAT: a client reusing its port for the same router port takes it back),
/// and for any tuple when both the last connection and this one translate their timestamps
/// (`timestamps`); confirmation replaces the tombstone. Other clients without timestamps probe
/// for another port: their SYN would meet PAWS there (a 1 s SYN retransmission each).
///
/// The half-open insert comes first and the `CT4` check second: a confirmation inserts into
/// `CT4` before it removes the half-open entry, so a tuple is never seen free in both.
#[inline(always)]
fn reserve_reply(out: &mut CtKey4, pair: &Pair, sport: u16) -> bool {
    out.sport = sport;
    let reply_key = out.swapped();
    let Some(reply) = scratch(REPLY_SLOT) else {
        return false;
    };
    reply.ct = CtValue4::rewrite(&reply_key, pair.client_side, F_TO_CLIENT | pair.mode);
    reply.ticket = pair.ticket;
    reply.ct.route_id = pair.route_id;
    reply.ct.last_seen = pair.now;
    reply.ct.ts_off = pair.ts_off;
    if !half_open::insert_new(&reply_key, reply) {
        return false;
    }
    let Some(existing) = conntrack::lookup(&reply_key) else {
        return true;
    };
    // SAFETY: a map value pointer from the look-up, read once.
    let (tombstone, client, ts_off) = unsafe {
        (
            (*existing).is_tombstone(),
            (*existing).rewritten(),
            (*existing).ts_off,
        )
    };
    // A tuple whose last connection and this one both translate timestamps: the backend's
    // TIME_WAIT there accepts this SYN, whichever client it comes from.
    let both_translated = ts_off != 0 && pair.ts_off != 0;
    let reusable = if tombstone {
        client == *pair.client_side || both_translated
    } else if both_translated && closing::take_closed(existing) {
        // The last connection closed both ways, both FINs acknowledged (or was reset) a moment
        // ago: its pair goes now, so the backend's answers on the tuple find this connection's
        // half-open entry (its last ACK has passed: `closing`). The
        // backend accepts the SYN on the tuple it holds in TIME_WAIT (newer timestamps), and
        // the tuple is not held for the closing timeout: at thousands of connections per
        // second that would run out of tuples toward the backend.
        conntrack::remove_pair(&reply_key, existing);
        true
    } else {
        false
    };
    if !reusable {
        half_open::remove(&reply_key);
    }
    reusable
}
