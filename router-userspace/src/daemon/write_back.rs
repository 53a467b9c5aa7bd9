//! Writing endpoints back to the ClearML tasks once their routes are programmed and served, and
//! the state of each endpoint's write (what `/status` shows for its route until the write
//! lands). An endpoint whose route cannot be served is never written: the reason is, in
//! [`reconcile::ENDPOINT_ERROR_KEY`], and the endpoint's own write removes it later.

use super::apply::Owners;
use crate::clearml::{ApiError, Client, WriteOutcome};
use crate::endpoint::EndpointId;
use crate::reconcile::{self, Kind, Settings, WriteBack};
use crate::validate::UpstreamPolicy;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Write-backs in flight at once.
const WRITE_CONCURRENCY: usize = 16;

/// One endpoint's write: the task endpoint and the kind of route it is written for.
type WriteKey = (EndpointId, Kind);

/// What is written on a task for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Payload {
    /// The endpoint (the plan's patch).
    Endpoint,
    /// Why the endpoint is not served, instead of it.
    Error(String),
}

/// Endpoints whose write-back is pending or failed, with the state to show.
#[derive(Debug, Default)]
pub(super) struct WriteBacks {
    states: HashMap<WriteKey, String>,
    /// The reasons on tasks instead of their endpoints, so a reason that holds is not written
    /// (nor its task read) again every cycle.
    errors: HashMap<WriteKey, String>,
}

impl WriteBacks {
    /// The state of the write for `key`, while it is pending or failed.
    pub(super) fn state(&self, key: &WriteKey) -> Option<&str> {
        self.states.get(key).map(String::as_str)
    }

    /// Shows the endpoints about to be written back as `writing back` (a state from an earlier
    /// attempt, e.g. a failed write, stays until this attempt ends).
    pub(super) fn mark_pending(&mut self, writes: &[WriteBack], owners: &Owners) {
        for wb in writes {
            if owners.unserved(&wb.route).is_none() {
                self.states
                    .entry((wb.key.clone(), wb.want.kind()))
                    .or_insert_with(|| "writing back".into());
            }
        }
    }

    /// Writes endpoints back for the routes `owners` programmed and serve; for a route not
    /// served for longer than the grace (or not programmed) the reason instead; the others
    /// wait. States of endpoints no longer in `writes` are dropped. Returns the transient API
    /// errors met, for the sync health.
    pub(super) async fn write(
        &mut self,
        writes: Vec<WriteBack>,
        client: Option<&Arc<Client>>,
        settings: &Settings,
        policy: &UpstreamPolicy,
        owners: &Owners,
    ) -> Vec<ApiError> {
        let live: HashSet<WriteKey> = writes
            .iter()
            .map(|w| (w.key.clone(), w.want.kind()))
            .collect();
        self.states.retain(|k, _| live.contains(k));
        self.errors.retain(|k, _| live.contains(k));
        let Some(client) = client else {
            return Vec::new();
        };
        // One job per task, its endpoints written one after the other: two concurrent
        // read-merge-writes of the same runtime dict would each drop the other's keys.
        let mut by_task: BTreeMap<String, Vec<(WriteBack, Payload)>> = BTreeMap::new();
        for wb in writes {
            let key = (wb.key.clone(), wb.want.kind());
            let payload = match owners.unserved(&wb.route) {
                None => Payload::Endpoint,
                Some(u) if !u.settled => {
                    self.states
                        .insert(key, format!("waiting to be served: {}", u.reason));
                    continue;
                }
                Some(u) if self.errors.get(&key).map(String::as_str) == Some(u.reason) => {
                    continue;
                }
                Some(u) => Payload::Error(u.reason.to_string()),
            };
            by_task
                .entry(wb.key.task_id.clone())
                .or_default()
                .push((wb, payload));
        }
        let finished = write_by_task(by_task, client, settings, policy).await;
        finished
            .into_iter()
            .filter_map(|(wb, payload, outcome)| match payload {
                Payload::Endpoint => self.record(&wb, outcome),
                Payload::Error(reason) => self.record_error(&wb, reason, outcome),
            })
            .collect()
    }

    /// Records how writing the reason an endpoint is not served went; the error when it is
    /// transient.
    fn record_error(
        &mut self,
        wb: &WriteBack,
        reason: String,
        outcome: Result<WriteOutcome, ApiError>,
    ) -> Option<ApiError> {
        let key = (wb.key.clone(), wb.want.kind());
        match outcome {
            Ok(WriteOutcome::Written { .. } | WriteOutcome::Unchanged) => {
                tracing::info!(
                    task = %wb.key.task_id, endpoint = %wb.key.endpoint, name = ?wb.task_name,
                    route = %wb.route, reason = %reason,
                    "endpoint not served: the reason is written on the task instead"
                );
                self.errors.insert(key, reason);
                None
            }
            Ok(other) => {
                tracing::debug!(task = %wb.key.task_id, outcome = ?other, "reason not written");
                None
            }
            Err(e) => {
                tracing::debug!(task = %wb.key.task_id, error = %crate::error::error_chain(&e),
                    "writing why the endpoint is not served failed");
                e.is_transient().then_some(e)
            }
        }
    }

    /// Records how the write of `wb` went; the error when it is transient.
    fn record(
        &mut self,
        wb: &WriteBack,
        outcome: Result<WriteOutcome, ApiError>,
    ) -> Option<ApiError> {
        let state_key = (wb.key.clone(), wb.want.kind());
        if matches!(
            outcome,
            Ok(WriteOutcome::Written { .. } | WriteOutcome::Unchanged)
        ) {
            self.errors.remove(&state_key);
        }
        match outcome {
            Ok(WriteOutcome::Written { attempts }) => {
                let endpoint = wb
                    .patch
                    .iter()
                    .find(|(k, _)| k.starts_with("endpoint") || k.starts_with("external_tcp_port"))
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default();
                tracing::info!(
                    task = %wb.key.task_id, endpoint = %wb.key.endpoint, name = ?wb.task_name,
                    route = %wb.route, written = %endpoint, attempts,
                    "endpoint written back"
                );
                self.states.remove(&state_key);
            }
            Ok(WriteOutcome::Unchanged | WriteOutcome::Gone) => {
                self.states.remove(&state_key);
            }
            Ok(WriteOutcome::Skipped(reason)) => {
                tracing::debug!(task = %wb.key.task_id, endpoint = %wb.key.endpoint, reason, "write-back skipped");
                self.states
                    .insert(state_key, format!("writing back ({reason})"));
            }
            Ok(WriteOutcome::Lost { attempts }) => {
                tracing::warn!(task = %wb.key.task_id, endpoint = %wb.key.endpoint, attempts,
                    "write-back overwritten by concurrent writers; retrying next cycle");
                self.states.insert(
                    state_key,
                    format!(
                        "write-back failed: overwritten {attempts} times by concurrent writers"
                    ),
                );
            }
            Err(e) => {
                let text = crate::error::error_chain(&e);
                tracing::debug!(task = %wb.key.task_id, error = %text, "write-back failed");
                self.states
                    .insert(state_key, format!("write-back failed: {text}"));
                return e.is_transient().then_some(e);
            }
        }
        None
    }
}

/// One finished write: what was written for which endpoint, and how it went.
type Finished = (WriteBack, Payload, Result<WriteOutcome, ApiError>);

/// Runs the writes of each task as one job, [`WRITE_CONCURRENCY`] jobs at once; every write
/// with its outcome. Each write re-checks the task first ([`reconcile::recheck`]): nothing is
/// written, the reason included, on a task that no longer asks for what was planned.
async fn write_by_task(
    by_task: BTreeMap<String, Vec<(WriteBack, Payload)>>,
    client: &Arc<Client>,
    settings: &Settings,
    policy: &UpstreamPolicy,
) -> Vec<Finished> {
    let settings = Arc::new(settings.clone());
    let policy = Arc::new(policy.clone());
    let gate = Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY));
    let mut jobs = tokio::task::JoinSet::new();
    for (task_id, wbs) in by_task {
        let (client, settings, policy, gate) = (
            client.clone(),
            settings.clone(),
            policy.clone(),
            gate.clone(),
        );
        jobs.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut done = Vec::with_capacity(wbs.len());
            for (wb, payload) in wbs {
                let outcome = client
                    .update_runtime(&task_id, |task| {
                        let patch = reconcile::recheck(task, &wb, &settings, &policy)?;
                        Ok(match &payload {
                            Payload::Endpoint => patch,
                            Payload::Error(reason) => {
                                reconcile::error_patch(&wb.key.endpoint, reason)
                            }
                        })
                    })
                    .await;
                done.push((wb, payload, outcome));
            }
            done
        });
    }
    let mut finished = Vec::new();
    while let Some(joined) = jobs.join_next().await {
        if let Ok(done) = joined {
            finished.extend(done);
        }
    }
    finished
}
