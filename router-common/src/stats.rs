//! Per-CPU verdict counters: every packet a program sees ends under exactly one reason, per hook,
//! so the sum over a hook's reasons is what that hook saw.

/// The program a counter belongs to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Xdp = 0,
    Tc = 1,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

/// Why a program forwarded, passed or dropped a packet. `Pass*` hand the packet to the host
/// stack untouched, `Drop*` drop it, `Xdp*` hand it on to the TC program on the same interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatReason {
    /// Translated and redirected, for an existing connection.
    Forwarded = 0,
    /// A SYN that created a connection (half-open until the client acknowledges the backend's
    /// SYN-ACK), translated and redirected.
    NewConnection = 1,
    /// An ICMP error about a tracked connection, translated and redirected.
    IcmpTranslated = 2,
    /// Not TCP/ICMP for the routed ports or a tracked connection: the host's own traffic.
    PassNotForRange = 3,
    /// A SYN to a router port that has no route (any more): the host stack answers (RST).
    PassNoRoute = 4,
    /// A non-SYN packet to a router port with no tracked connection (RST never creates one).
    PassNoConnection = 5,
    /// A TCP IPv4 fragment: handed to the stack, which reassembles.
    PassFragment = 6,
    /// An IPv4 header with options, for the routed ports.
    PassIpOptions = 7,
    /// A truncated or malformed IPv4/TCP/ICMP header, or an IPv4 total length that does not
    /// hold the headers or runs past the frame.
    PassMalformed = 8,
    /// No route toward the backend or client (`bpf_fib_lookup` failed).
    PassFibFailed = 9,
    /// XDP: the next hop has no neighbour entry yet; TC resolves it (`bpf_redirect_neigh`).
    XdpToTcNoNeigh = 10,
    /// XDP: the egress interface cannot take XDP redirects (not in the TX port map).
    XdpToTcNotXdpTarget = 11,
    /// XDP: the frame is larger than the egress MTU.
    XdpToTcTooBig = 12,
    /// The connection table is full: the SYN is dropped (the client retries).
    DropTableFull = 13,
    /// No free NAT source port toward the backend after the bounded probing.
    DropNoSourcePort = 14,
    /// TTL would reach zero.
    DropTtlExceeded = 15,
    /// Inserting the connection's entries failed.
    DropConntrackInsert = 16,
    /// TC: larger than the egress MTU and not a GSO packet.
    DropTooBig = 17,
    /// The checksum helper refused a translated packet (cannot be handed on half-rewritten).
    DropRewriteFailed = 18,
    /// The client's ACK of the backend's SYN-ACK (its acknowledgment number matched): the
    /// connection moved from the half-open table into the connection table; translated and
    /// redirected.
    HandshakeConfirmed = 19,
    /// A SYN that opened a connection when its CPU's share of the half-open table was full:
    /// the oldest half-open connection that CPU admitted was evicted first (both entries; its
    /// NAT tuple is free again). Translated and redirected, like `NewConnection`.
    NewConnectionEvicting = 20,
    /// A SYN that would open a connection from a client outside the route's allow-list
    /// (`ROUTER_TCP_CLIENT_ALLOW`, the route's `allow`, the task's narrowing key): dropped,
    /// nothing answers (a scanner learns nothing).
    DropClientNotAllowed = 21,
    /// A backend's packet on a half-open connection that is neither a SYN-ACK nor a RST
    /// (the client, in SYN_SENT, answers an unacceptable ACK with a RST and sends its SYN
    /// again): a challenge ACK from a backend that still holds the tuple in a synchronized
    /// state (the RST frees it), a late packet of the tuple's last connection, or data after a
    /// TCP Fast Open SYN-ACK. Translated and redirected.
    ForwardedBeforeHandshake = 22,
}

impl StatReason {
    pub const ALL: [StatReason; 23] = [
        StatReason::Forwarded,
        StatReason::NewConnection,
        StatReason::IcmpTranslated,
        StatReason::PassNotForRange,
        StatReason::PassNoRoute,
        StatReason::PassNoConnection,
        StatReason::PassFragment,
        StatReason::PassIpOptions,
        StatReason::PassMalformed,
        StatReason::PassFibFailed,
        StatReason::XdpToTcNoNeigh,
        StatReason::XdpToTcNotXdpTarget,
        StatReason::XdpToTcTooBig,
        StatReason::DropTableFull,
        StatReason::DropNoSourcePort,
        StatReason::DropTtlExceeded,
        StatReason::DropConntrackInsert,
        StatReason::DropTooBig,
        StatReason::DropRewriteFailed,
        StatReason::HandshakeConfirmed,
        StatReason::NewConnectionEvicting,
        StatReason::DropClientNotAllowed,
        StatReason::ForwardedBeforeHandshake,
    ];

    /// Stable metric label for the reason.
    pub const fn name(self) -> &'static str {
        match self {
            StatReason::Forwarded => "forwarded",
            StatReason::NewConnection => "new_connection",
            StatReason::IcmpTranslated => "icmp_translated",
            StatReason::PassNotForRange => "pass_not_for_range",
            StatReason::PassNoRoute => "pass_no_route",
            StatReason::PassNoConnection => "pass_no_connection",
            StatReason::PassFragment => "pass_fragment",
            StatReason::PassIpOptions => "pass_ip_options",
            StatReason::PassMalformed => "pass_malformed",
            StatReason::PassFibFailed => "pass_fib_failed",
            StatReason::XdpToTcNoNeigh => "xdp_to_tc_no_neigh",
            StatReason::XdpToTcNotXdpTarget => "xdp_to_tc_not_xdp_target",
            StatReason::XdpToTcTooBig => "xdp_to_tc_too_big",
            StatReason::DropTableFull => "drop_table_full",
            StatReason::DropNoSourcePort => "drop_no_source_port",
            StatReason::DropTtlExceeded => "drop_ttl_exceeded",
            StatReason::DropConntrackInsert => "drop_conntrack_insert",
            StatReason::DropTooBig => "drop_too_big",
            StatReason::DropRewriteFailed => "drop_rewrite_failed",
            StatReason::HandshakeConfirmed => "handshake_confirmed",
            StatReason::NewConnectionEvicting => "new_connection_evicting",
            StatReason::DropClientNotAllowed => "drop_client_not_allowed",
            StatReason::ForwardedBeforeHandshake => "forwarded_before_handshake",
        }
    }

    /// Whether the packet was dropped (rather than forwarded or passed on).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            StatReason::DropTableFull
                | StatReason::DropNoSourcePort
                | StatReason::DropTtlExceeded
                | StatReason::DropConntrackInsert
                | StatReason::DropTooBig
                | StatReason::DropRewriteFailed
                | StatReason::DropClientNotAllowed
        )
    }
}

/// Slots per hook in the `STATS` array (room to add reasons without a layout change).
pub const REASON_SLOTS: u32 = 32;
/// Number of slots in the `STATS` array: one block of [`REASON_SLOTS`] per hook.
pub const STAT_SLOTS: u32 = 2 * REASON_SLOTS;

const _: () = assert!(StatReason::ALL.len() as u32 <= REASON_SLOTS);

/// The `STATS` index of `reason` counted by `hook`.
#[inline(always)]
pub const fn slot(hook: Hook, reason: StatReason) -> u32 {
    hook as u32 * REASON_SLOTS + reason as u32
}

/// One counter slot: packets and bytes (frame bytes, Ethernet header included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatValue {
    pub packets: u64,
    pub bytes: u64,
}
crate::assert_layout!(StatValue, size = 16, align = 8);

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, no padding.
unsafe impl aya::Pod for StatValue {}
