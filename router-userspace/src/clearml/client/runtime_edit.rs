//! `tasks.edit_runtime`: the atomic per-key write of runtime properties that servers from 2.3.0
//! (API 2.34) have. Whether the server has it is learnt once per connection (the login token's
//! `api_version`, else the first call's 404), and only keys the server stores under their own
//! name go through it.
//!
//! Sources (clearml/clearml-server v2.3.0): the endpoint `services/tasks.py:1425-1436` (served
//! from version 1.0, so `/v2.31/` reaches it), one `$set` per key `bll/task/task_bll.py:98-126`,
//! the key escaping `utilities/parameter_key_escaper.py:17-33` (never undone on reads), the
//! statuses it allows `bll/task/utils.py:234-262` (400/110 otherwise), and an endpoint a
//! release lacks `service_repo/service_repo.py:180-194` (404/0).

use super::Client;
use super::runtime_capability::written_as_is;
use crate::clearml::error::ApiError;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// What the server answers a call it does not have (`service_repo.py:180-194`).
const UNKNOWN_ENDPOINT: (i64, i64) = (404, 0);

/// The server refuses the call for the task's status (not `created`, `queued`, `in_progress`).
const INVALID_STATUS: (i64, i64) = (400, 110);

/// What one `tasks.edit_runtime` did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AtomicWrite {
    Written,
    /// The server has no such call (now remembered): write another way.
    Unavailable,
    /// The task's status does not take it (it stopped meanwhile).
    WrongStatus(String),
}

impl Client {
    /// Sets `keys` (each [`written_as_is`]; a `null` removes its key) on task `id` in one
    /// atomic `tasks.edit_runtime`; the task's other keys are left alone, whatever it wrote
    /// meanwhile.
    pub(super) async fn edit_runtime_keys(
        &self,
        id: &str,
        keys: &BTreeMap<String, Value>,
    ) -> Result<AtomicWrite, ApiError> {
        debug_assert!(keys.keys().all(|k| written_as_is(k)));
        let (remove, add): (Vec<_>, Vec<_>) = keys.iter().partition(|(_, v)| v.is_null());
        let add: Map<String, Value> = add
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let remove: Vec<&String> = remove.into_iter().map(|(k, _)| k).collect();
        let body = json!({ "task": id, "add_or_update": add, "remove": remove });
        match self.call("tasks.edit_runtime", &body).await {
            Ok(_) => Ok(AtomicWrite::Written),
            Err(e) if e.codes() == Some(UNKNOWN_ENDPOINT) => {
                self.runtime_edits.mark_absent();
                Ok(AtomicWrite::Unavailable)
            }
            Err(e) if e.codes() == Some(INVALID_STATUS) => {
                Ok(AtomicWrite::WrongStatus(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }
}
