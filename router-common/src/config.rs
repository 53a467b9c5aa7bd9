//! The daemon → kernel settings (`CONFIG`), the port filter bitmaps (`PORT_FLAGS`) and the
//! connection-count cells (`CT_COUNT`).

/// Value of the single-slot `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`crate::LAYOUT_VERSION`] of the daemon that wrote it.
    pub layout_version: u32,
    /// Live connections allowed; a SYN beyond it is a counted drop (`DropTableFull`).
    pub max_connections: u32,
    /// Source ports toward backends drawn at random when the client's own port is not used:
    /// the union of these spans (unused ones all zero).
    pub nat_ports: [PortSpan; NAT_PORT_SPANS],
    /// Ports in `nat_ports` together (what a random draw is taken modulo; 0: none).
    pub nat_port_count: u32,
    /// The router host's ephemeral range (`net.ipv4.ip_local_port_range`, host order,
    /// inclusive): a client's own port inside it is never used toward a backend, since the
    /// host's own connections to tasks take their source ports from there.
    pub host_ephemeral_min: u16,
    pub host_ephemeral_max: u16,
    /// Cached next hops of a different epoch are looked up again; the daemon bumps it
    /// periodically and when routes or neighbours change.
    pub nh_epoch: u16,
    pub _pad: u16,
}
crate::assert_layout!(Settings, size = 32, align = 4);

/// Inclusive port range, host order; `first == 0` marks an unused one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSpan {
    pub first: u16,
    pub last: u16,
}
crate::assert_layout!(PortSpan, size = 4, align = 2);

impl PortSpan {
    /// Ports in the span.
    pub const fn len(&self) -> u32 {
        if self.first == 0 || self.last < self.first {
            0
        } else {
            (self.last - self.first) as u32 + 1
        }
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Spans of NAT source ports: every port from 1024 up, less the router's TCP range and the
/// host's ephemeral range, is at most three.
pub const NAT_PORT_SPANS: usize = 3;

/// Tries (the client's own port, then this many random ones) before `DropNoSourcePort`.
pub const NAT_PORT_PROBES: u32 = 16;

/// `PORT_FLAGS` is an array of `u64` words: bit `p % 64` of word `p / 64` is set for router
/// ports `p` with a route or live connections; bit `p % 64` of word `BACKEND_BASE + p / 64` for
/// backend ports (the source port of replies).
pub const PORT_WORDS: u32 = 1024;
pub const BACKEND_BASE: u32 = PORT_WORDS;
pub const PORT_FLAGS_SIZE: u32 = 2 * PORT_WORDS;

/// `CT_COUNT` slots: connections the kernel created (it adds atomically) and connections the
/// daemon removed (it alone writes). Live = created - removed.
pub const CT_CREATED: u32 = 0;
pub const CT_REMOVED: u32 = 1;
pub const CT_COUNT_SIZE: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, explicit padding.
unsafe impl aya::Pod for Settings {}
