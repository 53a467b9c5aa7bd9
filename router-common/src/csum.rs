//! Ones' complement arithmetic for incremental checksum updates (RFC 1624), shared by the kernel
//! programs and the daemon (which builds connection entries for tests and benchmarks).
//!
//! Values are taken as they sit in packet memory, read natively: the ones' complement sum does
//! not depend on byte order as long as every word is read and written the same way.

/// Folds a 32-bit running sum to 16 bits with end-around carry.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the change of a 16-bit word from `old` to `new` to a running delta.
#[inline(always)]
pub const fn delta16(sum: u32, old: u16, new: u16) -> u32 {
    sum + (!old) as u32 + new as u32
}

/// Adds the change of a 32-bit word from `old` to `new` to a running delta.
#[inline(always)]
pub const fn delta32(sum: u32, old: u32, new: u32) -> u32 {
    let o = !old;
    sum + (o >> 16) + (o & 0xffff) + (new >> 16) + (new & 0xffff)
}

/// A checksum field after applying a folded `delta` (RFC 1624 eqn. 3: `~(~HC + delta)`).
#[inline(always)]
pub const fn apply(check: u16, delta: u16) -> u16 {
    !fold((!check) as u32 + delta as u32)
}

/// The 16-bit word delta of decrementing the TTL by one: the TTL is the first byte of the
/// TTL/protocol word, i.e. its low byte when read natively on a little-endian machine.
#[cfg(target_endian = "little")]
pub const TTL_DEC_DELTA: u16 = 0xfffe;
#[cfg(target_endian = "big")]
pub const TTL_DEC_DELTA: u16 = 0xfeff;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Full checksum of `data` (16-bit big-endian words), the slow way.
    fn full(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += w as u32;
        }
        !fold(sum)
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut hdr: [u8; 20] = [
            0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let check = u16::from_ne_bytes([hdr[10], hdr[11]]);
        let old_s = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        let new_s = u32::from_ne_bytes([192, 168, 7, 9]);
        let mut d = delta32(0, old_s, new_s);
        d += TTL_DEC_DELTA as u32;
        hdr[12..16].copy_from_slice(&new_s.to_ne_bytes());
        hdr[8] -= 1;
        let new_check = apply(check, fold(d));
        hdr[10..12].copy_from_slice(&new_check.to_ne_bytes());
        let mut verify = hdr;
        verify[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(full(&verify).to_be_bytes(), [hdr[10], hdr[11]]);
    }
}
