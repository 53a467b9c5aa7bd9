//! The owners the engine drives (the TCP forwarder and the HTTP router): giving them the wanted
//! set, what each took of it, and whether what the TCP forwarder took can be served.

use super::serving::{Serving, Unserved};
use crate::routes::{ApplyReport, HttpRouter, RouteCounters, RouteRef, RouteSet, TcpForwarder};
use anyhow::{Result, anyhow};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Apply the whole set at least this often, even unchanged, so drift heals.
const REAPPLY_EVERY: Duration = Duration::from_secs(60);

/// One owner's answer to the last apply.
#[derive(Debug, Default)]
pub(super) struct OwnerHealth {
    /// Routes it did not program (`ApplyReport::failed`), with the reason.
    failed: HashMap<RouteRef, String>,
    /// Its error when the apply failed as a whole (the previous routes stay).
    error: Option<String>,
}

impl OwnerHealth {
    /// Records the answer of one apply (logging what changed); whether every route went in.
    fn record(&mut self, kind: &str, result: Result<ApplyReport>) -> bool {
        match result {
            Ok(report) => {
                if !report.is_noop() {
                    tracing::debug!(kind, ?report, "applied");
                }
                let now: HashMap<RouteRef, String> = report.failed.into_iter().collect();
                for (route, reason) in &now {
                    if self.failed.get(route) != Some(reason) {
                        tracing::warn!(kind, %route, reason = %reason, "route not programmed");
                    }
                }
                let clean = now.is_empty();
                self.failed = now;
                if self.error.take().is_some() {
                    tracing::info!(kind, "routes applied again");
                }
                clean
            }
            Err(e) => {
                let text = format!("{e:#}");
                if self.error.as_deref() != Some(text.as_str()) {
                    tracing::error!(kind, error = %text, "applying routes failed; the previous ones stay");
                }
                self.error = Some(text);
                false
            }
        }
    }

    /// The owner's error, when its last apply failed as a whole.
    pub(super) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Why `route` is not programmed (`None`: it is).
    pub(super) fn failure(&self, route: &RouteRef) -> Option<&str> {
        self.error
            .as_deref()
            .or_else(|| self.failed.get(route).map(String::as_str))
    }
}

/// The two owners, and what they were last given.
pub(super) struct Owners {
    tcp: Arc<Mutex<Box<dyn TcpForwarder>>>,
    http: Arc<Mutex<Box<dyn HttpRouter>>>,
    /// The set the owners were last given (`None` before the first apply).
    applied: Option<RouteSet>,
    /// Whether they took all of it.
    clean: bool,
    applied_at: Instant,
    tcp_health: OwnerHealth,
    http_health: OwnerHealth,
    serving: Serving,
}

impl Owners {
    pub(super) fn new(tcp: Box<dyn TcpForwarder>, http: Box<dyn HttpRouter>) -> Owners {
        Owners {
            tcp: Arc::new(Mutex::new(tcp)),
            http: Arc::new(Mutex::new(http)),
            applied: None,
            clean: false,
            applied_at: Instant::now(),
            tcp_health: OwnerHealth::default(),
            http_health: OwnerHealth::default(),
            serving: Serving::default(),
        }
    }

    /// Gives the owners `wanted` when it changed, after a failure, or once every
    /// [`REAPPLY_EVERY`] to heal drift.
    pub(super) async fn apply(&mut self, wanted: RouteSet) {
        let due = !self.clean
            || self.applied.as_ref() != Some(&wanted)
            || self.applied_at.elapsed() >= REAPPLY_EVERY;
        if !due {
            return;
        }
        let tcp = self.tcp.clone();
        let http = self.http.clone();
        let tcp_routes = wanted.tcp.clone();
        let http_routes = wanted.http.clone();
        // The owners may block (map updates, nginx -t and reload): off the async threads.
        let joined = tokio::task::spawn_blocking(move || {
            let t = tcp
                .lock()
                .map_err(|_| anyhow!("the TCP forwarder panicked earlier"))
                .and_then(|mut f| f.apply(&tcp_routes));
            let h = http
                .lock()
                .map_err(|_| anyhow!("the HTTP router panicked earlier"))
                .and_then(|mut r| r.apply(&http_routes));
            (t, h)
        })
        .await;
        let (t, h) = match joined {
            Ok(pair) => pair,
            Err(e) => (
                Err(anyhow!("applying routes panicked: {e}")),
                Err(anyhow!("applying routes panicked: {e}")),
            ),
        };
        let tcp_clean = self.tcp_health.record("tcp", t);
        let http_clean = self.http_health.record("http", h);
        self.clean = tcp_clean && http_clean;
        self.applied = Some(wanted);
        self.applied_at = Instant::now();
    }

    /// The TCP forwarder's live counters (none if it panicked earlier).
    pub(super) async fn read_counters(&self) -> BTreeMap<u16, RouteCounters> {
        let tcp = self.tcp.clone();
        let read = tokio::task::spawn_blocking(move || tcp.lock().map(|f| f.counters()).ok()).await;
        read.ok().flatten().unwrap_or_default()
    }

    /// Asks the TCP forwarder whether the routes it programmed can be served now (every
    /// cycle: an external nginx can stop while nothing changes); a forwarder that panicked
    /// earlier leaves the last answer.
    pub(super) async fn check_serving(&mut self) {
        let tcp = self.tcp.clone();
        let check = tokio::task::spawn_blocking(move || tcp.lock().map(|f| f.check_serving()).ok())
            .await
            .ok()
            .flatten();
        if let Some(check) = check {
            self.serving.record(check, Instant::now());
        }
    }

    /// Why `route` is not served now: its owner did not program it (settled at once), or the
    /// TCP forwarder cannot serve it (see [`Serving`]); `None` when it is served.
    pub(super) fn unserved(&self, route: &RouteRef) -> Option<Unserved<'_>> {
        let health = match route {
            RouteRef::Tcp(_) => &self.tcp_health,
            RouteRef::Http(_) => &self.http_health,
        };
        if let Some(reason) = health.failure(route) {
            return Some(Unserved {
                reason,
                settled: true,
            });
        }
        match route {
            RouteRef::Tcp(port) => self.serving.unserved(*port, Instant::now()),
            RouteRef::Http(_) => None,
        }
    }

    /// What the TCP forwarder said it can serve.
    pub(super) fn serving(&self) -> &Serving {
        &self.serving
    }

    /// Sets how long a route may wait to be served before its task is told (tests).
    #[cfg(test)]
    pub(super) fn set_serve_grace(&mut self, grace: Duration) {
        self.serving.set_grace(grace);
    }

    /// The set last given to the owners (`None` before the first apply).
    pub(super) fn applied(&self) -> Option<&RouteSet> {
        self.applied.as_ref()
    }

    pub(super) fn tcp(&self) -> &OwnerHealth {
        &self.tcp_health
    }

    pub(super) fn http(&self) -> &OwnerHealth {
        &self.http_health
    }
}
