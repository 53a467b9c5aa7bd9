//! The sizes of the half-open maps (`HALF_OPEN4`, `HALF_OPEN_RING`) for a configured connection
//! table, set at load time (see `half_open` for what the maps hold).

/// Half-open connections per configured connection: a sixteenth, between [`MIN_CAPACITY`] and
/// [`MAX_CAPACITY`].
const CAPACITY_DIVISOR: u32 = 16;
pub const MIN_CAPACITY: u32 = 256;
/// An eighth of the ~64 500 tuples one backend address and port offer from one router address:
/// a flood's half-open connections never hold more of them. Not more, because every SYN whose
/// own port is taken toward the backend (a share as large as the half-open table's) probes the
/// NAT source range (4 536 ports by default): at 16 384 a flood filled that range and 2.8 % of
/// all SYNs, legitimate ones too, found no port (`drop_no_source_port`, measured at 10 000
/// SYN/s); at 8 192 about a third of it is taken and 16 probes all fail once in 10^7. At
/// 100 000 SYN/s a half-open entry still lives 80 ms (2 CPUs, flood on one), far more than a
/// handshake needs between the backend's SYN-ACK and the client's ACK on any but the longest
/// paths.
pub const MAX_CAPACITY: u32 = 8_192;
/// The sizes of the half-open maps for a connection table of `max_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Half-open connections the ring admits before it evicts (all CPUs).
    pub capacity: u32,
    /// Ring slots per CPU (`HALF_OPEN_RING`'s `max_entries`).
    pub ring_slots: u32,
    /// `HALF_OPEN4`'s `max_entries`: two per ring slot of every CPU, plus the pair each CPU
    /// inserts before its admission evicts, plus slack for pairs left by races until a sweep.
    pub table_entries: u32,
}

impl Sizes {
    pub fn for_connections(max_connections: u32) -> Sizes {
        Sizes::new(max_connections, possible_cpus())
    }

    fn new(max_connections: u32, cpus: u32) -> Sizes {
        let capacity = (max_connections / CAPACITY_DIVISOR).clamp(MIN_CAPACITY, MAX_CAPACITY);
        let cpus = cpus.max(1);
        let ring_slots = capacity.div_ceil(cpus);
        Sizes {
            capacity,
            ring_slots,
            table_entries: 2 * (ring_slots * cpus + cpus) + 256,
        }
    }
}

/// CPUs the kernel may run programs on (per-CPU maps have a slot for each).
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(64, |n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capacity_follows_the_table_within_bounds_and_the_ring_covers_it() {
        let s = Sizes::new(262_144, 2);
        assert_eq!((s.capacity, s.ring_slots), (MAX_CAPACITY, MAX_CAPACITY / 2));
        assert!(s.table_entries >= 2 * s.capacity + 4);
        let s = Sizes::new(1024, 2);
        assert_eq!(s.capacity, MIN_CAPACITY);
        let s = Sizes::new(100_000, 3);
        assert_eq!(s.capacity, 6250);
        // Rounded up per CPU: the ring never holds fewer than the capacity.
        assert_eq!(s.ring_slots, 2084);
        assert!(s.table_entries >= 2 * (3 * s.ring_slots + 3));
        assert_eq!(Sizes::new(1024, 0).ring_slots, MIN_CAPACITY);
    }
}
