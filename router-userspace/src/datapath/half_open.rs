//! Owner of the half-open table (`HALF_OPEN4`): connections from their SYN until the client
//! acknowledges the backend's SYN-ACK (the kernel then moves them into `CT4`). The kernel bounds
//! it itself, with a per-CPU ring of admissions (`HALF_OPEN_RING`, `HALF_OPEN_NEXT`) whose
//! oldest half-open connection a new SYN evicts (see `router-ebpf/src/half_open.rs`); this side
//! sizes the maps, expires what the ring has not reached yet (abandoned handshakes on a quiet
//! router), and reports the fill level and the connections.

use super::DatapathError;
use super::clock::KernelClock;
use super::conntrack::{ConnState, Connection, Counters, OPENING_MIN_IDLE, read_table};
use super::half_open_sizes::possible_cpus;
use super::object::maps::{HALF_OPEN_RING, HALF_OPEN4};
use aya::maps::{HashMap, IterableMap, Map, MapData};
use router_common::conntrack::{CtKey4, HalfOpen4, TCP_RST};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::Duration;

/// A half-pair younger than this may be a pair being inserted or confirmed right now.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// What one sweep of the half-open table found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HalfOpenSweep {
    /// Half-open connections left.
    pub live: u64,
    /// Connections removed: abandoned handshakes (the client silent for the opening timeout)
    /// and refused or aborted ones (a RST seen).
    pub expired: u64,
    /// Half-pairs removed.
    pub orphans: u64,
    /// Router ports and backend ports with half-open connections.
    pub router_ports: BTreeSet<u16>,
    pub backend_ports: BTreeSet<u16>,
}

/// A complete half-open pair: the client's entry and the backend's (same ticket).
struct Pair<'a> {
    fwd_key: &'a CtKey4,
    fwd: &'a HalfOpen4,
    rev_key: CtKey4,
    rev: &'a HalfOpen4,
}

fn sock(raw_ip: u32, raw_port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(raw_ip.to_ne_bytes()), u16::from_be(raw_port))
}

pub struct HalfOpen {
    table: HashMap<MapData, CtKey4, HalfOpen4>,
    capacity: u32,
}

impl HalfOpen {
    /// Takes the table; `ring` (left with the programs) tells the capacity: its slots per CPU,
    /// as loaded or as an earlier daemon pinned it.
    pub fn new(table: Map, ring: &Map) -> Result<HalfOpen, DatapathError> {
        let table = HashMap::try_from(table).map_err(|source| DatapathError::MapRead {
            map: HALF_OPEN4,
            source: Box::new(source),
        })?;
        let Map::PerCpuArray(ring) = ring else {
            return Err(DatapathError::Config(format!(
                "{HALF_OPEN_RING} is not a per-CPU array"
            )));
        };
        let slots = ring
            .info()
            .map_err(|source| DatapathError::MapRead {
                map: HALF_OPEN_RING,
                source: Box::new(source),
            })?
            .max_entries();
        Ok(HalfOpen {
            table,
            capacity: slots.saturating_mul(possible_cpus()),
        })
    }

    /// Half-open connections the kernel admits before it evicts the oldest.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn get(&self, key: &CtKey4) -> Option<HalfOpen4> {
        self.table.get(key, 0).ok()
    }

    /// Every entry of the table.
    pub fn scan(&self) -> Result<std::collections::HashMap<CtKey4, HalfOpen4>, DatapathError> {
        read_table(self.table.map().fd().as_fd(), HALF_OPEN4)
    }

    /// Splits the table into complete pairs and half-pairs.
    #[allow(clippy::type_complexity)]
    fn pairs(
        entries: &std::collections::HashMap<CtKey4, HalfOpen4>,
    ) -> (Vec<Pair<'_>>, Vec<(&CtKey4, &HalfOpen4)>) {
        let mut pairs = Vec::new();
        let mut orphans = Vec::new();
        for (key, value) in entries {
            let partner = CtKey4::partner_of(&value.ct);
            match entries.get(&partner) {
                Some(other)
                    if other.ticket == value.ticket
                        && other.ct.to_client() != value.ct.to_client() =>
                {
                    if !value.ct.to_client() {
                        pairs.push(Pair {
                            fwd_key: key,
                            fwd: value,
                            rev_key: partner,
                            rev: other,
                        });
                    }
                }
                _ => orphans.push((key, value)),
            }
        }
        (pairs, orphans)
    }

    /// The half-open connections now (state `Opening`).
    pub fn connections(
        &self,
        now: u64,
        clock: &KernelClock,
    ) -> Result<Vec<Connection>, DatapathError> {
        let entries = self.scan()?;
        let (pairs, _) = Self::pairs(&entries);
        Ok(pairs
            .iter()
            .map(|p| Connection {
                client: sock(p.fwd_key.saddr, p.fwd_key.sport),
                router: sock(p.fwd_key.daddr, p.fwd_key.dport),
                nat_source: sock(p.fwd.ct.saddr, p.fwd.ct.sport),
                backend: sock(p.fwd.ct.daddr, p.fwd.ct.dport),
                route_id: p.fwd.ct.route_id,
                state: ConnState::Opening,
                idle: clock.since(now, p.fwd.ct.last_seen),
                to_backend: Counters {
                    packets: p.fwd.ct.packets,
                    bytes: p.fwd.ct.bytes,
                },
                to_client: Counters {
                    packets: p.rev.ct.packets,
                    bytes: p.rev.ct.bytes,
                },
            })
            .collect())
    }

    /// Removes handshakes the client abandoned (silent for `opening`) and ones refused or
    /// aborted (a RST seen, silent for a SYN retransmission's time), and half-pairs; reports
    /// what is left.
    pub fn sweep(
        &mut self,
        now: u64,
        clock: &KernelClock,
        opening: Duration,
    ) -> Result<HalfOpenSweep, DatapathError> {
        let entries = self.scan()?;
        let (pairs, orphans) = Self::pairs(&entries);
        let mut report = HalfOpenSweep::default();
        for (key, value) in orphans {
            if clock.since(now, value.ct.last_seen) >= ORPHAN_GRACE {
                // A failed removal means the kernel removed it first.
                let _ = self.table.remove(key);
                report.orphans += 1;
            }
        }
        for p in &pairs {
            let idle = clock.since(now, p.fwd.ct.last_seen);
            let reset = (p.fwd.ct.tcp_flags | p.rev.ct.tcp_flags) & TCP_RST != 0;
            if idle >= opening || (reset && idle >= OPENING_MIN_IDLE) {
                let _ = self.table.remove(p.fwd_key);
                let _ = self.table.remove(&p.rev_key);
                report.expired += 1;
                continue;
            }
            report.live += 1;
            report.router_ports.insert(u16::from_be(p.fwd_key.dport));
            report.backend_ports.insert(u16::from_be(p.rev_key.sport));
        }
        Ok(report)
    }
}
