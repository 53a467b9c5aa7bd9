//! The engine: the loop and its cycle (sources → plan → apply → serve check → status →
//! write-back → persist → status), holding only what it needs to run; what it reports lives in
//! the [`Report`].

#[cfg(test)]
mod tests;

use super::apply::Owners;
use super::report::{Facts, Report};
use super::state;
use super::sync::{ClearmlSync, Synced};
use super::write_back::WriteBacks;
use crate::admin::SharedStatus;
use crate::backoff::backoff;
use crate::clearml::ApiError;
use crate::config::Config;
use crate::reconcile::WriteBack;
use crate::routes::{HttpRouter, RouteSet, TcpForwarder};
use crate::routes_file::RoutesFile;
use crate::validate::{self, UpstreamPolicy};
use anyhow::{Context, Result, anyhow};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

/// One sync cycle's outcome, for the loop's pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CycleOutcome {
    /// Everything went through (write-back failures aside).
    Synced,
    /// The ClearML API failed: back off.
    ApiFailed,
}

/// The sync engine: the sources (the routes file, ClearML), the owners it applies their routes
/// to, the write-backs, the state files and the report.
pub struct Engine {
    cfg: Config,
    /// Which upstreams routes may point at (the router's own addresses refreshed every cycle).
    policy: UpstreamPolicy,
    routes_file: Option<RoutesFile>,
    clearml: ClearmlSync,
    owners: Owners,
    writes: WriteBacks,
    /// Where the ClearML route set is saved.
    routes_path: Option<PathBuf>,
    report: Report,
}

impl Engine {
    /// Opens the routes file and the state of the previous run; `status` is what the engine
    /// publishes into.
    pub fn new(
        cfg: Config,
        tcp: Box<dyn TcpForwarder>,
        http: Box<dyn HttpRouter>,
        status: SharedStatus,
    ) -> Result<Engine> {
        let mut policy = UpstreamPolicy::new(cfg.tcp.allowed_upstreams.clone(), []);
        policy.set_own(own_addresses(&cfg));
        let routes_file = match &cfg.routes_file {
            Some(path) => Some(
                RoutesFile::load(path, &policy, cfg.routes_file_rules())
                    .map_err(|e| anyhow!(crate::error::error_chain(&e)))?,
            ),
            None => None,
        };
        let restored = state::restore(&cfg, &policy)?;
        let clearml = ClearmlSync::new(&cfg, restored.ports, restored.routes)?;
        Ok(Engine {
            policy,
            routes_file,
            clearml,
            owners: Owners::new(tcp, http),
            writes: WriteBacks::default(),
            routes_path: restored.routes_path,
            report: Report::new(status),
            cfg,
        })
    }

    /// The first login and queue resolution. Answers that will not change by themselves (bad
    /// credentials, an unknown queue) fail the start; an unreachable server does not (the
    /// routes of the previous run keep forwarding while the loop retries).
    pub async fn connect_at_start(&mut self) -> Result<()> {
        match self.clearml.connect().await {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => {
                self.note_api_error(&e);
                Ok(())
            }
            Err(e) => Err(anyhow!(crate::error::error_chain(&e)))
                .context("connecting to the ClearML API server"),
        }
    }

    /// The loop: a cycle now, then every poll interval (backing off while the API fails),
    /// until `stop` turns true.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        loop {
            let outcome = self.cycle().await;
            let delay = match outcome {
                CycleOutcome::Synced => self.cfg.clearml.poll_interval,
                CycleOutcome::ApiFailed => backoff(
                    self.cfg.clearml.poll_interval,
                    self.report.failures_in_row(),
                ),
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.save_state();
        tracing::info!("sync loop stopped; routes stay as programmed");
        Ok(())
    }

    /// One cycle: sources → plan → apply → serve check → status → write-back → persist →
    /// status.
    pub async fn cycle(&mut self) -> CycleOutcome {
        let started = Instant::now();
        self.report.cycle_started();
        self.policy.set_own(own_addresses(&self.cfg));
        self.reload_routes_file();
        let mut outcome = CycleOutcome::Synced;
        let mut writes = None;
        if self.clearml.client().is_some() {
            let statics = self
                .routes_file
                .as_ref()
                .map(|f| f.routes().clone())
                .unwrap_or_default();
            match self.clearml.sync(&statics, &self.policy).await {
                Ok(Synced::Held { gone, routed }) => {
                    self.report.api_ok();
                    tracing::warn!(
                        gone,
                        routed,
                        held_cycles = self.clearml.guard().held_cycles(),
                        "ClearML's answer drops the routes of {gone} of {routed} routed tasks at \
                         once; keeping them until the next answer agrees"
                    );
                    self.report.sync_held();
                }
                Ok(Synced::Plan(plan)) => {
                    self.report.api_ok();
                    self.clearml.adopt(plan.routes);
                    self.report.synced(plan.tasks, plan.foreign, plan.refused);
                    writes = Some(plan.writes);
                }
                Err(e) => {
                    self.note_api_error(&e);
                    self.report.cycle_failed();
                    outcome = CycleOutcome::ApiFailed;
                }
            }
        }
        let wanted = self.wanted();
        self.owners.apply(wanted).await;
        self.owners.check_serving().await;
        // Publish what is programmed before any task reads its endpoint: once `tasks.edit`
        // lands, the task (and whoever it hands the endpoint to) may ask `status` at once, and
        // the write-back, the state files' fsync and the counters can take a while.
        if let Some(writes) = &writes {
            self.writes.mark_pending(writes, &self.owners);
        }
        self.publish();
        self.write_back(writes).await;
        self.save_state();
        let counters = self.owners.read_counters().await;
        self.report.set_counters(counters);
        self.report.cycle_took(started.elapsed());
        self.publish();
        outcome
    }

    fn reload_routes_file(&mut self) {
        let Some(file) = &mut self.routes_file else {
            return;
        };
        match file.reload(&self.policy) {
            Ok(true) => tracing::info!(path = %file.path().display(), "routes file reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                error = %crate::error::error_chain(&e),
                "routes file not reloaded; its previous routes stay"
            ),
        }
    }

    /// The set the owners should serve: static routes, then ClearML routes (ports and keys of
    /// static routes are never planned for tasks, so nothing is overwritten).
    fn wanted(&self) -> RouteSet {
        let mut set = self.clearml.routes().clone();
        if let Some(file) = &self.routes_file {
            for (port, r) in &file.routes().tcp {
                set.tcp.insert(*port, r.clone());
            }
            for (key, r) in &file.routes().http {
                set.http.insert(key.clone(), r.clone());
            }
        }
        set
    }

    /// Writes endpoints back for the routes that were programmed. `None`: no plan this cycle
    /// (the listing failed), so the pending states stay as they are.
    async fn write_back(&mut self, writes: Option<Vec<WriteBack>>) {
        let Some(writes) = writes else {
            return;
        };
        let failures = self
            .writes
            .write(
                writes,
                self.clearml.client(),
                self.clearml.settings(),
                &self.policy,
                &self.owners,
            )
            .await;
        for e in &failures {
            self.note_api_error(e);
        }
    }

    fn note_api_error(&mut self, e: &ApiError) {
        self.clearml.note_error(e);
        self.report.api_failed(e);
    }

    fn save_state(&mut self) {
        let (ports, routes) = self.clearml.state_mut();
        let error = state::save(ports, self.routes_path.as_deref(), routes);
        self.report.state_saved(error);
    }

    fn publish(&mut self) {
        let facts = Facts {
            owners: &self.owners,
            writes: &self.writes,
            guard: self.clearml.guard(),
            settings: self.clearml.settings(),
            client: self.clearml.client().map(|c| c.as_ref()),
            clearml_synced: self.clearml.has_synced(),
            routes_file: self.routes_file.as_ref(),
            ports: self.clearml.port_stats(),
        };
        self.report.publish(&facts);
    }
}

/// The router's own addresses: configured, discovered, and `TCP_ROUTER_ADDRESS` if it is one.
fn own_addresses(cfg: &Config) -> Vec<std::net::Ipv4Addr> {
    let mut own = cfg.datapath.router_addresses.clone();
    own.extend(validate::local_addresses());
    if let Ok(IpAddr::V4(a)) = cfg.tcp.router_address.parse::<IpAddr>() {
        own.push(a);
    }
    own
}
