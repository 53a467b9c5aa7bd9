//! Route owners that record what the control plane asks of them, for tests and benchmarks of
//! the sync engine without a kernel datapath or nginx. Clones share their state, so a test keeps
//! one clone to look at while the engine owns the other.

use router_userspace::routes::{
    ApplyReport, HttpRoute, HttpRouter, RouteCounters, RouteRef, TcpForwarder, TcpRoute,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A [`TcpForwarder`] that keeps the last applied set; `refuse` makes it report every route as
/// failed (a datapath that cannot program anything).
#[derive(Clone, Default)]
pub struct RecordingForwarder {
    programmed: Arc<Mutex<BTreeMap<u16, TcpRoute>>>,
    applies: Arc<Mutex<usize>>,
    refuse: Arc<Mutex<Option<String>>>,
}

impl RecordingForwarder {
    /// The routes programmed now.
    pub fn programmed(&self) -> BTreeMap<u16, TcpRoute> {
        lock(&self.programmed).clone()
    }

    /// How many times `apply` ran.
    pub fn applies(&self) -> usize {
        *lock(&self.applies)
    }

    pub fn refuse(&self, reason: Option<&str>) {
        *lock(&self.refuse) = reason.map(str::to_string);
    }
}

impl TcpForwarder for RecordingForwarder {
    fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> anyhow::Result<ApplyReport> {
        *lock(&self.applies) += 1;
        if let Some(reason) = lock(&self.refuse).clone() {
            return Ok(ApplyReport {
                failed: wanted
                    .keys()
                    .map(|p| (RouteRef::Tcp(*p), reason.clone()))
                    .collect(),
                ..ApplyReport::default()
            });
        }
        let mut programmed = lock(&self.programmed);
        let mut report = ApplyReport::default();
        for (port, route) in wanted {
            match programmed.get(port) {
                None => report.added += 1,
                Some(old) if old != route => report.changed += 1,
                Some(_) => {}
            }
        }
        report.removed = programmed
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .count();
        *programmed = wanted.clone();
        Ok(report)
    }

    fn counters(&self) -> BTreeMap<u16, RouteCounters> {
        BTreeMap::new()
    }
}

/// An [`HttpRouter`] that keeps the last applied set.
#[derive(Clone, Default)]
pub struct RecordingRouter {
    programmed: Arc<Mutex<BTreeMap<String, HttpRoute>>>,
}

impl RecordingRouter {
    pub fn programmed(&self) -> BTreeMap<String, HttpRoute> {
        lock(&self.programmed).clone()
    }
}

impl HttpRouter for RecordingRouter {
    fn apply(&mut self, wanted: &BTreeMap<String, HttpRoute>) -> anyhow::Result<ApplyReport> {
        let mut programmed = lock(&self.programmed);
        let report = ApplyReport {
            added: wanted
                .keys()
                .filter(|k| !programmed.contains_key(*k))
                .count(),
            removed: programmed
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .count(),
            ..ApplyReport::default()
        };
        *programmed = wanted.clone();
        Ok(report)
    }
}
