//! Whether the TCP routes the forwarder programmed can be served now (its own check, once per
//! cycle, [`crate::routes::TcpForwarder::check_serving`]) and since when a route could not.
//! A route not served is not ready and its endpoint is not written back. One unserved for
//! less than [`SERVE_GRACE`] is only waiting (an external nginx still reloading: the reload
//! command returns before nginx listens); after that the reason is written on its task.

use crate::routes::ServeCheck;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a route may wait to be served before its task is told why it is not.
pub(super) const SERVE_GRACE: Duration = Duration::from_secs(5);

/// Ports named in a readiness reason before the rest are counted.
const NAMED_PORTS: usize = 3;

/// Why a route is not served, and whether that is settled (past the grace: to be written on
/// the task) or may still pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Unserved<'a> {
    pub reason: &'a str,
    pub settled: bool,
}

/// The forwarder's last answer and since when each problem has held.
#[derive(Debug)]
pub(super) struct Serving {
    check: ServeCheck,
    all_since: Option<Instant>,
    since: BTreeMap<u16, Instant>,
    /// [`SERVE_GRACE`], shorter in tests.
    grace: Duration,
}

impl Default for Serving {
    fn default() -> Serving {
        Serving {
            check: ServeCheck::default(),
            all_since: None,
            since: BTreeMap::new(),
            grace: SERVE_GRACE,
        }
    }
}

impl Serving {
    /// Sets how long a route may wait to be served (tests).
    #[cfg(test)]
    pub(super) fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Records the forwarder's answer (logging what changed).
    pub(super) fn record(&mut self, check: ServeCheck, now: Instant) {
        match (&self.check.all, &check.all) {
            (old, Some(why)) if old.as_deref() != Some(why.as_str()) => {
                tracing::warn!(reason = %why, "the TCP datapath cannot serve its routes")
            }
            (Some(_), None) => tracing::info!("the TCP datapath serves its routes again"),
            _ => {}
        }
        for (port, why) in &check.ports {
            if self.check.ports.get(port) != Some(why) {
                tracing::warn!(port, reason = %why, "TCP route not served");
            }
        }
        for port in self.check.ports.keys() {
            if !check.ports.contains_key(port) {
                tracing::info!(port, "TCP route served");
            }
        }
        self.all_since = check.all.as_ref().map(|_| self.all_since.unwrap_or(now));
        let before = std::mem::take(&mut self.since);
        self.since = check
            .ports
            .keys()
            .map(|port| (*port, before.get(port).copied().unwrap_or(now)))
            .collect();
        self.check = check;
    }

    /// Why the route on `port` is not served now (`None`: it is, as far as the forwarder can
    /// tell).
    pub(super) fn unserved(&self, port: u16, now: Instant) -> Option<Unserved<'_>> {
        let reason = self.check.problem(port)?;
        let since = match &self.check.all {
            Some(_) => self.all_since,
            None => self.since.get(&port).copied(),
        };
        let settled = since.is_none_or(|t| now.saturating_duration_since(t) >= self.grace);
        Some(Unserved { reason, settled })
    }

    /// Why the daemon is not ready because of what the forwarder cannot serve, if so.
    pub(super) fn not_ready(&self) -> Option<String> {
        if let Some(all) = &self.check.all {
            return Some(format!("the TCP datapath cannot serve its routes: {all}"));
        }
        if self.check.ports.is_empty() {
            return None;
        }
        let mut named: Vec<String> = self
            .check
            .ports
            .iter()
            .take(NAMED_PORTS)
            .map(|(port, why)| format!("port {port}: {why}"))
            .collect();
        let rest = self.check.ports.len().saturating_sub(NAMED_PORTS);
        if rest > 0 {
            named.push(format!("and {rest} more"));
        }
        Some(format!(
            "the TCP datapath does not serve {} routes: {}",
            self.check.ports.len(),
            named.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(all: Option<&str>, ports: &[(u16, &str)]) -> ServeCheck {
        ServeCheck {
            all: all.map(str::to_string),
            ports: ports.iter().map(|(p, w)| (*p, w.to_string())).collect(),
        }
    }

    #[test]
    fn a_route_waits_the_grace_before_its_problem_is_settled() {
        let t0 = Instant::now();
        let mut s = Serving::default();
        s.record(check(None, &[(30001, "nothing listens")]), t0);
        let u = s.unserved(30001, t0).expect("unserved");
        assert_eq!((u.reason, u.settled), ("nothing listens", false));
        assert_eq!(s.unserved(30002, t0), None);
        // Still unserved a cycle later: the clock runs from the first sighting.
        let later = t0 + SERVE_GRACE;
        s.record(check(None, &[(30001, "nothing listens")]), later);
        assert!(s.unserved(30001, later).expect("unserved").settled);
        let not_ready = s.not_ready().expect("not ready");
        assert!(
            not_ready.contains("port 30001: nothing listens"),
            "{not_ready}"
        );
        // Served: ready again; unserved again later starts a new grace.
        s.record(ServeCheck::default(), later);
        assert_eq!((s.unserved(30001, later), s.not_ready()), (None, None));
        s.record(check(None, &[(30001, "again")]), later);
        assert!(!s.unserved(30001, later).expect("unserved").settled);
    }

    #[test]
    fn the_whole_forwarder_failing_fails_every_route() {
        let t0 = Instant::now();
        let mut s = Serving::default();
        s.record(check(Some("interface v0 is gone"), &[]), t0);
        let u = s.unserved(31000, t0 + SERVE_GRACE).expect("unserved");
        assert_eq!((u.reason, u.settled), ("interface v0 is gone", true));
        assert!(s.not_ready().expect("not ready").contains("v0 is gone"));
        let ports: Vec<(u16, &str)> = (1..=5).map(|p| (p, "x")).collect();
        s.record(check(None, &ports), t0);
        let why = s.not_ready().expect("not ready");
        assert!(
            why.contains("5 routes") && why.contains("and 2 more"),
            "{why}"
        );
    }
}
