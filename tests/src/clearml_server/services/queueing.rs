//! `tasks.enqueue` and `tasks.dequeue`: a task into and out of a queue, with the status
//! change and `execution.queue` as the real server sets them.

use super::Call;
use super::tasks::{existing, set_status, status_of, task_id};
use crate::clearml_server::error::ApiError;
use crate::clearml_server::store::{self, State, set_path};
use serde_json::{Value, json};

/// `tasks.enqueue` (`bll/task/task_operations.py:204-288` at v2.3.0): `queue` or `queue_name`
/// (not both; an unknown name creates the queue), else the default queue; the status change
/// follows the state machine unless `force` (`bll/task/utils.py:96-161`: from `created`,
/// `queued`, `stopped` or `failed`) and drops the `development` system tag; `execution.queue`
/// is set unless `update_execution_queue` is false, which needs a task already queued with a
/// queue (what an Enterprise Kubernetes glue sends, `clearml_agent/glue/k8s.py:517`).
pub fn enqueue(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let update_queue = call
        .data
        .get("update_execution_queue")
        .and_then(Value::as_bool)
        != Some(false);
    let queue = match (call.str("queue"), call.str("queue_name")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "Either queue id or queue name should be provided",
            ));
        }
        (Some(q), None) => state
            .queues
            .iter()
            .find(|x| x["id"] == q)
            .map(|x| x["id"].clone())
            .ok_or_else(|| ApiError::invalid_queue_id(q))?,
        (None, Some(name)) => match state.queues.iter().find(|x| x["name"] == name) {
            Some(q) => q["id"].clone(),
            None => json!(state.add_queue(name, &[])),
        },
        (None, None) => state
            .queues
            .iter()
            .find(|x| {
                x["system_tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!("default")))
            })
            .map(|x| x["id"].clone())
            .ok_or_else(|| {
                ApiError::plain(
                    400,
                    707,
                    "No queue is tagged as the default queue for this company",
                )
            })?,
    };
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    let has_queue = store::get_path(&Value::Object(task.clone()), "execution.queue")
        .is_some_and(|q| q.as_str().is_some_and(|q| !q.is_empty()));
    let queued_with_queue = status == "queued" && has_queue;
    if !(update_queue || queued_with_queue) {
        return Err(ApiError::validation(
            "Cannot skip setting execution queue for a task that is not enqueued or does not have execution queue set",
        ));
    }
    if !["created", "queued", "stopped", "failed"].contains(&status.as_str()) && !call.flag("force")
    {
        return Err(ApiError::invalid_status_change(&status, "queued"));
    }
    if update_queue {
        set_path(task, "execution.queue", queue);
    }
    if let Some(Value::Array(tags)) = task.get_mut("system_tags") {
        tags.retain(|t| t != "development");
    }
    let mut out = set_status(task, "queued", &user, call);
    out["queued"] = json!(1);
    Ok(out)
}

pub fn dequeue(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    if status != "queued" {
        return Err(ApiError::plain(
            400,
            703,
            format!("Invalid queue id or task not in queue: task={id}"),
        ));
    }
    set_path(task, "execution.queue", Value::Null);
    let mut out = set_status(task, "created", &user, call);
    out["dequeued"] = json!(1);
    Ok(out)
}
