//! The TCP port allocator: one port of `TCP_PORT_START..=TCP_PORT_END` per task endpoint.
//!
//! - A task keeps its port while it runs, across restarts: assignments are persisted in
//!   `ROUTER_STATE_DIR/ports.json`, and the port written on the task is authoritative (the
//!   server wins on conflict: [`PortAllocator::claim`] takes a port from whoever held it locally).
//! - A released port rests for a grace period before it is handed out again, so a late packet of
//!   an old task never reaches a new one; allocation is next-fit from a cursor, so ports are
//!   reused as late as possible.
//! - Ports of static routes are reserved and never handed out.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::endpoint::EndpointId;
use crate::fsutil::write_atomic;
use crate::time::{Millis, now_millis};

#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error(
        "the TCP port range {start}-{end} is exhausted ({assigned} assigned, {resting} resting after release)"
    )]
    Exhausted {
        start: u16,
        end: u16,
        assigned: usize,
        resting: usize,
    },
    #[error("port {port} is outside the TCP range {start}-{end}")]
    OutOfRange { port: u16, start: u16, end: u16 },
    #[error("port {port} is reserved by a static route")]
    Reserved { port: u16 },
    #[error("reading the port state {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the port state {} is not valid JSON of this version", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the port state {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    cursor: u16,
    assigned: Vec<PersistedAssignment>,
    resting: Vec<PersistedRest>,
}

#[derive(Serialize, Deserialize)]
struct PersistedAssignment {
    port: u16,
    task_id: String,
    endpoint: String,
}

#[derive(Serialize, Deserialize)]
struct PersistedRest {
    port: u16,
    since_ms: Millis,
}

const STATE_VERSION: u32 = 1;

/// Counts for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub range_size: usize,
    pub assigned: usize,
    pub resting: usize,
    pub reserved: usize,
}

/// `Clone`: the sync engine snapshots it to undo a plan it decides not to believe.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    start: u16,
    end: u16,
    grace_ms: Millis,
    by_port: BTreeMap<u16, EndpointId>,
    by_owner: HashMap<EndpointId, u16>,
    resting: BTreeMap<u16, Millis>,
    reserved: BTreeSet<u16>,
    cursor: u16,
    path: Option<PathBuf>,
    dirty: bool,
}

impl PortAllocator {
    /// An allocator for `start..=end` that keeps no state on disk.
    pub fn in_memory(start: u16, end: u16, grace: Duration) -> Self {
        PortAllocator {
            start,
            end,
            grace_ms: grace.as_millis() as u64,
            by_port: BTreeMap::new(),
            by_owner: HashMap::new(),
            resting: BTreeMap::new(),
            reserved: BTreeSet::new(),
            cursor: start,
            path: None,
            dirty: false,
        }
    }

    /// An allocator persisted in `path`, loading what is there. Entries outside the range
    /// (the range may have changed) are dropped.
    pub fn open(start: u16, end: u16, grace: Duration, path: &Path) -> Result<Self, PortsError> {
        let mut a = PortAllocator::in_memory(start, end, grace);
        a.path = Some(path.to_path_buf());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(a),
            Err(source) => {
                return Err(PortsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let state: Persisted =
            serde_json::from_str(&text).map_err(|source| PortsError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(PortsError::Corrupt {
                path: path.to_path_buf(),
                source: serde::de::Error::custom(format!(
                    "state version {} (this build reads {STATE_VERSION})",
                    state.version
                )),
            });
        }
        for entry in state.assigned {
            if a.in_range(entry.port) && !a.by_port.contains_key(&entry.port) {
                let key = EndpointId::new(entry.task_id, entry.endpoint);
                if a.by_owner.contains_key(&key) {
                    continue;
                }
                a.by_owner.insert(key.clone(), entry.port);
                a.by_port.insert(entry.port, key);
            }
        }
        for rest in state.resting {
            if a.in_range(rest.port) && !a.by_port.contains_key(&rest.port) {
                a.resting.insert(rest.port, rest.since_ms);
            }
        }
        if a.in_range(state.cursor) {
            a.cursor = state.cursor;
        }
        Ok(a)
    }

    pub fn in_range(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    pub fn range(&self) -> (u16, u16) {
        (self.start, self.end)
    }

    /// The port `key` holds, if any.
    pub fn port_of(&self, key: &EndpointId) -> Option<u16> {
        self.by_owner.get(key).copied()
    }

    /// Who holds `port`.
    pub fn owner_of(&self, port: u16) -> Option<&EndpointId> {
        self.by_port.get(&port)
    }

    /// Ports static routes use: never handed out. An assignment on a newly reserved port is
    /// dropped (the owner gets a new port on its next allocation).
    pub fn set_reserved(&mut self, ports: impl IntoIterator<Item = u16>) {
        let reserved: BTreeSet<u16> = ports.into_iter().collect();
        if reserved == self.reserved {
            return;
        }
        for port in &reserved {
            if let Some(owner) = self.by_port.remove(port) {
                self.by_owner.remove(&owner);
                self.dirty = true;
            }
        }
        self.reserved = reserved;
    }

    /// Records that the server says `key` has `port` (written on the task). The server wins:
    /// a local holder of the same port loses it and is returned, so the caller can give it a
    /// new one. A different port `key` held before is released.
    pub fn claim(&mut self, key: &EndpointId, port: u16) -> Result<Option<EndpointId>, PortsError> {
        if !self.in_range(port) {
            return Err(PortsError::OutOfRange {
                port,
                start: self.start,
                end: self.end,
            });
        }
        if self.reserved.contains(&port) {
            return Err(PortsError::Reserved { port });
        }
        if self.by_owner.get(key) == Some(&port) {
            return Ok(None);
        }
        let displaced = self.by_port.remove(&port);
        if let Some(other) = &displaced {
            self.by_owner.remove(other);
        }
        if let Some(old) = self.by_owner.remove(key) {
            self.by_port.remove(&old);
            // The old port never carried traffic for anyone else; still let it rest.
            self.resting.insert(old, now_millis());
        }
        self.resting.remove(&port);
        self.by_owner.insert(key.clone(), port);
        self.by_port.insert(port, key.clone());
        self.dirty = true;
        Ok(displaced)
    }

    /// The port of `key`: the one it holds, else the next free port after the cursor that is
    /// neither assigned, reserved nor resting.
    pub fn allocate(&mut self, key: &EndpointId, now: Millis) -> Result<u16, PortsError> {
        if let Some(port) = self.by_owner.get(key) {
            return Ok(*port);
        }
        self.expire_rests(now);
        let size = u32::from(self.end) - u32::from(self.start) + 1;
        let mut candidate = if self.in_range(self.cursor) {
            self.cursor
        } else {
            self.start
        };
        for _ in 0..size {
            let free = !self.by_port.contains_key(&candidate)
                && !self.reserved.contains(&candidate)
                && !self.resting.contains_key(&candidate);
            let next = if candidate == self.end {
                self.start
            } else {
                candidate + 1
            };
            if free {
                self.by_port.insert(candidate, key.clone());
                self.by_owner.insert(key.clone(), candidate);
                self.cursor = next;
                self.dirty = true;
                return Ok(candidate);
            }
            candidate = next;
        }
        Err(PortsError::Exhausted {
            start: self.start,
            end: self.end,
            assigned: self.by_port.len(),
            resting: self.resting.len(),
        })
    }

    /// Gives `key`'s port back; it rests for the grace period.
    pub fn release(&mut self, key: &EndpointId, now: Millis) -> Option<u16> {
        let port = self.by_owner.remove(key)?;
        self.by_port.remove(&port);
        self.resting.insert(port, now);
        self.dirty = true;
        Some(port)
    }

    /// Releases every holder `keep` says is gone; returns the released ports.
    pub fn retain(&mut self, now: Millis, mut keep: impl FnMut(&EndpointId) -> bool) -> Vec<u16> {
        let gone: Vec<EndpointId> = self.by_owner.keys().filter(|k| !keep(k)).cloned().collect();
        gone.iter().filter_map(|k| self.release(k, now)).collect()
    }

    fn expire_rests(&mut self, now: Millis) {
        let grace = self.grace_ms;
        let before = self.resting.len();
        self.resting
            .retain(|_, since| now.saturating_sub(*since) < grace);
        if self.resting.len() != before {
            self.dirty = true;
        }
    }

    /// Every assignment, by port.
    pub fn assignments(&self) -> impl Iterator<Item = (u16, &EndpointId)> {
        self.by_port.iter().map(|(p, k)| (*p, k))
    }

    pub fn stats(&self) -> PortStats {
        PortStats {
            range_size: usize::from(self.end - self.start) + 1,
            assigned: self.by_port.len(),
            resting: self.resting.len(),
            reserved: self.reserved.iter().filter(|p| self.in_range(**p)).count(),
        }
    }

    /// Writes the state when it changed (temp file, fsync, rename: never a torn file).
    pub fn save(&mut self) -> Result<(), PortsError> {
        let Some(path) = self.path.clone() else {
            self.dirty = false;
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let state = Persisted {
            version: STATE_VERSION,
            cursor: self.cursor,
            assigned: self
                .by_port
                .iter()
                .map(|(port, k)| PersistedAssignment {
                    port: *port,
                    task_id: k.task_id.clone(),
                    endpoint: k.endpoint.clone(),
                })
                .collect(),
            resting: self
                .resting
                .iter()
                .map(|(port, since)| PersistedRest {
                    port: *port,
                    since_ms: *since,
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&state).map_err(|e| PortsError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &text).map_err(|source| PortsError::Write { path, source })?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> EndpointId {
        EndpointId::new(t, "")
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn allocates_each_endpoint_once_and_keeps_it() {
        let mut a = PortAllocator::in_memory(100, 102, GRACE);
        assert_eq!(a.allocate(&key("a"), 0).unwrap(), 100);
        assert_eq!(a.allocate(&key("b"), 0).unwrap(), 101);
        assert_eq!(a.allocate(&key("a"), 0).unwrap(), 100);
        assert_eq!(a.allocate(&EndpointId::new("a", "api"), 0).unwrap(), 102);
        assert_eq!(a.port_of(&key("b")), Some(101));
        assert_eq!(a.owner_of(100), Some(&key("a")));
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_range() {
        let mut a = PortAllocator::in_memory(100, 101, GRACE);
        a.allocate(&key("a"), 0).unwrap();
        a.allocate(&key("b"), 0).unwrap();
        let e = a.allocate(&key("c"), 0).unwrap_err();
        assert!(matches!(e, PortsError::Exhausted { assigned: 2, .. }));
        assert!(e.to_string().contains("100-101 is exhausted"), "{e}");
    }

    #[test]
    fn released_ports_rest_for_the_grace_period() {
        let mut a = PortAllocator::in_memory(100, 101, GRACE);
        a.allocate(&key("a"), 0).unwrap();
        a.allocate(&key("b"), 0).unwrap();
        assert_eq!(a.release(&key("a"), 1_000), Some(100));
        // Still resting: the range counts as exhausted.
        let e = a.allocate(&key("c"), 30_000).unwrap_err();
        assert!(matches!(e, PortsError::Exhausted { resting: 1, .. }), "{e}");
        // After the grace period the port is handed out again.
        assert_eq!(a.allocate(&key("c"), 61_000).unwrap(), 100);
    }

    #[test]
    fn next_fit_reuses_ports_as_late_as_possible() {
        let mut a = PortAllocator::in_memory(100, 103, Duration::ZERO);
        a.allocate(&key("a"), 0).unwrap();
        a.release(&key("a"), 0);
        // 100 is free (no grace) but the cursor moved on.
        assert_eq!(a.allocate(&key("b"), 0).unwrap(), 101);
        assert_eq!(a.allocate(&key("c"), 0).unwrap(), 102);
        assert_eq!(a.allocate(&key("d"), 0).unwrap(), 103);
        assert_eq!(a.allocate(&key("e"), 0).unwrap(), 100);
    }

    #[test]
    fn reserved_ports_are_never_handed_out() {
        let mut a = PortAllocator::in_memory(100, 102, GRACE);
        let x = a.allocate(&key("x"), 0).unwrap();
        a.set_reserved([x, 101]);
        assert_eq!(
            a.port_of(&key("x")),
            None,
            "assignment on a reserved port dropped"
        );
        assert_eq!(a.allocate(&key("y"), 0).unwrap(), 102);
        assert!(a.allocate(&key("z"), 0).is_err());
        assert!(matches!(
            a.claim(&key("z"), 101),
            Err(PortsError::Reserved { .. })
        ));
    }

    #[test]
    fn the_server_wins_on_conflict() {
        let mut a = PortAllocator::in_memory(100, 105, GRACE);
        assert_eq!(a.allocate(&key("local"), 0).unwrap(), 100);
        // The server says task "srv" has port 100: it takes it, "local" is displaced.
        assert_eq!(a.claim(&key("srv"), 100).unwrap(), Some(key("local")));
        assert_eq!(a.port_of(&key("srv")), Some(100));
        assert_eq!(a.port_of(&key("local")), None);
        assert_ne!(a.allocate(&key("local"), 0).unwrap(), 100);
        // Claiming the same again changes nothing.
        assert_eq!(a.claim(&key("srv"), 100).unwrap(), None);
        // A claim moves a holder to the server's port; the old one rests.
        let before = a.port_of(&key("local")).unwrap();
        assert_eq!(a.claim(&key("local"), 104).unwrap(), None);
        assert_eq!(a.port_of(&key("local")), Some(104));
        assert_eq!(a.owner_of(before), None);
        assert!(matches!(
            a.claim(&key("q"), 99),
            Err(PortsError::OutOfRange { port: 99, .. })
        ));
    }

    #[test]
    fn retain_releases_the_gone() {
        let mut a = PortAllocator::in_memory(100, 105, GRACE);
        for t in ["a", "b", "c"] {
            a.allocate(&key(t), 0).unwrap();
        }
        let released = a.retain(5, |k| k.task_id == "b");
        assert_eq!(released.len(), 2);
        assert_eq!(a.stats().assigned, 1);
        assert_eq!(a.stats().resting, 2);
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ports.json");
        let mut a = PortAllocator::open(100, 110, GRACE, &path).unwrap();
        assert_eq!(a.allocate(&key("a"), 0).unwrap(), 100);
        assert_eq!(a.allocate(&EndpointId::new("a", "ssh"), 0).unwrap(), 101);
        a.allocate(&key("b"), 0).unwrap();
        a.release(&key("b"), now_millis());
        a.save().unwrap();
        drop(a);

        let mut a = PortAllocator::open(100, 110, GRACE, &path).unwrap();
        assert_eq!(a.port_of(&key("a")), Some(100));
        assert_eq!(a.port_of(&EndpointId::new("a", "ssh")), Some(101));
        assert_eq!(a.stats().resting, 1, "the rest survives too");
        // The cursor survived: the next port is after the last handed out, 102 rests.
        assert_eq!(a.allocate(&key("c"), now_millis()).unwrap(), 103);

        // A narrower range drops what no longer fits.
        a.save().unwrap();
        let a = PortAllocator::open(101, 110, GRACE, &path).unwrap();
        assert_eq!(a.port_of(&key("a")), None);
        assert_eq!(a.port_of(&EndpointId::new("a", "ssh")), Some(101));
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ports.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let e = PortAllocator::open(100, 110, GRACE, &path).unwrap_err();
        assert!(matches!(e, PortsError::Corrupt { .. }));
        assert!(e.to_string().contains("ports.json"), "{e}");
    }

    #[test]
    fn full_range_of_65535_ports_is_walkable() {
        let mut a = PortAllocator::in_memory(1, 65535, Duration::ZERO);
        a.set_reserved([1, 65535]);
        assert_eq!(a.allocate(&key("a"), 0).unwrap(), 2);
        assert_eq!(a.claim(&key("b"), 65534).unwrap(), None);
        assert_eq!(a.stats().range_size, 65535);
    }
}
