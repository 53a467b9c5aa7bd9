//! The ClearML source of the cycle: the client and its login, listing the tasks that asked for
//! endpoints, planning the wanted routes from them (through the mass-removal guard), and the
//! last good ClearML route set.

use super::guard::{GuardVerdict, MassRemovalGuard, route_owners};
use crate::clearml::{ApiError, Client};
use crate::config::Config;
use crate::ports::{PortAllocator, PortStats};
use crate::reconcile::{Plan, Reconciler, Settings};
use crate::routes::{RouteOwner, RouteSet};
use crate::time::now_millis;
use crate::validate::UpstreamPolicy;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::sync::Arc;

/// Log routes one by one up to this many changes per cycle; a summary above.
const LOG_EACH_UP_TO: usize = 50;

/// What one ClearML sync produced.
pub(super) enum Synced {
    Plan(Plan),
    /// The mass-removal guard held the answer.
    Held {
        gone: usize,
        routed: usize,
    },
}

/// The ClearML side of the engine.
pub(super) struct ClearmlSync {
    /// `None`: ClearML is not configured.
    client: Option<Arc<Client>>,
    listen_queues: Vec<String>,
    /// Logged in, queues resolved.
    connected: bool,
    /// The planning settings (with the resolved queue ids).
    settings: Settings,
    reconciler: Reconciler,
    guard: MassRemovalGuard,
    /// The last good ClearML route set (seeded from local state at start).
    routes: RouteSet,
    /// Whether an answer was believed since the start.
    synced: bool,
}

impl ClearmlSync {
    /// The source for `cfg`, with the port allocator and the routes of the previous run.
    pub(super) fn new(cfg: &Config, ports: PortAllocator, routes: RouteSet) -> Result<ClearmlSync> {
        let client = match &cfg.clearml.api_host {
            Some(_) => Some(Arc::new(
                Client::new(&cfg.clearml).context("setting up the ClearML client")?,
            )),
            None => None,
        };
        Ok(ClearmlSync {
            client,
            listen_queues: cfg.clearml.listen_queues.clone(),
            connected: false,
            settings: Settings::from_config(cfg),
            reconciler: Reconciler::new(ports),
            guard: MassRemovalGuard::default(),
            routes,
            synced: false,
        })
    }

    pub(super) fn client(&self) -> Option<&Arc<Client>> {
        self.client.as_ref()
    }

    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn guard(&self) -> &MassRemovalGuard {
        &self.guard
    }

    /// The last good ClearML route set.
    pub(super) fn routes(&self) -> &RouteSet {
        &self.routes
    }

    /// Whether an answer was believed since the start.
    pub(super) fn has_synced(&self) -> bool {
        self.synced
    }

    pub(super) fn port_stats(&self) -> PortStats {
        self.reconciler.ports.stats()
    }

    /// What `ROUTER_STATE_DIR` keeps of it: the port allocator and, once an answer was believed,
    /// the route set.
    pub(super) fn state_mut(&mut self) -> (&mut PortAllocator, Option<&RouteSet>) {
        (
            &mut self.reconciler.ports,
            self.synced.then_some(&self.routes),
        )
    }

    /// Logs in and resolves the queues, unless done already (or ClearML is off).
    pub(super) async fn connect(&mut self) -> Result<(), ApiError> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        if self.connected {
            return Ok(());
        }
        client.login().await?;
        let ids = client.queue_ids(&self.listen_queues).await?;
        if !self.listen_queues.is_empty() {
            tracing::info!(
                queues = %self.listen_queues.join(","),
                ids = %ids.join(","),
                "listening to queues"
            );
        }
        self.settings.queue_ids = ids;
        // The names too: where the open-source Kubernetes glue moved a task to its own queue,
        // the user's queue survives only by name (`clearml::task::K8S_QUEUE_PROPERTY`).
        self.settings.queue_names = self.listen_queues.clone();
        self.connected = true;
        Ok(())
    }

    /// A call failed with `e`: refused credentials or an unknown queue make the next attempt
    /// log in and resolve the queues again.
    pub(super) fn note_error(&mut self, e: &ApiError) {
        if matches!(
            e,
            ApiError::Unauthorized { .. } | ApiError::UnknownQueue { .. }
        ) {
            self.connected = false;
        }
    }

    /// Lists the tasks and plans their routes (`statics`: the routes file's, never planned for
    /// tasks). A plan the mass-removal guard does not believe leaves everything as it was.
    pub(super) async fn sync(
        &mut self,
        statics: &RouteSet,
        policy: &UpstreamPolicy,
    ) -> Result<Synced, ApiError> {
        self.connect().await?;
        let client = self.client.clone().ok_or_else(|| ApiError::Malformed {
            call: "sync".into(),
            reason: "no client".into(),
        })?;
        let (mut tasks, skipped) = client
            .tasks_requesting_endpoints(&self.settings.queue_ids, &self.settings.queue_names)
            .await?;
        if skipped > 0 {
            tracing::debug!(skipped, "task entries without an id skipped");
        }
        // A task that had a route but is missing from the listing is looked up by id before
        // its route goes: paging over a changing list can skip an entry.
        let listed: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let routed = route_owners(&self.routes);
        let mut missing: Vec<String> = routed
            .iter()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        missing.sort();
        if !missing.is_empty() {
            let found = client.tasks_by_id(&missing).await?;
            tasks.extend(
                found.into_iter().filter(|t| {
                    t.wants_routes(&self.settings.queue_ids, &self.settings.queue_names)
                }),
            );
        }
        // Planning moves ports (releases, new claims): keep the allocator as it was in case the
        // guard does not believe this answer.
        let ports_before = self.reconciler.ports.clone();
        let plan = self.reconciler.plan(
            &tasks,
            statics,
            &self.routes,
            &self.settings,
            policy,
            now_millis(),
        );
        let kept = route_owners(&plan.routes);
        let kept: HashSet<&str> = kept.iter().map(String::as_str).collect();
        if let GuardVerdict::Hold { gone, routed } = self.guard.check(&routed, &kept) {
            self.reconciler.ports = ports_before;
            return Ok(Synced::Held { gone, routed });
        }
        Ok(Synced::Plan(plan))
    }

    /// Takes the routes of a believed plan as the ClearML set in force (logging the changes).
    pub(super) fn adopt(&mut self, routes: RouteSet) {
        log_route_changes(&self.routes, &routes);
        self.routes = routes;
        self.synced = true;
    }
}

/// Logs how the ClearML routes change from `old` to `new`.
fn log_route_changes(old: &RouteSet, new: &RouteSet) {
    let mut lines = Vec::new();
    for (port, r) in &new.tcp {
        match old.tcp.get(port) {
            None => lines.push(format!(
                "+ tcp {port} -> {} ({})",
                r.upstream,
                owner_text(&r.owner)
            )),
            Some(o) if o != r => lines.push(format!(
                "~ tcp {port} -> {} ({})",
                r.upstream,
                owner_text(&r.owner)
            )),
            _ => {}
        }
    }
    for (port, r) in &old.tcp {
        if !new.tcp.contains_key(port) {
            lines.push(format!("- tcp {port} ({})", owner_text(&r.owner)));
        }
    }
    for (key, r) in &new.http {
        match old.http.get(key) {
            None => lines.push(format!("+ http {key} -> {}", r.upstream)),
            Some(o) if o != r => lines.push(format!("~ http {key} -> {}", r.upstream)),
            _ => {}
        }
    }
    for key in old.http.keys() {
        if !new.http.contains_key(key) {
            lines.push(format!("- http {key}"));
        }
    }
    if lines.len() <= LOG_EACH_UP_TO {
        for l in lines {
            tracing::info!(change = %l, "route");
        }
    } else {
        tracing::info!(
            changes = lines.len(),
            tcp = new.tcp.len(),
            http = new.http.len(),
            "routes changed"
        );
    }
}

fn owner_text(o: &RouteOwner) -> String {
    format!("{} {:?}", o.id, o.task_name)
}
