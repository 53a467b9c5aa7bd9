//! The connection table (`CT4`, an LRU hash): two entries per connection, one per direction,
//! each keyed by the tuple its packets arrive with and holding the translation to apply.
//!
//! A connection's entries live in the half-open table ([`HalfOpen4`]) from its SYN until the
//! client acknowledges the backend's SYN-ACK, then in `CT4`.
//!
//! Client `C:c -> R:P` is forwarded as `R':s -> B:b`; the backend's replies `B:b -> R':s` go
//! back as `R:P -> C:c`. The forward entry is keyed `(C, R, c, P)`, the reply entry
//! `(B, R', b, s)`. Each entry's rewritten tuple, swapped, is its partner's key.
//!
//! A connection of a route in destination-only mode ([`F_PRESERVE_CLIENT`]) keeps the client's
//! address: `C:c -> R:P` is forwarded as `C:s -> B:b` (`s` = `c` unless taken), replies
//! `B:b -> C:s` go back as `R:P -> C:c`. Same two entries, same partner rule.

use crate::csum;

/// Key of `CT4`: the IPv4 TCP tuple of an arriving packet, network byte order. Twelve bytes, no
/// padding: one jhash round. IPv6 gets its own map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey4 {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}
crate::assert_layout!(CtKey4, size = 12, align = 4);

/// `CtValue4::flags`, next-hop cache part: the cached `nh_*` fields are valid for `nh_epoch`.
pub const NH_VALID: u8 = 0x01;
/// XDP checked whether the egress interface takes XDP redirects (result in `NH_XDP_OK`).
pub const NH_XDP_CHECKED: u8 = 0x02;
/// The egress interface is in `TX_PORTS`.
pub const NH_XDP_OK: u8 = 0x04;
/// The egress interface's peer device is in another namespace (`PEER_DEVS`): TC hands the
/// packet straight to that device's ingress (`bpf_redirect_peer`).
pub const NH_PEER: u8 = 0x40;
/// Room in the kernel's `PEER_DEVS` set (interfaces whose peer is in another namespace);
/// interfaces beyond it get the plain egress redirect (the daemon warns).
pub const PEER_DEVS_MAX: u32 = 4096;
/// The bits a next-hop refresh resets.
pub const NH_MASK: u8 = NH_VALID | NH_XDP_CHECKED | NH_XDP_OK | NH_PEER;
/// `CtValue4::flags`: the connection was opened in destination-only mode (its route had
/// `route::ROUTE_PRESERVE_CLIENT`): toward the backend it carries the client's address. Both
/// entries carry it for the connection's life, whatever its route becomes; the translation
/// itself is in the entries' tuples, the bit records the mode (restarts, `status`, tombstones).
pub const F_PRESERVE_CLIENT: u8 = 0x80;
/// `CtValue4::flags`: the entry matches the backend's packets (replies); clear = the client's.
pub const F_TO_CLIENT: u8 = 0x08;
/// `CtValue4::flags`: leave the TTL alone. Only for BPF_PROG_TEST_RUN benchmarks, which replay
/// one buffer through a pair of entries; `l3_csum` must match.
pub const F_KEEP_TTL: u8 = 0x10;

/// `CtValue4::flags`: the reply entry of a connection that ended, kept only to reserve its NAT
/// tuple while the backend may hold it in TIME_WAIT (a SYN from another client on that tuple
/// would meet PAWS there). Packets never match it; the daemon's sweeper writes and removes it.
pub const F_TOMBSTONE: u8 = 0x20;

/// `CtValue4::tcp_flags`: the union of these TCP flags over the direction's packets.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_TRACKED: u8 = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK;
/// `CtValue4::tcp_flags`, not a packet's flag: the partner direction sent a FIN (set by that
/// FIN, in `CT4`); `awaited_ack` holds the acknowledgment number that acknowledges it.
pub const TCP_PEER_FIN: u8 = 0x40;
/// `CtValue4::tcp_flags`, not a packet's flag: this direction acknowledged the partner's FIN
/// (a packet carrying `awaited_ack` or later passed). A tuple is handed to another client only
/// once both FINs are acknowledged: until then a last ACK may still be on its way through it.
pub const TCP_PEER_FIN_ACKED: u8 = 0x80;
/// `CtValue4::tcp_flags` of a reply entry, not a packet's flag: a SYN of another connection is
/// taking the closed pair's tuple over (set and tested atomically with the restart of the pair
/// by its own client, so exactly one of the two gets the tuple).
pub const TCP_TAKEN: u8 = 0x20;

/// One direction of a connection: one cache line of what every packet reads, then the
/// timestamp offset (read only by connections that have one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue4 {
    /// The tuple written into matching packets, network order.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// Folded checksum deltas: IP header (addresses and TTL), TCP pseudo-header (addresses),
    /// TCP ports.
    pub l3_csum: u16,
    pub l4_pseudo_csum: u16,
    pub l4_port_csum: u16,
    /// Cached next hop: IP MTU of the egress interface, the interface, Ethernet addresses;
    /// valid per `flags & NH_VALID` and `nh_epoch`.
    pub nh_mtu: u16,
    pub nh_ifindex: u32,
    pub nh_smac: [u8; 6],
    pub nh_dmac: [u8; 6],
    pub nh_epoch: u16,
    /// `NH_*` and `F_*` bits.
    pub flags: u8,
    /// `TCP_*` bits seen in this direction.
    pub tcp_flags: u8,
    /// The route the connection was opened through (`RouteValue::route_id`).
    pub route_id: u32,
    /// Kernel jiffies of the last packet, low 32 bits.
    pub last_seen: u32,
    pub packets: u64,
    pub bytes: u64,
    /// TCP timestamp translation (0: none). Chosen at the SYN so that the timestamps the
    /// backend sees on this connection's tuple start from the router's timestamp clock: the
    /// forward entry adds it to TSval, the reply entry subtracts it from TSecr. Every
    /// connection on a tuple then carries timestamps newer than the last one's, whichever
    /// client it came from, so the backend accepts a SYN on a tuple it still holds in
    /// TIME_WAIT (RFC 6191) instead of refusing it (PAWS) for a 1 s SYN retransmission.
    pub ts_off: u32,
    /// An acknowledgment number (host order) awaited from one direction. In a half-open reply
    /// entry (`HalfOpen4::ct`): the one the client's ACK completing the handshake carries, the
    /// backend's initial sequence number + 1, once its SYN-ACK passed (`tcp_flags` has SYN and
    /// ACK); a blind spoofer cannot know it. In `CT4`, valid while `tcp_flags` has
    /// [`TCP_PEER_FIN`]: the one that acknowledges the partner direction's FIN (the sequence
    /// number after it), awaited from this direction's packets.
    pub awaited_ack: u32,
}
crate::assert_layout!(CtValue4, size = 72, align = 8);

/// The router's TCP timestamp clock, which `CtValue4::ts_off` starts a connection's TSvals
/// from: the kernel's monotonic clock (`bpf_ktime_get_ns`) in nanoseconds shifted right by
/// this (2^16 ns: a 65.5 µs tick), low 32 bits.
pub const TS_TICK_SHIFT: u32 = 16;

impl CtValue4 {
    /// An entry that rewrites packets arriving as `from` into `to`, with its checksum deltas;
    /// `flags` are `F_*` bits. Next hop, state and counters start empty.
    #[inline(always)]
    pub fn rewrite(from: &CtKey4, to: &CtKey4, flags: u8) -> CtValue4 {
        let addr = csum::delta32(csum::delta32(0, from.saddr, to.saddr), from.daddr, to.daddr);
        let ports = csum::delta16(csum::delta16(0, from.sport, to.sport), from.dport, to.dport);
        let ttl = if flags & F_KEEP_TTL != 0 {
            0
        } else {
            csum::TTL_DEC_DELTA as u32
        };
        CtValue4 {
            saddr: to.saddr,
            daddr: to.daddr,
            sport: to.sport,
            dport: to.dport,
            l3_csum: csum::fold(addr + ttl),
            l4_pseudo_csum: csum::fold(addr),
            l4_port_csum: csum::fold(ports),
            flags,
            ..CtValue4::default()
        }
    }

    /// The tuple packets carry after the rewrite.
    #[inline(always)]
    pub const fn rewritten(&self) -> CtKey4 {
        CtKey4 {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
        }
    }

    /// Whether this entry matches the backend's packets.
    #[inline(always)]
    pub const fn to_client(&self) -> bool {
        self.flags & F_TO_CLIENT != 0
    }

    /// Whether the connection keeps the client's address toward the backend.
    #[inline(always)]
    pub const fn preserves_client(&self) -> bool {
        self.flags & F_PRESERVE_CLIENT != 0
    }

    /// Whether this entry only reserves the tuple of an ended connection.
    #[inline(always)]
    pub const fn is_tombstone(&self) -> bool {
        self.flags & F_TOMBSTONE != 0
    }
}

impl CtKey4 {
    /// The tuple of the opposite direction.
    #[inline(always)]
    pub const fn swapped(&self) -> CtKey4 {
        CtKey4 {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The key of the partner entry of an entry with this value: its rewritten tuple, swapped.
    #[inline(always)]
    pub const fn partner_of(v: &CtValue4) -> CtKey4 {
        CtKey4 {
            saddr: v.daddr,
            daddr: v.saddr,
            sport: v.dport,
            dport: v.sport,
        }
    }
}

/// Value of the half-open table (`HALF_OPEN4`, a hash beside `CT4`): one entry per direction
/// of a connection whose handshake has not completed, keyed like `CT4`'s. The SYN creates both
/// (its NAT tuple is reserved here, not in `CT4`); the client's ACK of the backend's SYN-ACK
/// moves `ct` of both into `CT4`. The table is bounded by a per-CPU ring of admissions
/// (`HALF_OPEN_RING`): a new half-open connection evicts the oldest one its CPU admitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpen4 {
    /// The entry this direction becomes in `CT4`.
    pub ct: CtValue4,
    /// Which admission this pair is (both entries carry it; see [`HalfOpenSlot::ticket`]).
    pub ticket: u64,
}
crate::assert_layout!(HalfOpen4, size = 80, align = 8);

/// One slot of the per-CPU admission ring (`HALF_OPEN_RING`): the forward key of a half-open
/// connection this CPU admitted. When the ring comes round to the slot again, that connection
/// is evicted if it is still half-open under the same ticket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpenSlot {
    pub key: CtKey4,
    pub _pad: u32,
    /// `admissions << TICKET_CPU_BITS | cpu` at admission; 0 = never used.
    pub ticket: u64,
}
crate::assert_layout!(HalfOpenSlot, size = 24, align = 8);

/// The per-CPU cursor of the admission ring (`HALF_OPEN_NEXT`, one slot per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpenCursor {
    /// The ring slot the next admission takes (wraps to 0 past the ring's end).
    pub next: u32,
    pub _pad: u32,
    /// Admissions on this CPU so far.
    pub admitted: u64,
}
crate::assert_layout!(HalfOpenCursor, size = 16, align = 8);

/// Low bits of a ticket that hold the CPU, so tickets of different CPUs never collide.
pub const TICKET_CPU_BITS: u32 = 12;

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, explicit padding.
unsafe impl aya::Pod for HalfOpen4 {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, explicit padding.
unsafe impl aya::Pod for HalfOpenSlot {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, explicit padding.
unsafe impl aya::Pod for HalfOpenCursor {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, no padding.
unsafe impl aya::Pod for CtKey4 {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, no padding.
unsafe impl aya::Pod for CtValue4 {}
