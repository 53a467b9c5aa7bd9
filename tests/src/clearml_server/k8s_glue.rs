//! A task as clearml-agent's Kubernetes glue leaves it: the user enqueues it to their queue,
//! the glue pulls it, moves it to its own pending queue and records the user's queue as a
//! user property; then the pod's agent starts it. The calls go through the server's own
//! handlers, so whatever the test server does with them follows.
//!
//! Sources (clearml/clearml-agent at tag v3.0.3, `clearml_agent/glue/k8s.py`; same lines at
//! master 2026-08):
//! - `:54` the pending queue `k8s_scheduler`, created if missing (`:1328-1338`).
//! - `:222` `update_execution_queue` only on an open-source server (`feature_set == "basic"`);
//!   `:224-226` an Enterprise server (3.22.3+) takes a same-state `queued → queued` change, an
//!   open-source one gets `tasks.stop(force)` first (`:500-501`).
//! - `:509-519` `tasks.enqueue {queue: <k8s_scheduler id>, status_reason: "k8s pending
//!   scheduler", update_execution_queue}`: on open source `execution.queue` becomes the
//!   pending queue and the user's queue id is gone from the task.
//! - `:584` the user's queue name (`queues.get_by_id`), `:765-800` `set_task_info` →
//!   `:301-325` `tasks.edit_hyper_params` section `properties`, name `k8s-queue`, value = that
//!   name: what stays on the task about the queue the user chose (also in the pod labels
//!   `clearml-agent-queue` / `clearml-agent-queue-name`, `:833-843`, not on the task).

use super::Admin;
use super::auth::Identity;
use super::error::ApiError;
use super::services::{self, Call};
use serde_json::{Value, json};

/// The glue's pending queue (`K8S_PENDING_QUEUE`).
pub const K8S_PENDING_QUEUE: &str = "k8s_scheduler";

/// The user property the glue writes the user's queue name into.
pub const K8S_QUEUE_PROPERTY: &str = "k8s-queue";

/// The queues a glued task went through.
#[derive(Clone, Debug)]
pub struct K8sGlued {
    pub user_queue_id: String,
    pub pending_queue_id: String,
}

impl Admin {
    /// Plays the user enqueueing task `id` to the queue named `user_queue` (created if
    /// missing), then the Kubernetes glue serving that queue up to the pod being applied. The
    /// task is left `queued`; [`Admin::k8s_pod_runs`] plays the pod starting it. On an
    /// open-source server (`basic`) `execution.queue` ends up as `k8s_scheduler`; on an
    /// `advanced` one it stays the user's queue. Either way
    /// `hyperparams.properties.k8s-queue.value` is `user_queue`.
    pub fn k8s_glue_schedules(&self, id: &str, user_queue: &str) -> Result<K8sGlued, ApiError> {
        let user_queue_id = self
            .queue_id(user_queue)
            .unwrap_or_else(|| self.create_queue(user_queue));
        let owner = self.task_owner(id)?;
        self.call_as(
            &owner,
            "tasks.enqueue",
            json!({"task": id, "queue": user_queue_id}),
        )?;
        let glue = owner.clone();
        let basic = self.feature_set() == super::FEATURE_SET_BASIC;
        let pending_queue_id = self
            .queue_id(K8S_PENDING_QUEUE)
            .unwrap_or_else(|| self.create_queue(K8S_PENDING_QUEUE));
        if basic {
            self.call_as(
                &glue,
                "tasks.stop",
                json!({"task": id, "force": true, "status_reason": "moving to k8s pending queue"}),
            )?;
        }
        self.call_as(
            &glue,
            "tasks.enqueue",
            json!({"task": id, "queue": pending_queue_id, "status_reason": "k8s pending scheduler",
                   "update_execution_queue": basic}),
        )?;
        let name = self.call_as(&glue, "queues.get_by_id", json!({"queue": user_queue_id}))?
            ["queue"]["name"]
            .clone();
        self.call_as(
            &glue,
            "tasks.edit_hyper_params",
            json!({"task": id, "hyperparams": [
                {"section": "properties", "name": K8S_QUEUE_PROPERTY, "value": name}]}),
        )?;
        Ok(K8sGlued {
            user_queue_id,
            pending_queue_id,
        })
    }

    /// Plays the pod's agent starting the task (`tasks.started`, `last_worker` = the pod).
    pub fn k8s_pod_runs(&self, id: &str) -> Result<(), ApiError> {
        let owner = self.task_owner(id)?;
        self.call_as(&owner, "tasks.started", json!({"task": id}))?;
        self.update_task(id, json!({"last_worker": format!("clearml-id-{id}")}));
        Ok(())
    }

    /// The identity of the task's company (the glue acts within the task's tenant).
    fn task_owner(&self, id: &str) -> Result<Identity, ApiError> {
        let task = self.task(id).ok_or_else(|| ApiError::invalid_task_id(id))?;
        let mut identity = self.identity();
        if let Some(company) = task.get("company").and_then(Value::as_str) {
            identity.company = company.to_string();
        }
        Ok(identity)
    }

    /// Runs endpoint `name` with `data` as `identity` through the server's handler (no auth,
    /// faults or call counting).
    fn call_as(&self, identity: &Identity, name: &str, data: Value) -> Result<Value, ApiError> {
        let mut state = self.shared.lock();
        let endpoint = services::find(name, state.release.api)
            .ok_or_else(|| ApiError::unknown_endpoint(name, &state.release.api_string()))?;
        let call = Call {
            data: match data {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            batch: None,
            identity: identity.clone(),
        };
        (endpoint.handler)(&mut state, &call)
    }
}
