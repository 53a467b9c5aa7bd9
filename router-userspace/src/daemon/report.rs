//! What the daemon reports about itself: the ClearML sync's health, readiness, and the
//! [`Status`] that `/status`, `/readyz`, `/healthz`, `/metrics` and `task-router status` read.
//! The engine tells the [`Report`] what happened and asks it to publish; nothing else writes the
//! status after start.

use super::apply::Owners;
use super::guard::MassRemovalGuard;
use super::write_back::WriteBacks;
use crate::admin::{self, ClearmlStatus, RouteStatus, SharedStatus, Status};
use crate::backoff::MAX_BACKOFF;
use crate::clearml::{ApiError, Client};
use crate::config::Config;
use crate::endpoint::EndpointId;
use crate::ports::PortStats;
use crate::reconcile::{self, Kind, Refusal, Settings};
use crate::routes::{ClientIpChoice, RouteCounters, RouteRef, RouteSet};
use crate::routes_file::RoutesFile;
use crate::time::now_millis;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A fresh status for `cfg`.
pub fn new_status(cfg: &Config) -> SharedStatus {
    Arc::new(RwLock::new(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        router_name: cfg.router.name.clone(),
        pid: std::process::id(),
        started_at_ms: now_millis(),
        ready_reason: "starting".into(),
        heartbeat_limit_ms: (cfg.clearml.poll_interval.max(MAX_BACKOFF) * 4
            + cfg.clearml.request_timeout * 8)
            .as_millis() as u64,
        clearml: ClearmlStatus {
            enabled: cfg.clearml_enabled(),
            state: if cfg.clearml_enabled() {
                "connecting"
            } else {
                "disabled"
            }
            .into(),
            since_ms: now_millis(),
            ..ClearmlStatus::default()
        },
        ..Status::default()
    }))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ApiState {
    Connecting,
    Ok,
    Error { class: String },
}

/// The sync's health and everything shown about it that the engine does not need to run.
pub(super) struct Report {
    status: SharedStatus,
    api_state: ApiState,
    api_error: Option<String>,
    /// Since when `api_state` holds.
    api_since: u64,
    failures_in_row: u32,
    /// Tasks asking for routes, and endpoints claimed by other routers, in the last plan.
    tasks: usize,
    foreign: usize,
    cycles: u64,
    failed_cycles: u64,
    last_sync_ms: Option<u64>,
    last_sync_duration: Duration,
    /// The requests the last plan refused, and the reasons already logged.
    refused: Vec<Refusal>,
    logged_refusals: HashMap<(EndpointId, String), String>,
    counters: BTreeMap<u16, RouteCounters>,
    client_ip: BTreeMap<u16, ClientIpChoice>,
    /// The last failure to save the state files (`None` once a save succeeds).
    state_error: Option<String>,
    was_ready: bool,
}

/// What the report reads, when it publishes, from the state the engine runs on.
pub(super) struct Facts<'a> {
    pub owners: &'a Owners,
    pub writes: &'a WriteBacks,
    pub guard: &'a MassRemovalGuard,
    pub settings: &'a Settings,
    pub client: Option<&'a Client>,
    /// Whether a ClearML answer was believed since the start.
    pub clearml_synced: bool,
    pub routes_file: Option<&'a RoutesFile>,
    pub ports: PortStats,
}

impl Report {
    pub(super) fn new(status: SharedStatus) -> Report {
        Report {
            status,
            api_state: ApiState::Connecting,
            api_error: None,
            api_since: now_millis(),
            failures_in_row: 0,
            tasks: 0,
            foreign: 0,
            cycles: 0,
            failed_cycles: 0,
            last_sync_ms: None,
            last_sync_duration: Duration::ZERO,
            refused: Vec::new(),
            logged_refusals: HashMap::new(),
            counters: BTreeMap::new(),
            client_ip: BTreeMap::new(),
            state_error: None,
            was_ready: false,
        }
    }

    /// API failures since the last success (the loop's back-off).
    pub(super) fn failures_in_row(&self) -> u32 {
        self.failures_in_row
    }

    pub(super) fn cycle_started(&mut self) {
        self.cycles += 1;
    }

    /// The cycle's ClearML sync failed.
    pub(super) fn cycle_failed(&mut self) {
        self.failed_cycles += 1;
    }

    pub(super) fn cycle_took(&mut self, took: Duration) {
        self.last_sync_duration = took;
    }

    /// ClearML answered (logs a recovery).
    pub(super) fn api_ok(&mut self) {
        if self.api_state != ApiState::Ok {
            if matches!(self.api_state, ApiState::Error { .. }) {
                tracing::info!("ClearML API reachable again");
            } else {
                tracing::info!("ClearML API connected");
            }
            self.api_state = ApiState::Ok;
            self.api_since = now_millis();
        }
        self.api_error = None;
        self.failures_in_row = 0;
    }

    /// A ClearML call failed (logs a change of the failure's class).
    pub(super) fn api_failed(&mut self, e: &ApiError) {
        let state = ApiState::Error { class: e.class() };
        let text = crate::error::error_chain(e);
        if self.api_state != state {
            tracing::warn!(error = %text, "ClearML API unavailable; routes stay as they are, retrying with back-off");
            self.api_state = state;
            self.api_since = now_millis();
        }
        self.api_error = Some(text);
        self.failures_in_row = self.failures_in_row.saturating_add(1);
    }

    /// An answer the mass-removal guard held: a sync all the same.
    pub(super) fn sync_held(&mut self) {
        self.last_sync_ms = Some(now_millis());
    }

    /// A plan made from a believed answer; its refusals are logged when new.
    pub(super) fn synced(&mut self, tasks: usize, foreign: usize, refused: Vec<Refusal>) {
        self.tasks = tasks;
        self.foreign = foreign;
        self.log_refusals(&refused);
        self.refused = refused;
        self.last_sync_ms = Some(now_millis());
    }

    fn log_refusals(&mut self, refused: &[Refusal]) {
        let mut now = HashMap::new();
        for r in refused {
            let key = (r.owner.id.clone(), r.kind.clone());
            if self.logged_refusals.get(&key) != Some(&r.reason) {
                tracing::warn!(task = %r.owner.id.task_id, endpoint = %r.owner.id.endpoint, kind = %r.kind,
                    name = ?r.owner.task_name, reason = %r.reason, "endpoint request refused");
            }
            now.insert(key, r.reason.clone());
        }
        self.logged_refusals = now;
    }

    pub(super) fn set_counters(&mut self, counters: BTreeMap<u16, RouteCounters>) {
        self.counters = counters;
    }

    pub(super) fn set_client_ip(&mut self, client_ip: BTreeMap<u16, ClientIpChoice>) {
        self.client_ip = client_ip;
    }

    /// How the last save of the state files went (`error`: what failed); logs a change.
    pub(super) fn state_saved(&mut self, error: Option<String>) {
        match (&self.state_error, &error) {
            (None, Some(e)) => {
                tracing::warn!(error = %e, "state not saved; forwarding continues, retrying every cycle")
            }
            (Some(_), None) => tracing::info!("state saved again"),
            _ => {}
        }
        self.state_error = error;
    }

    /// The readiness and its reason.
    fn readiness(&self, facts: &Facts) -> (bool, String) {
        if let Some(e) = facts.owners.tcp().error() {
            return (false, format!("the TCP datapath failed: {e}"));
        }
        if facts.client.is_some() && !facts.clearml_synced {
            return (
                false,
                match &self.api_error {
                    Some(e) => format!("waiting for the first ClearML sync: {e}"),
                    None => "waiting for the first ClearML sync".into(),
                },
            );
        }
        if facts.owners.applied().is_none() {
            return (false, "routes not applied yet".into());
        }
        // Ready means forwarding: a route the forwarder cannot serve is not ready.
        if let Some(why) = facts.owners.serving().not_ready() {
            return (false, why);
        }
        (true, String::new())
    }

    /// What is wrong while forwarding continues (shown by `/readyz` and `status`).
    fn degraded(&self, facts: &Facts) -> Vec<String> {
        let mut out = Vec::new();
        if facts.clearml_synced
            && let (ApiState::Error { .. }, Some(e)) = (&self.api_state, &self.api_error)
        {
            let since = now_millis().saturating_sub(self.api_since) / 1000;
            out.push(format!(
                "ClearML API failing for {since} s (routes of the last good sync stay in force): {e}"
            ));
        }
        let held = facts.guard.held();
        if held > 0 {
            out.push(format!(
                "ClearML's last answer drops {held} routed tasks at once; their routes stay until \
                 the next answer agrees"
            ));
        }
        if let Some(e) = &self.state_error {
            out.push(format!("state not saved: {e}"));
        }
        if let Some(e) = facts.owners.http().error() {
            out.push(format!("the HTTP router failed: {e}"));
        }
        out
    }

    /// One row per route given to the owners, with its state and counters.
    fn route_rows(&self, facts: &Facts) -> Vec<RouteStatus> {
        let empty = RouteSet::default();
        let wanted = facts.owners.applied().unwrap_or(&empty);
        let mut out = Vec::with_capacity(wanted.tcp.len() + wanted.http.len());
        let state = |failure: Option<&str>, route: RouteRef, key: (EndpointId, Kind)| {
            if let Some(reason) = failure {
                return format!("failed: {reason}");
            }
            match facts.owners.unserved(&route) {
                Some(u) if u.settled => format!("not served: {}", u.reason),
                Some(u) => format!("waiting to be served: {}", u.reason),
                None => facts.writes.state(&key).unwrap_or("active").to_string(),
            }
        };
        for (port, r) in &wanted.tcp {
            let key = r.owner.id.clone();
            out.push(RouteStatus {
                owner: r.owner.clone(),
                kind: "tcp".into(),
                router: port.to_string(),
                upstream: r.upstream.to_string(),
                state: state(
                    facts.owners.tcp().failure(&RouteRef::Tcp(*port)),
                    RouteRef::Tcp(*port),
                    (key, Kind::Tcp),
                ),
                connections: self.counters.get(port).map(|c| c.connections),
                bytes: self.counters.get(port).map(|c| c.bytes),
                client_ip: self.client_ip.get(port).cloned(),
                client_allow: Some(r.allow.to_string()),
            });
        }
        for (k, r) in &wanted.http {
            let key = r.owner.id.clone();
            let url = if r.owner.id.task_id.starts_with("file:") {
                reconcile::endpoint_url(facts.settings, &EndpointId::new(k.clone(), ""), r.mode)
            } else {
                reconcile::endpoint_url(facts.settings, &key, r.mode)
            };
            out.push(RouteStatus {
                owner: r.owner.clone(),
                kind: "http".into(),
                router: url,
                upstream: r.upstream.to_string(),
                state: state(
                    facts.owners.http().failure(&RouteRef::Http(k.clone())),
                    RouteRef::Http(k.clone()),
                    (key, Kind::Http),
                ),
                connections: None,
                bytes: None,
                client_ip: None,
                client_allow: None,
            });
        }
        out
    }

    /// Writes the status (and logs the first time the daemon is ready).
    pub(super) fn publish(&mut self, facts: &Facts) {
        let (ready, reason) = self.readiness(facts);
        if ready && !self.was_ready {
            let applied = facts.owners.applied();
            tracing::info!(
                tcp = applied.map(|s| s.tcp.len()).unwrap_or(0),
                http = applied.map(|s| s.http.len()).unwrap_or(0),
                "ready"
            );
        }
        self.was_ready |= ready;
        let routes = self.route_rows(facts);
        let mut degraded = self.degraded(facts);
        let Ok(mut s) = self.status.write() else {
            return;
        };
        // The datapath's own (from the start-up check), after the sync's.
        degraded.extend(
            s.datapath
                .degraded
                .iter()
                .map(|d| format!("the datapath on {} is degraded: {}", d.interface, d.detail)),
        );
        s.ready = ready;
        s.ready_reason = reason;
        s.degraded = degraded;
        s.heartbeat_ms = now_millis();
        self.update_clearml(&mut s.clearml, facts);
        s.routes_file = facts.routes_file.map(|f| admin::RoutesFileStatus {
            path: f.path().display().to_string(),
            routes: f.routes().tcp.len() + f.routes().http.len(),
            error: f.error.clone(),
        });
        s.ports = facts.ports;
        s.routes = routes;
        s.refused = self.refused.clone();
        s.tcp_error = facts.owners.tcp().error().map(str::to_string);
        s.http_error = facts.owners.http().error().map(str::to_string);
        s.state_error = self.state_error.clone();
    }

    /// Updates the `clearml` section of the status (`enabled` stays as [`new_status`] set it,
    /// the API counters as they were when there is no client).
    fn update_clearml(&self, c: &mut ClearmlStatus, facts: &Facts) {
        c.state = match (facts.client, &self.api_state) {
            (None, _) => "disabled",
            (_, ApiState::Connecting) => "connecting",
            (_, ApiState::Ok) => "ok",
            (_, ApiState::Error { .. }) => "error",
        }
        .into();
        c.error = self.api_error.clone();
        c.since_ms = self.api_since;
        c.last_sync_ms = self.last_sync_ms;
        c.last_sync_duration_ms = self.last_sync_duration.as_millis() as u64;
        c.tasks = self.tasks;
        c.foreign = self.foreign;
        c.cycles = self.cycles;
        c.failed_cycles = self.failed_cycles;
        c.held_removals = facts.guard.held();
        c.held_cycles = facts.guard.held_cycles();
        if let Some(client) = facts.client {
            c.api_calls = client.stats.calls.load(Ordering::Relaxed);
            c.api_failures = client.stats.failures.load(Ordering::Relaxed);
            c.concurrent_writes = client.stats.concurrent_writes.load(Ordering::Relaxed);
            c.api_latency = client.stats.latency();
        }
    }
}
