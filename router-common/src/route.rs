//! The route map (`ROUTES`): router port → backend. Userspace writes it, the kernel reads it
//! when a SYN opens a connection; established connections never look at it again, so changing
//! or removing a route only affects new connections.

/// IP protocol number of TCP, as used in [`RouteKey::proto`].
pub const PROTO_TCP: u8 = 6;

/// Address family tags in [`RouteValue::family`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// [`RouteValue::flags`]: destination-only NAT. Connections keep the client's address toward
/// the backend (only the destination, and the source port if the client's is taken, are
/// rewritten); the backend's replies must come back through the router. Clear: full NAT.
pub const ROUTE_PRESERVE_CLIENT: u8 = 0x01;

/// Room in the route map: one entry per possible router port.
pub const ROUTE_MAP_SIZE: u32 = 65_536;

/// Key of `ROUTES`: the router port a client connects to, with the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// Router port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`].
    pub proto: u8,
    pub _pad: u8,
}
crate::assert_layout!(RouteKey, size = 4, align = 2);

impl RouteKey {
    pub const fn tcp(port: u16) -> RouteKey {
        RouteKey {
            port,
            proto: PROTO_TCP,
            _pad: 0,
        }
    }
}

/// Value of `ROUTES`: where connections to the port go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteValue {
    /// Backend address, network byte order: IPv4 in the first 4 bytes (rest zero), or IPv6.
    pub addr: [u8; 16],
    /// Backend port, network byte order.
    pub port_be: u16,
    /// [`FAMILY_IPV4`] (the kernel programs forward IPv4 only for now).
    pub family: u8,
    /// `ROUTE_*` bits: how connections opened through the route are translated.
    pub flags: u8,
    /// Identifies the route for per-route counters; copied into each connection's entries.
    pub route_id: u32,
    /// Bumped each time the route at this port is (re)programmed.
    pub version: u32,
    pub _pad2: u32,
}
crate::assert_layout!(RouteValue, size = 32, align = 4);

impl RouteValue {
    /// The IPv4 backend address as it sits in a packet (network order, read natively).
    #[inline(always)]
    pub fn ipv4_raw(&self) -> u32 {
        u32::from_ne_bytes([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
    }

    /// Whether connections through the route keep the client's address (destination-only NAT).
    #[inline(always)]
    pub const fn preserves_client(&self) -> bool {
        self.flags & ROUTE_PRESERVE_CLIENT != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, explicit padding fields.
unsafe impl aya::Pod for RouteKey {}
#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, explicit padding fields.
unsafe impl aya::Pod for RouteValue {}
