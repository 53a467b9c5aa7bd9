//! [`Admin`]: set-up and inspection of a running server from the test's own process.

use super::auth::{Credential, Identity};
use super::options::{Credentials, ServerRelease};
use super::store::{Fault, FaultKind, now_iso, set_path};
use super::{Shared, TaskSpec};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Set-up and inspection of a running server, bypassing the API (no auth, no faults, no
/// call counting).
#[derive(Clone)]
pub struct Admin {
    pub(super) shared: Arc<Shared>,
}

impl Admin {
    /// Creates a task and returns its id.
    pub fn create_task(&self, spec: TaskSpec) -> String {
        let mut state = self.shared.lock();
        let mut doc =
            state.new_task_doc(&spec.name, spec.task_type.as_deref().unwrap_or("training"));
        let status = spec.status.unwrap_or_else(|| "created".into());
        if status == "in_progress" {
            doc.insert("started".into(), json!(now_iso()));
        }
        doc.insert("status".into(), json!(status));
        doc.insert("runtime".into(), Value::Object(spec.runtime));
        doc.insert("system_tags".into(), json!(spec.system_tags));
        doc.insert("tags".into(), json!(spec.tags));
        doc.insert("project".into(), json!(spec.project));
        set_path(&mut doc, "execution.queue", json!(spec.queue));
        if let Some(w) = spec.last_worker {
            doc.insert("last_worker".into(), json!(w));
        }
        if let Some(company) = spec.company {
            doc.insert("company".into(), json!(company));
        }
        let id = doc["id"].as_str().unwrap_or_default().to_string();
        state.tasks.push(Value::Object(doc));
        id
    }

    /// Creates a queue and returns its id.
    pub fn create_queue(&self, name: &str) -> String {
        self.shared.lock().add_queue(name, &[])
    }

    /// The id of the queue named `name`.
    pub fn queue_id(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .queues
            .iter()
            .find(|q| q["name"] == name)
            .and_then(|q| q["id"].as_str().map(str::to_string))
    }

    /// The task's raw document, as stored.
    pub fn task(&self, id: &str) -> Option<Value> {
        self.shared.lock().task(id).cloned()
    }

    /// The task's runtime properties (empty if none or no such task).
    pub fn runtime(&self, id: &str) -> Map<String, Value> {
        self.task(id)
            .and_then(|t| t.get("runtime").and_then(Value::as_object).cloned())
            .unwrap_or_default()
    }

    /// The task's system tags (empty if none or no such task).
    pub fn system_tags(&self, id: &str) -> Vec<String> {
        self.task(id)
            .and_then(|t| t.get("system_tags").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect()
    }

    /// Sets the task's status (as an agent or the UI would); false if there is no such task.
    pub fn set_status(&self, id: &str, status: &str) -> bool {
        self.update_task(id, json!({"status": status, "status_changed": now_iso()}))
    }

    /// Sets fields of a task as they are (dotted paths allowed, e.g. `execution.queue`);
    /// false if there is no such task.
    pub fn update_task(&self, id: &str, fields: Value) -> bool {
        let mut state = self.shared.lock();
        let Some(task) = state.task_mut(id) else {
            return false;
        };
        if let Value::Object(fields) = fields {
            for (k, v) in fields {
                set_path(task, &k, v);
            }
        }
        task.insert("last_update".into(), json!(now_iso()));
        true
    }

    /// Deletes a task; false if there was none.
    pub fn delete_task(&self, id: &str) -> bool {
        let mut state = self.shared.lock();
        let before = state.tasks.len();
        state.tasks.retain(|t| t["id"] != id);
        state.tasks.len() != before
    }

    /// The ids of every task, in creation order.
    pub fn task_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .tasks
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect()
    }

    /// The next `count` API calls (to `endpoint` only, if given) get `kind`.
    pub fn inject(&self, kind: FaultKind, count: u32, endpoint: Option<&str>) {
        if count == 0 {
            return;
        }
        self.shared.lock().faults.push_back(Fault {
            kind,
            remaining: count,
            endpoint: endpoint.map(str::to_string),
        });
    }

    /// The next `count` calls answer 500/0 (to `endpoint` only, if given).
    pub fn fail_next(&self, count: u32, endpoint: Option<&str>) {
        self.inject(
            FaultKind::Error {
                code: 500,
                subcode: 0,
                msg: "General server error (injected fault)".into(),
            },
            count,
            endpoint,
        );
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Runs `hook` right after every `tasks.edit` that writes a runtime, on the stored dict
    /// (e.g. to play a task that overwrites the router's keys at the same moment); the edit's
    /// answer is unchanged, so only a re-read shows it.
    pub fn after_edit(&self, hook: impl FnMut(&str, &mut Map<String, Value>) + Send + 'static) {
        self.shared.lock().after_edit = Some(Box::new(hook));
    }

    pub fn clear_after_edit(&self) {
        self.shared.lock().after_edit = None;
    }

    /// Runs `hook` right after every `tasks.get_by_id` answered, on the stored runtime of the
    /// task read (its `last_update` moves if the hook changed it): a task whose own
    /// read-modify-write lands between a client's read and that client's write. The answer is
    /// the runtime as it was before the hook.
    pub fn after_read(&self, hook: impl FnMut(&str, &mut Map<String, Value>) + Send + 'static) {
        self.shared.lock().after_read = Some(Box::new(hook));
    }

    pub fn clear_after_read(&self) {
        self.shared.lock().after_read = None;
    }

    /// Every token issued until now is refused with 401/30 from now on; clients must log in
    /// again.
    pub fn expire_tokens(&self) {
        self.shared.lock().expire_tokens();
    }

    /// How many calls reached `endpoint` (`service.action`), faults and errors included.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.shared.lock().calls.get(endpoint).copied().unwrap_or(0)
    }

    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.shared.lock().calls.clone()
    }

    pub fn reset_call_counts(&self) {
        self.shared.lock().calls.clear();
    }

    /// A valid token for the server's user, e.g. to put in a browser cookie. `lifetime` may be
    /// zero or short to get an (about to be) expired one.
    pub fn issue_token(&self, lifetime: Duration) -> String {
        let identity = self.identity();
        self.issue_token_for(&identity, lifetime)
    }

    /// A token as `auth.login` would issue it to `identity` (any company or user, e.g. from
    /// [`Identity::in_company`]), signed with the server's secret: what a browser of that user
    /// carries in the cookie. Expiring it with [`Admin::expire_tokens`] works too.
    pub fn issue_token_for(&self, identity: &Identity, lifetime: Duration) -> String {
        self.shared
            .lock()
            .issue_token(identity, lifetime.as_secs() as i64)
    }

    /// The payload the server would sign for `identity` (fields exactly as the real server's,
    /// see [`super::auth::Claims`]), to change before [`Admin::sign_payload`]: an `exp` in the
    /// past, no `identity.company`, another company.
    pub fn token_payload(&self, identity: &Identity, lifetime: Duration) -> Value {
        let state = self.shared.lock();
        let claims = state.claims(identity, lifetime.as_secs() as i64);
        serde_json::to_value(claims).unwrap_or(Value::Null)
    }

    /// Signs any payload as the server signs tokens: HS256, the secret's bytes as the key.
    pub fn sign_payload(&self, payload: &Value) -> String {
        super::auth::sign(&self.shared.lock().token_secret, payload)
    }

    /// The HMAC key tokens are signed with: the bytes of `secure.auth.token_secret`, i.e. the
    /// secret as ClearML documents it for the router. Its JWKS form (`k`) is the base64url of
    /// these bytes.
    pub fn token_secret(&self) -> Vec<u8> {
        self.shared.lock().token_secret.clone()
    }

    /// The identity tokens are issued for.
    pub fn identity(&self) -> Identity {
        self.shared.lock().identity()
    }

    /// A key pair that logs in as `identity` (e.g. a user of another company).
    pub fn add_credentials(&self, identity: Identity) -> Credentials {
        let creds = Credentials::random();
        self.shared.lock().credentials.push(Credential {
            access_key: creds.access_key.clone(),
            secret_key: creds.secret_key.clone(),
            identity,
        });
        creds
    }

    /// The browser cookie the server sets and reads.
    pub fn cookie_name(&self) -> String {
        self.shared.lock().cookie_name.clone()
    }

    /// The release the server poses as.
    pub fn release(&self) -> ServerRelease {
        self.shared.lock().release
    }

    /// The `feature_set` of its tokens.
    pub fn feature_set(&self) -> String {
        self.shared.lock().feature_set.clone()
    }
}
