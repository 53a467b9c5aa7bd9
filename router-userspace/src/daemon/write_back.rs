//! Writing endpoints back to the ClearML tasks once their routes are programmed and served, and
//! the state of each endpoint's write (what `/status` shows for its route until the write
//! lands). An endpoint whose route cannot be served is never written: the reason is, in
//! [`reconcile::ENDPOINT_ERROR_KEY`], and the endpoint's own write removes it later.

use super::apply::Owners;
use crate::clearml::task::Task;
use crate::clearml::{ApiError, Client, WriteOutcome};
use crate::endpoint::EndpointId;
use crate::reconcile::{self, Kind, RefusalWrite, Settings, WriteBack};
use crate::validate::UpstreamPolicy;
use serde_json::Value;
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
    /// Refusal reasons the server would not take (the task stopped meanwhile, a status it
    /// keeps its runtime in): not tried again every cycle while the refusal holds.
    refusals_declined: HashMap<EndpointId, String>,
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
        let mut due = Vec::new();
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
            due.push((wb, payload));
        }
        let finished = write_by_task(due, client, settings, policy).await;
        finished
            .into_iter()
            .filter_map(|((wb, payload), outcome)| match payload {
                Payload::Endpoint => self.record(&wb, outcome),
                Payload::Error(reason) => self.record_error(&wb, reason, outcome),
            })
            .collect()
    }

    /// Writes on each task why its refused requests are not served (the plan lists only those
    /// the task does not show yet). Returns the transient API errors met.
    pub(super) async fn write_refusals(
        &mut self,
        writes: Vec<RefusalWrite>,
        client: Option<&Arc<Client>>,
        settings: &Settings,
        policy: &UpstreamPolicy,
    ) -> Vec<ApiError> {
        let live: HashSet<&EndpointId> = writes.iter().map(|w| &w.key).collect();
        self.refusals_declined.retain(|k, _| live.contains(k));
        let Some(client) = client else {
            return Vec::new();
        };
        let due: Vec<RefusalWrite> = writes
            .into_iter()
            .filter(|w| self.refusals_declined.get(&w.key) != Some(&w.reason))
            .collect();
        let mut transient = Vec::new();
        for (w, outcome) in write_by_task(due, client, settings, policy).await {
            match outcome {
                Ok(WriteOutcome::Written { .. }) => tracing::info!(
                    task = %w.key.task_id, endpoint = %w.key.endpoint, name = ?w.task_name,
                    reason = %w.reason, "endpoint request refused: the reason is written on the task"
                ),
                Ok(WriteOutcome::Unchanged | WriteOutcome::Gone | WriteOutcome::Lost { .. }) => {}
                Ok(WriteOutcome::Skipped(why)) => {
                    tracing::debug!(task = %w.key.task_id, why, "refusal reason not written");
                    self.refusals_declined.insert(w.key, w.reason);
                }
                Err(e) if e.is_transient() => transient.push(e),
                Err(e) => {
                    tracing::debug!(task = %w.key.task_id, error = %crate::error::error_chain(&e),
                        "writing why the request is refused failed");
                    self.refusals_declined.insert(w.key, w.reason);
                }
            }
        }
        transient
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

/// One write on a task, run on the freshly read task: what to write, or why nothing.
trait TaskWrite: Send + Sync + 'static {
    fn task_id(&self) -> &str;
    fn patch(
        &self,
        task: &Task,
        settings: &Settings,
        policy: &UpstreamPolicy,
    ) -> Result<BTreeMap<String, Value>, String>;
}

/// An endpoint (or why it is not served) for a planned route: written only while the task
/// still asks for exactly what was planned ([`reconcile::recheck`]), the reason included.
impl TaskWrite for (WriteBack, Payload) {
    fn task_id(&self) -> &str {
        &self.0.key.task_id
    }

    fn patch(
        &self,
        task: &Task,
        settings: &Settings,
        policy: &UpstreamPolicy,
    ) -> Result<BTreeMap<String, Value>, String> {
        let (wb, payload) = self;
        let patch = reconcile::recheck(task, wb, settings, policy)?;
        Ok(match payload {
            Payload::Endpoint => patch,
            Payload::Error(reason) => reconcile::error_patch(&wb.key.endpoint, reason),
        })
    }
}

/// Why a request is refused, while the task still asks for it.
impl TaskWrite for RefusalWrite {
    fn task_id(&self) -> &str {
        &self.key.task_id
    }

    fn patch(
        &self,
        task: &Task,
        settings: &Settings,
        policy: &UpstreamPolicy,
    ) -> Result<BTreeMap<String, Value>, String> {
        reconcile::recheck_refusal(task, self, settings, policy)
    }
}

/// Runs the writes of each task as one job (its writes one after the other: two concurrent
/// read-merge-writes of the same runtime dict would each drop the other's keys),
/// [`WRITE_CONCURRENCY`] jobs at once; every write with its outcome.
async fn write_by_task<W: TaskWrite>(
    writes: Vec<W>,
    client: &Arc<Client>,
    settings: &Settings,
    policy: &UpstreamPolicy,
) -> Vec<(W, Result<WriteOutcome, ApiError>)> {
    let mut by_task: BTreeMap<String, Vec<W>> = BTreeMap::new();
    for w in writes {
        by_task.entry(w.task_id().to_string()).or_default().push(w);
    }
    let settings = Arc::new(settings.clone());
    let policy = Arc::new(policy.clone());
    let gate = Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY));
    let mut jobs = tokio::task::JoinSet::new();
    for (task_id, writes) in by_task {
        let (client, settings, policy, gate) = (
            client.clone(),
            settings.clone(),
            policy.clone(),
            gate.clone(),
        );
        jobs.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut done = Vec::with_capacity(writes.len());
            for w in writes {
                let outcome = client
                    .update_runtime(&task_id, |task| w.patch(task, &settings, &policy))
                    .await;
                done.push((w, outcome));
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
