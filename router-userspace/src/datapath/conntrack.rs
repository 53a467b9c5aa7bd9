//! Owner of the connection table (`CT4`) and its count (`CT_COUNT`): the sweeper that enforces
//! idle timeouts by TCP state, expires idle connections early when the table is nearly full
//! ([`Pressure`]), removes half-pairs, keeps the kernel's live count honest, and exports the
//! fill level and per-route counters.

use super::DatapathError;
use super::clock::KernelClock;
use super::object::maps::{CT_COUNT, CT4};
use super::options::Pressure;
use super::sys;
use aya::maps::{Array, HashMap, IterableMap, Map, MapData};
use router_common::config::{CT_CREATED, CT_REMOVED};
use router_common::conntrack::{CtKey4, CtValue4, F_TOMBSTONE, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Entries read per batch syscall.
const SCAN_CHUNK: usize = 4096;
/// A half-pair younger than this may be a connection being opened right now.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// Idle timeouts by connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Handshake complete, or half-closed (one FIN): a long-lived, possibly quiet connection.
    pub established: Duration,
    /// SYN seen, handshake not complete (in the half-open table: the client silent that long).
    pub opening: Duration,
    /// Both FINs or a RST seen.
    pub closing: Duration,
    /// How long a closed connection's NAT tuple stays reserved (a tombstone reply entry):
    /// the backend keeps it in TIME_WAIT for 60 s, and another client's SYN on it with another
    /// timestamp clock would be refused there (PAWS) and stall for a retransmission.
    pub time_wait: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            established: Duration::from_secs(6 * 3600),
            opening: Duration::from_secs(60),
            closing: Duration::from_secs(10),
            time_wait: Duration::from_secs(60),
        }
    }
}

/// An opening connection younger than this is not evicted: the client's first SYN
/// retransmission comes after 1 s, so a handshake younger than that may still complete; an
/// older one has lost a packet and its client's next SYN creates the entry again.
pub const OPENING_MIN_IDLE: Duration = Duration::from_secs(1);

/// How long a connection in `state` must have been idle before pressure may evict it. A closing
/// connection may go at once: both ends are done with it and its tombstone keeps reserving the
/// tuple; only established connections get the configured minimum (active ones are never cut).
fn eviction_floor(state: ConnState, pressure: &Pressure) -> Duration {
    match state {
        ConnState::Closing => Duration::ZERO,
        ConnState::Opening => OPENING_MIN_IDLE.min(pressure.min_idle),
        ConnState::Established => pressure.min_idle,
    }
}

/// Which connections a sweep evicts: none while `live` is below the high watermark; otherwise
/// enough to bring `live` down to the low watermark, closing ones first, then opening, then
/// established, each longest-idle first, never one idle for less than its state's floor
/// (`eviction_floor`; the table stays above the low watermark rather). `candidates` are the
/// live connections' states and idle times; returns indices into it.
pub fn select_evictions(
    candidates: &[(ConnState, Duration)],
    live: u64,
    capacity: u64,
    pressure: &Pressure,
) -> Vec<usize> {
    if capacity == 0 || live * 100 < capacity * u64::from(pressure.high_percent) {
        return Vec::new();
    }
    let low = capacity * u64::from(pressure.low_percent) / 100;
    let excess = live.saturating_sub(low) as usize;
    let rank = |state: ConnState| match state {
        ConnState::Closing => 0,
        ConnState::Opening => 1,
        ConnState::Established => 2,
    };
    let mut eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].1 >= eviction_floor(candidates[i].0, pressure))
        .collect();
    eligible.sort_by_key(|&i| {
        let (state, idle) = candidates[i];
        (rank(state), std::cmp::Reverse(idle), i)
    });
    eligible.truncate(excess);
    eligible
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    Opening,
    Established,
    Closing,
}

/// The state of a connection from the TCP flags seen toward the backend and toward the client.
pub fn state(to_backend: u8, to_client: u8) -> ConnState {
    if (to_backend | to_client) & TCP_RST != 0 || to_backend & to_client & TCP_FIN != 0 {
        ConnState::Closing
    } else if to_backend & TCP_ACK != 0 && to_client & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        ConnState::Established
    } else {
        ConnState::Opening
    }
}

/// Packets and bytes (frames, Ethernet header included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    fn add(&mut self, v: &CtValue4) {
        self.packets += v.packets;
        self.bytes += v.bytes;
    }

    fn add_counters(&mut self, c: &Counters) {
        self.packets += c.packets;
        self.bytes += c.bytes;
    }
}

/// Per-route totals: connections in the table now, and traffic of live and ended ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteCounters {
    /// Connections in the table that are not closing.
    pub active: u64,
    /// Connections in the table.
    pub connections: u64,
    pub to_backend: Counters,
    pub to_client: Counters,
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Connection {
    pub client: SocketAddrV4,
    pub router: SocketAddrV4,
    pub nat_source: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub route_id: u32,
    pub state: ConnState,
    pub idle: Duration,
    pub to_backend: Counters,
    pub to_client: Counters,
}

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Connections in the table after the sweep.
    pub live: u64,
    /// Connections the table is configured for.
    pub capacity: u64,
    /// Connections removed for idleness in this sweep.
    pub expired: u64,
    /// Connections removed before their timeout because the table was nearly full
    /// ([`Pressure`]).
    pub evicted: u64,
    /// Half-pairs removed in this sweep.
    pub orphans: u64,
    /// Tuples of closed connections still reserved (see [`Timeouts::time_wait`]).
    pub tombstones: u64,
    /// Half-open connections (handshake under way, in the half-open table) after the sweep,
    /// what that table admits before it evicts, and how many the sweep removed.
    pub half_open: u64,
    pub half_open_capacity: u64,
    pub half_open_expired: u64,
    /// Per route id: live connections and traffic since the datapath was opened.
    pub routes: BTreeMap<u32, RouteCounters>,
    /// Router ports and backend ports with connections in the table.
    pub router_ports: BTreeSet<u16>,
    pub backend_ports: BTreeSet<u16>,
    pub took: Duration,
}

impl SweepReport {
    /// Fill level of the connection table, 0.0 to 1.0.
    pub fn fill(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        self.live as f64 / self.capacity as f64
    }
}

pub struct Conntrack {
    table: HashMap<MapData, CtKey4, CtValue4>,
    count: Array<MapData, u64>,
    capacity: u32,
    removed: u64,
    retired: BTreeMap<u32, RouteCounters>,
    timeouts: Timeouts,
    pressure: Pressure,
}

/// Every entry of the hash map `fd` (named `map` in errors), read in batches.
pub(super) fn read_table<K, V>(
    fd: std::os::fd::BorrowedFd<'_>,
    map: &'static str,
) -> Result<std::collections::HashMap<K, V>, DatapathError>
where
    K: Copy + Default + Eq + std::hash::Hash,
    V: Copy + Default,
{
    let mut entries = std::collections::HashMap::new();
    sys::for_each_entry::<K, V>(fd, SCAN_CHUNK, |k, v| {
        entries.insert(*k, *v);
    })
    .map_err(|source| DatapathError::MapSyscall {
        operation: "batch look-up",
        map,
        source,
    })?;
    Ok(entries)
}

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn sock(raw_ip: u32, raw_port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip(raw_ip), u16::from_be(raw_port))
}

/// A complete pair: the client's entry (`to_backend`) and the backend's (`to_client`).
struct Pair<'a> {
    fwd_key: &'a CtKey4,
    fwd: &'a CtValue4,
    rev_key: CtKey4,
    rev: &'a CtValue4,
}

impl Conntrack {
    pub fn new(table: Map, count: Map, capacity: u32) -> Result<Conntrack, DatapathError> {
        let table = HashMap::try_from(table).map_err(|source| DatapathError::MapRead {
            map: CT4,
            source: Box::new(source),
        })?;
        let count = Array::try_from(count).map_err(|source| DatapathError::MapRead {
            map: CT_COUNT,
            source: Box::new(source),
        })?;
        Ok(Conntrack {
            table,
            count,
            capacity,
            removed: 0,
            retired: BTreeMap::new(),
            timeouts: Timeouts::default(),
            pressure: Pressure::default(),
        })
    }

    /// Takes over a pinned table and count: the connections an earlier daemon counted as
    /// removed stay removed.
    pub fn adopt(table: Map, count: Map, capacity: u32) -> Result<Conntrack, DatapathError> {
        let mut owner = Conntrack::new(table, count, capacity)?;
        owner.removed =
            owner
                .count
                .get(&CT_REMOVED, 0)
                .map_err(|source| DatapathError::MapRead {
                    map: CT_COUNT,
                    source: Box::new(source),
                })?;
        Ok(owner)
    }

    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    pub fn set_pressure(&mut self, pressure: Pressure) {
        self.pressure = pressure;
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn get(&self, key: &CtKey4) -> Option<CtValue4> {
        self.table.get(key, 0).ok()
    }

    pub fn insert(&mut self, key: CtKey4, value: CtValue4) -> Result<(), DatapathError> {
        self.table
            .insert(key, value, 0)
            .map_err(|source| DatapathError::MapWrite {
                map: CT4,
                source: Box::new(source),
            })
    }

    /// Every entry of the table.
    pub fn scan(&self) -> Result<std::collections::HashMap<CtKey4, CtValue4>, DatapathError> {
        read_table(self.table.map().fd().as_fd(), CT4)
    }

    fn created(&self) -> Result<u64, DatapathError> {
        self.count
            .get(&CT_CREATED, 0)
            .map_err(|source| DatapathError::MapRead {
                map: CT_COUNT,
                source: Box::new(source),
            })
    }

    /// Connections the kernel counts as live (created minus removed).
    pub fn counted_live(&self) -> Result<u64, DatapathError> {
        Ok(self.created()?.saturating_sub(self.removed))
    }

    /// Splits the table into complete pairs, half-pairs and tombstones.
    #[allow(clippy::type_complexity)]
    fn pairs<'a>(
        entries: &'a std::collections::HashMap<CtKey4, CtValue4>,
    ) -> (
        Vec<Pair<'a>>,
        Vec<(&'a CtKey4, &'a CtValue4)>,
        Vec<(&'a CtKey4, &'a CtValue4)>,
    ) {
        let mut pairs = Vec::new();
        let mut orphans = Vec::new();
        let mut tombstones = Vec::new();
        for (key, value) in entries {
            if value.is_tombstone() {
                tombstones.push((key, value));
                continue;
            }
            let partner = CtKey4::partner_of(value);
            match entries.get(&partner) {
                Some(other) if value.to_client() == other.to_client() || other.is_tombstone() => {
                    orphans.push((key, value));
                }
                Some(other) if !value.to_client() => pairs.push(Pair {
                    fwd_key: key,
                    fwd: value,
                    rev_key: partner,
                    rev: other,
                }),
                Some(_) => {}
                None => orphans.push((key, value)),
            }
        }
        (pairs, orphans, tombstones)
    }

    /// The tracked connections now.
    pub fn connections(
        &self,
        now: u64,
        clock: &KernelClock,
    ) -> Result<Vec<Connection>, DatapathError> {
        let entries = self.scan()?;
        let (pairs, _, _) = Self::pairs(&entries);
        let mut out: Vec<Connection> = pairs
            .iter()
            .map(|p| Connection {
                client: sock(p.fwd_key.saddr, p.fwd_key.sport),
                router: sock(p.fwd_key.daddr, p.fwd_key.dport),
                nat_source: sock(p.fwd.saddr, p.fwd.sport),
                backend: sock(p.fwd.daddr, p.fwd.dport),
                route_id: p.fwd.route_id,
                state: state(p.fwd.tcp_flags, p.rev.tcp_flags),
                idle: clock
                    .since(now, p.fwd.last_seen)
                    .min(clock.since(now, p.rev.last_seen)),
                to_backend: Counters {
                    packets: p.fwd.packets,
                    bytes: p.fwd.bytes,
                },
                to_client: Counters {
                    packets: p.rev.packets,
                    bytes: p.rev.bytes,
                },
            })
            .collect();
        out.sort_by_key(|c| (c.router, c.client));
        Ok(out)
    }

    /// Removes idle connections and half-pairs, evicts idle connections early when the table
    /// is nearly full, corrects the live count and reports.
    pub fn sweep(&mut self, now: u64, clock: &KernelClock) -> Result<SweepReport, DatapathError> {
        let started = Instant::now();
        let created_before = self.created()?;
        let entries = self.scan()?;
        let (pairs, orphans, tombstones) = Self::pairs(&entries);
        let mut report = SweepReport {
            capacity: self.capacity as u64,
            ..SweepReport::default()
        };
        self.sweep_orphans(orphans, now, clock, &mut report);
        let mut routes = self.retired.clone();
        let remove = self.keep_or_remove(&pairs, now, clock, &mut routes, &mut report);
        let tombstoned = self.remove_pairs(remove, &mut routes, &mut report);
        report.tombstones = self.sweep_tombstones(tombstones, now, clock, report.live) + tombstoned;
        // Connections the kernel removed itself (a SYN reopening a closed one) or the LRU
        // evicted never pass through here: every connection counted before the scan and not
        // found in it is gone, so the removed count is at least that.
        self.removed = self.removed.max(created_before.saturating_sub(report.live));
        self.count
            .set(CT_REMOVED, self.removed, 0)
            .map_err(|source| DatapathError::MapWrite {
                map: CT_COUNT,
                source: Box::new(source),
            })?;
        report.routes = routes;
        report.took = started.elapsed();
        Ok(report)
    }

    /// Half-pairs: a young one may be a connection being opened (counted, its ports kept); an
    /// old one is removed and its counters retired.
    fn sweep_orphans(
        &mut self,
        orphans: Vec<(&CtKey4, &CtValue4)>,
        now: u64,
        clock: &KernelClock,
        report: &mut SweepReport,
    ) {
        for (key, value) in orphans {
            if clock.since(now, value.last_seen) < ORPHAN_GRACE {
                // Possibly being opened: still counts against the table and keeps its ports.
                if !value.to_client() {
                    report.live += 1;
                    report.router_ports.insert(u16::from_be(key.dport));
                } else {
                    report.backend_ports.insert(u16::from_be(key.sport));
                }
                continue;
            }
            let _ = self.table.remove(key);
            let retired = self.retired.entry(value.route_id).or_default();
            let counters = if value.to_client() {
                &mut retired.to_client
            } else {
                &mut retired.to_backend
            };
            counters.add_counters(&Counters {
                packets: value.packets,
                bytes: value.bytes,
            });
            if !value.to_client() {
                self.removed += 1;
            }
            report.orphans += 1;
        }
    }

    /// Counts the pairs that stay (in `routes` and `report`) and returns those to remove: idle
    /// past their state's timeout, or evicted early (`true`) because the table is nearly full.
    fn keep_or_remove<'p, 'a>(
        &self,
        pairs: &'p [Pair<'a>],
        now: u64,
        clock: &KernelClock,
        routes: &mut BTreeMap<u32, RouteCounters>,
        report: &mut SweepReport,
    ) -> Vec<(&'p Pair<'a>, ConnState, bool)> {
        let mut expired = Vec::new();
        let mut kept = Vec::new();
        for p in pairs {
            let st = state(p.fwd.tcp_flags, p.rev.tcp_flags);
            let idle = clock
                .since(now, p.fwd.last_seen)
                .min(clock.since(now, p.rev.last_seen));
            let limit = match st {
                ConnState::Opening => self.timeouts.opening,
                ConnState::Established => self.timeouts.established,
                ConnState::Closing => self.timeouts.closing,
            };
            if idle >= limit {
                expired.push((p, st));
            } else {
                kept.push((p, st, idle));
            }
        }
        // The watermarks apply to what the kernel counts: kept pairs and young half-pairs.
        let candidates: Vec<(ConnState, Duration)> =
            kept.iter().map(|(_, st, idle)| (*st, *idle)).collect();
        let evict: BTreeSet<usize> = select_evictions(
            &candidates,
            report.live + kept.len() as u64,
            report.capacity,
            &self.pressure,
        )
        .into_iter()
        .collect();
        let mut remove: Vec<(&Pair, ConnState, bool)> =
            expired.into_iter().map(|(p, st)| (p, st, false)).collect();
        for (i, (p, st, _)) in kept.into_iter().enumerate() {
            if evict.contains(&i) {
                remove.push((p, st, true));
                continue;
            }
            report.live += 1;
            let r = routes.entry(p.fwd.route_id).or_default();
            r.connections += 1;
            if st != ConnState::Closing {
                r.active += 1;
            }
            r.to_backend.add(p.fwd);
            r.to_client.add(p.rev);
            report.router_ports.insert(u16::from_be(p.fwd_key.dport));
            report.backend_ports.insert(u16::from_be(p.rev_key.sport));
        }
        remove
    }

    /// Removes pairs, their counters retired; a closed connection's reply entry stays as a
    /// tombstone. Returns the tombstones made.
    fn remove_pairs(
        &mut self,
        remove: Vec<(&Pair, ConnState, bool)>,
        routes: &mut BTreeMap<u32, RouteCounters>,
        report: &mut SweepReport,
    ) -> u64 {
        let mut tombstoned = 0u64;
        for (p, st, evicted) in remove {
            // A failed removal means the kernel or the LRU removed it first.
            let _ = self.table.remove(p.fwd_key);
            // A closed connection's reply entry stays as a tombstone reserving the tuple.
            let tombstone = CtValue4 {
                flags: p.rev.flags | F_TOMBSTONE,
                packets: 0,
                bytes: 0,
                ..*p.rev
            };
            if st != ConnState::Closing || self.table.insert(p.rev_key, tombstone, 0).is_err() {
                let _ = self.table.remove(&p.rev_key);
            } else {
                tombstoned += 1;
            }
            let route_id = p.fwd.route_id;
            let retired = self.retired.entry(route_id).or_default();
            retired.to_backend.add(p.fwd);
            retired.to_client.add(p.rev);
            let r = routes.entry(route_id).or_default();
            r.to_backend.add(p.fwd);
            r.to_client.add(p.rev);
            self.removed += 1;
            if evicted {
                report.evicted += 1;
            } else {
                report.expired += 1;
            }
        }
        tombstoned
    }

    /// Tombstones go after TIME_WAIT, and early (oldest first) when they would crowd the room
    /// the table keeps for `live` connections. Returns the tombstones kept.
    fn sweep_tombstones(
        &mut self,
        tombstones: Vec<(&CtKey4, &CtValue4)>,
        now: u64,
        clock: &KernelClock,
        live: u64,
    ) -> u64 {
        let mut kept: Vec<(&CtKey4, Duration)> = Vec::new();
        for (key, value) in tombstones {
            let idle = clock.since(now, value.last_seen);
            if idle >= self.timeouts.time_wait {
                let _ = self.table.remove(key);
            } else {
                kept.push((key, idle));
            }
        }
        let room = 2 * (self.capacity as u64).saturating_sub(live);
        if kept.len() as u64 > room {
            kept.sort_by_key(|(_, idle)| std::cmp::Reverse(*idle));
            let excess = kept.len() - room as usize;
            for (key, _) in kept.drain(..excess) {
                let _ = self.table.remove(key);
            }
        }
        kept.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_the_flags_of_both_directions() {
        assert_eq!(state(TCP_SYN, 0), ConnState::Opening);
        assert_eq!(state(TCP_SYN, TCP_SYN | TCP_ACK), ConnState::Opening);
        assert_eq!(
            state(TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK),
            ConnState::Established
        );
        // Half-closed stays established: the other side may still send for a long time.
        assert_eq!(
            state(TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK),
            ConnState::Established
        );
        assert_eq!(
            state(TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK | TCP_FIN),
            ConnState::Closing
        );
        assert_eq!(state(TCP_SYN | TCP_RST, 0), ConnState::Closing);
        assert_eq!(state(TCP_SYN, TCP_RST | TCP_ACK), ConnState::Closing);
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn pressure(high: u8, low: u8, min_idle_secs: u64) -> Pressure {
        Pressure {
            high_percent: high,
            low_percent: low,
            min_idle: Duration::from_secs(min_idle_secs),
        }
    }

    #[test]
    fn below_the_high_watermark_nothing_is_evicted() {
        let idle = vec![(ConnState::Established, 3600 * SECOND); 89];
        assert!(select_evictions(&idle, 89, 100, &pressure(90, 80, 30)).is_empty());
        // At the watermark exactly, eviction starts, down to the low watermark.
        let idle = vec![(ConnState::Established, 3600 * SECOND); 90];
        assert_eq!(
            select_evictions(&idle, 90, 100, &pressure(90, 80, 30)).len(),
            10
        );
    }

    #[test]
    fn evicts_down_to_the_low_watermark_closing_then_opening_then_established_longest_idle_first() {
        let candidates = [
            (ConnState::Established, 500 * SECOND), // 0
            (ConnState::Opening, 40 * SECOND),      // 1
            (ConnState::Closing, 31 * SECOND),      // 2
            (ConnState::Established, 900 * SECOND), // 3
            (ConnState::Opening, 50 * SECOND),      // 4
            (ConnState::Closing, 35 * SECOND),      // 5
            (ConnState::Established, 100 * SECOND), // 6
            (ConnState::Established, 700 * SECOND), // 7
            (ConnState::Established, 5 * SECOND),   // 8
            (ConnState::Established, 40 * SECOND),  // 9
            (ConnState::Closing, SECOND / 2),       // 10: closing, evictable at once
            (ConnState::Opening, SECOND / 2),       // 11: a handshake that may still complete
        ];
        // 12 live of 12: down to 6 (50 %), so 6 evicted.
        assert_eq!(
            select_evictions(&candidates, 12, 12, &pressure(90, 50, 30)),
            vec![5, 2, 10, 4, 1, 3]
        );
        // Down to 2: every eligible one, in the same order.
        assert_eq!(
            select_evictions(&candidates, 12, 12, &pressure(90, 20, 30)),
            vec![5, 2, 10, 4, 1, 3, 7, 0, 6, 9]
        );
    }

    #[test]
    fn a_connection_active_within_the_minimum_idle_is_never_evicted() {
        let mut candidates = vec![(ConnState::Established, 29 * SECOND); 95];
        candidates.extend([
            (ConnState::Closing, 30 * SECOND),
            (ConnState::Opening, SECOND / 2),
        ]);
        // 97 live of 100 and the low watermark at 80: only the closing one may go (the opening
        // one is younger than a SYN retransmission), so the table stays above the low
        // watermark rather than cut an active connection.
        assert_eq!(
            select_evictions(&candidates, 97, 100, &pressure(90, 80, 30)),
            vec![95]
        );
        assert!(select_evictions(&candidates[..95], 95, 100, &pressure(90, 80, 30)).is_empty());
    }

    #[test]
    fn live_counts_half_pairs_the_candidates_do_not_include() {
        // 85 connections and 7 young half-pairs: 92 of 100 live, above 90 %.
        let candidates = vec![(ConnState::Established, 60 * SECOND); 85];
        assert_eq!(
            select_evictions(&candidates, 92, 100, &pressure(90, 80, 30)).len(),
            12
        );
        assert!(select_evictions(&[], 0, 0, &Pressure::default()).is_empty());
    }
}
