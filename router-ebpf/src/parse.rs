//! Packet access for both hooks: bounds-checked pointers into the frame, 16-bit-granular loads
//! and stores (headers after Ethernet are only 2-byte aligned), and the header offsets used.

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IP_LEN: usize = 20;
pub const TCP_LEN: usize = 20;
pub const ICMP_LEN: usize = 8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_ICMP: u8 = 1;

/// Offsets inside the IPv4 header.
pub const IP_TOT_LEN: usize = 2;
pub const IP_TTL: usize = 8;
pub const IP_PROTO: usize = 9;
pub const IP_CHECK: usize = 10;
pub const IP_SADDR: usize = 12;
pub const IP_DADDR: usize = 16;
pub const IP_FRAG: usize = 6;
/// Offsets inside the TCP header.
pub const TCP_SPORT: usize = 0;
pub const TCP_DPORT: usize = 2;
pub const TCP_SEQ: usize = 4;
pub const TCP_ACK_SEQ: usize = 8;
pub const TCP_DOFF: usize = 12;
pub const TCP_FLAGS: usize = 13;
pub const TCP_CHECK: usize = 16;

/// A pointer to `len` bytes at `offset` in `[start, end)`, or `None` if the frame is shorter.
#[inline(always)]
pub fn ptr_at(start: usize, end: usize, offset: usize, len: usize) -> Option<usize> {
    if start + offset + len > end {
        return None;
    }
    Some(start + offset)
}

#[inline(always)]
pub fn load8(p: usize) -> u8 {
    // SAFETY: callers only pass pointers checked by `ptr_at` for the bytes they read.
    unsafe { *(p as *const u8) }
}

#[inline(always)]
pub fn store8(p: usize, v: u8) {
    // SAFETY: as for `load8`.
    unsafe { *(p as *mut u8) = v }
}

#[inline(always)]
pub fn load16(p: usize) -> u16 {
    // SAFETY: as for `load8`; packet headers after Ethernet are 2-byte aligned.
    unsafe { *(p as *const u16) }
}

#[inline(always)]
pub fn store16(p: usize, v: u16) {
    // SAFETY: as for `load16`.
    unsafe { *(p as *mut u16) = v }
}

/// A 32-bit field as two 16-bit loads, so only 2-byte alignment is needed; same value as a
/// native 32-bit load.
#[inline(always)]
pub fn load32(p: usize) -> u32 {
    #[cfg(target_endian = "little")]
    {
        load16(p) as u32 | (load16(p + 2) as u32) << 16
    }
    #[cfg(target_endian = "big")]
    {
        (load16(p) as u32) << 16 | load16(p + 2) as u32
    }
}

#[inline(always)]
pub fn store32(p: usize, v: u32) {
    #[cfg(target_endian = "little")]
    {
        store16(p, v as u16);
        store16(p + 2, (v >> 16) as u16);
    }
    #[cfg(target_endian = "big")]
    {
        store16(p, (v >> 16) as u16);
        store16(p + 2, v as u16);
    }
}

/// Writes 6 MAC bytes as three 16-bit stores.
#[inline(always)]
pub fn store_mac(p: usize, mac: &[u8; 6]) {
    store16(p, u16::from_ne_bytes([mac[0], mac[1]]));
    store16(p + 2, u16::from_ne_bytes([mac[2], mac[3]]));
    store16(p + 4, u16::from_ne_bytes([mac[4], mac[5]]));
}
