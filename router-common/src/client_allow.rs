//! The client allow-lists (`CLIENT_ALLOW`, an LPM trie): which client addresses may open
//! connections to a router port. Userspace writes each restricted port's effective list; the
//! kernel looks it up only when a SYN would open a connection, so established connections never
//! see it and a changed list applies to new connections at once.
//!
//! A restricted port holds one entry for the port alone ([`PORT_PREFIX_LEN`] bits, value
//! [`CLIENT_REFUSED`]) and one per allowed CIDR (port bits plus the CIDR's, value
//! [`CLIENT_ALLOWED`]); the longest match decides. A port without entries admits every client,
//! so one look-up tells all three cases apart.

/// Room in the trie (entries over all ports: each restricted route takes one plus one per
/// CIDR); allocated as used (`BPF_F_NO_PREALLOC`), so the cap costs nothing until used.
pub const CLIENT_ALLOW_MAP_SIZE: u32 = 1 << 20;

/// Bits of the key that hold the router port.
pub const PORT_PREFIX_LEN: u32 = 16;
/// Bits of a key for one client address on one port: what the kernel looks up.
pub const FULL_PREFIX_LEN: u32 = PORT_PREFIX_LEN + 32;

/// Value of the port's own entry: the client matched none of the port's CIDRs.
pub const CLIENT_REFUSED: u32 = 0;
/// Value of a CIDR's entry.
pub const CLIENT_ALLOWED: u32 = 1;

/// The key's data after the prefix length: the router port then the client address, both in
/// network byte order (the order the prefix bits are matched in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientAllowData {
    pub port_be: [u8; 2],
    pub addr: [u8; 4],
    pub _pad: [u8; 2],
}
crate::assert_layout!(ClientAllowData, size = 8, align = 1);

impl ClientAllowData {
    /// `port` in host order, `addr` as it sits in a packet (network order, read natively).
    #[inline(always)]
    pub const fn new(port: u16, addr_raw: u32) -> Self {
        ClientAllowData {
            port_be: port.to_be_bytes(),
            addr: addr_raw.to_ne_bytes(),
            _pad: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `repr(C)`, byte arrays only.
unsafe impl aya::Pod for ClientAllowData {}
