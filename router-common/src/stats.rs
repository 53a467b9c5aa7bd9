//! Per-CPU packet counters: one slot per reason a program passed, forwarded or dropped a packet.

/// Index into the `STATS` per-CPU array. Every verdict a program reaches is counted under one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatReason {
    /// Packets seen by an XDP program.
    XdpSeen = 0,
    /// Packets seen by a TC program.
    TcSeen = 1,
    /// Packets handed to the host stack because they were not for the routed port range.
    PassNotForRange = 2,
}

impl StatReason {
    pub const ALL: [StatReason; 3] = [
        StatReason::XdpSeen,
        StatReason::TcSeen,
        StatReason::PassNotForRange,
    ];

    /// Stable metric label for the reason.
    pub const fn name(self) -> &'static str {
        match self {
            StatReason::XdpSeen => "xdp_seen",
            StatReason::TcSeen => "tc_seen",
            StatReason::PassNotForRange => "pass_not_for_range",
        }
    }
}

/// Number of slots in the `STATS` array (room to add reasons without a layout change).
pub const STAT_SLOTS: u32 = 64;

/// One counter slot: packets and bytes.
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
