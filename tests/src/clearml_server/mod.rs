//! A ClearML API server for tests: the part of the REST API that routers and the `clearml` SDK
//! use, faithful to the real server (`allegroai/clearml-server`, contract in
//! `shared/clearml-api.md`), with in-memory state and an admin side to set up tasks and
//! inject faults.
//!
//! # The API (what clients see)
//! - `/v<X.Y>/<service>.<action>` or `/<service>.<action>`, any HTTP method; the data is the JSON
//!   body, or the query string when the body is empty (`application/json-lines` = a batch).
//! - Envelope `{"meta": {id, trx, endpoint{name, requested_version, actual_version},
//!   result_code, result_subcode, result_msg, error_stack, error_data}, "data": {...}}`, HTTP
//!   status = `result_code`.
//! - Errors as the real server: 400/0 invalid request path (malformed path), 404/0 unknown
//!   endpoint name or version, 400/2 bad version, 400/11 missing required fields, 400/12
//!   validation, 400/101 invalid task id, 400/110 invalid task status, 400/701 invalid queue id,
//!   401/10 bad auth type, 401/20 no credentials, 401/21 malformed credentials, 401/22 invalid
//!   credentials (unknown key pair), 401/30 invalid or expired token.
//! - `auth.login` with HTTP Basic `access_key:secret_key` returns `{"token": JWT}` (HS256, claims
//!   `identity`, `iat`, `exp`, `env`, `session_id`, `api_version`, `server_version`,
//!   `server_build`, `feature_set` = `advanced` unless configured) and sets the
//!   `clearml_token_basic` cookie; other calls take `Authorization: Bearer`, the cookie, or Basic.
//! - Services: see [`services::ENDPOINTS`].
//!
//! # Use from a test
//! ```no_run
//! use router_tests::clearml_server::{ClearmlServer, FaultKind, TaskSpec};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let server = ClearmlServer::start()?; // 127.0.0.1, ephemeral port, fresh key pair
//! let url = server.url(); // CLEARML_API_HOST
//! let keys = server.credentials(); // CLEARML_API_ACCESS_KEY / _SECRET_KEY
//! let admin = server.admin();
//! let gpu = admin.create_queue("gpu");
//! let id = admin.create_task(
//!     TaskSpec::new("app")
//!         .status("in_progress")
//!         .queue(&gpu)
//!         .system_tags(&["external_service"])
//!         .runtime(json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.5",
//!                         "external_tcp_port": 8888})),
//! );
//! admin.fail_next(3, Some("tasks.get_all")); // 500/0 on the next 3 get_all calls
//! admin.inject(FaultKind::Delay(Duration::from_secs(15)), 1, None); // a hanging call
//! admin.inject(FaultKind::Malformed, 1, None); // 200 with a body that is not JSON
//! admin.inject(FaultKind::Empty, 2, Some("tasks.get_all")); // "there are no tasks"
//! admin.expire_tokens(); // 401/30 until the client logs in again
//! admin.set_status(&id, "stopped");
//! let runtime = admin.runtime(&id); // what the router wrote back
//! let polls = admin.calls("tasks.get_all");
//! # let _ = (url, keys, runtime, polls);
//! # Ok::<(), anyhow::Error>(())
//! ```
//! Inside a network namespace: bind the listener there (`netns.enter(|| TcpListener::bind(..))`)
//! and pass it as [`ServerOptions::listener`]. The real SDK as a task: [`sdk::SdkTask`].
//! `CLEARML_TEST_SERVER_TRACE=1` prints every call with its body on stderr.
//!
//! # The admin side
//! In-process tests use [`Admin`] (from [`ClearmlServer::admin`]). Out of process (the demo, a
//! server started with the `clearml-test-server` binary), the same under `/_admin/`, JSON in
//! and out, no authorization:
//!
//! | request | does |
//! |---|---|
//! | `POST /_admin/tasks` [`TaskSpec`] | creates a task, answers `{"id"}` |
//! | `GET /_admin/tasks/<id>` | the task's raw document (404 if none) |
//! | `PATCH /_admin/tasks/<id>` `{"path.to.field": value, ...}` | sets fields as they are |
//! | `POST /_admin/tasks/<id>/status` `{"status"}` | changes the status |
//! | `DELETE /_admin/tasks/<id>` | deletes the task |
//! | `POST /_admin/queues` `{"name"}` | creates a queue, answers `{"id"}` |
//! | `POST /_admin/faults` [`FaultSpec`] | the next `count` calls (to `endpoint`, if given) fail |
//! | `DELETE /_admin/faults` | clears waiting faults |
//! | `POST /_admin/tokens/expire` | every token issued so far is refused (401/30) from now |
//! | `GET /_admin/calls` | `{"tasks.get_all": 12, ...}` calls per endpoint |

mod admin;
pub mod auth;
pub mod client;
pub mod error;
mod http;
pub mod query;
pub mod sdk;
pub mod services;
pub mod store;

pub use auth::Identity;
pub use http::AUTH_COOKIE;
pub use store::FaultKind;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::{Fault, State, now_iso, set_path};

/// State shared by the HTTP handlers and the admin handle.
pub struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler must not take the fixture down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An API key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

/// How to start a server. `Default`: loopback, ephemeral port, one random key pair, feature
/// set `advanced`, 30-day tokens.
pub struct ServerOptions {
    /// Where to listen; ignored when `listener` is set.
    pub listen: SocketAddr,
    /// An already bound listener, e.g. one created inside a test's network namespace.
    pub listener: Option<std::net::TcpListener>,
    pub credentials: Credentials,
    /// The `feature_set` claim of issued tokens (`basic` = what an OSS server says).
    pub feature_set: String,
    pub token_lifetime: Duration,
    /// The HMAC key of tokens (the real server's `secure.auth.token_secret`).
    pub token_secret: Vec<u8>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: None,
            credentials: Credentials {
                access_key: format!("AK{:018X}", rand::random::<u64>() >> 8),
                secret_key: format!("{:032x}", rand::random::<u128>()),
            },
            feature_set: "advanced".into(),
            token_lifetime: Duration::from_secs(30 * 24 * 3600),
            token_secret: format!("{:064x}", rand::random::<u128>()).into_bytes(),
        }
    }
}

/// A running server; stops (and frees its port) on drop.
pub struct ClearmlServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    credentials: Credentials,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClearmlServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port and default options.
    pub fn start() -> Result<ClearmlServer> {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(opts: ServerOptions) -> Result<ClearmlServer> {
        let listener = match opts.listener {
            Some(l) => l,
            None => std::net::TcpListener::bind(opts.listen)
                .with_context(|| format!("cannot listen on {}", opts.listen))?,
        };
        listener
            .set_nonblocking(true)
            .context("set the listener non-blocking")?;
        let addr = listener.local_addr().context("listener address")?;
        let identity = Identity {
            user: store::new_id(),
            company: "d1bd92a3b039400cbafc60a7a5b1e52b".into(),
            role: "admin".into(),
            user_name: "Test User".into(),
            company_name: "test-company".into(),
        };
        let state = State::new(
            vec![auth::Credential {
                access_key: opts.credentials.access_key.clone(),
                secret_key: opts.credentials.secret_key.clone(),
                identity,
            }],
            opts.token_secret,
            opts.feature_set,
            opts.token_lifetime.as_secs() as i64,
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        let (shutdown, thread) = serve(listener, Arc::clone(&shared))?;
        Ok(ClearmlServer {
            addr,
            shared,
            credentials: opts.credentials,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The server goes away as if its process died: the listener closes (connecting is
    /// refused) and open connections are dropped. Its state is kept for [`Self::come_back`].
    pub fn go_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Answers again on the same address with the same state, from `listener` (bind it inside
    /// the namespace the server lived in) or a new one bound on the old address.
    pub fn come_back(&mut self, listener: Option<std::net::TcpListener>) -> Result<()> {
        self.go_down();
        let listener = match listener {
            Some(l) => l,
            None => std::net::TcpListener::bind(self.addr)
                .with_context(|| format!("cannot listen on {} again", self.addr))?,
        };
        listener
            .set_nonblocking(true)
            .context("set the listener non-blocking")?;
        let (shutdown, thread) = serve(listener, Arc::clone(&self.shared))?;
        self.shutdown = Some(shutdown);
        self.thread = Some(thread);
        Ok(())
    }

    /// `http://ADDR:PORT`, the value for `CLEARML_API_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }

    pub fn admin(&self) -> Admin {
        Admin {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Serves the API and the admin side on `listener` from a thread of its own; the sender stops
/// it (the listener closes, connections are dropped).
fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> Result<(
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
)> {
    let app = axum::Router::new()
        .nest("/_admin", admin::router())
        .fallback(http::api)
        .with_state(shared);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let thread = std::thread::Builder::new()
        .name("clearml-test-server".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e).context("tokio runtime"));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e).context("tokio listener"));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Not a graceful shutdown: a dead server does not finish its answers, and
                // dropping the runtime below closes every connection it held.
                tokio::select! {
                    served = axum::serve(listener, app) => {
                        if let Err(e) = served {
                            eprintln!("clearml test server: {e}");
                        }
                    }
                    _ = rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .context("spawn the server thread")?;
    ready_rx
        .recv()
        .context("the server thread died before it was ready")??;
    Ok((tx, thread))
}

impl Drop for ClearmlServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A task to create through the admin side. Unset fields get what `tasks.create` would set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TaskSpec {
    pub name: String,
    /// `created` when unset.
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    pub runtime: Map<String, Value>,
    pub system_tags: Vec<String>,
    pub tags: Vec<String>,
    /// Queue id for `execution.queue`.
    pub queue: Option<String>,
    pub project: Option<String>,
    pub last_worker: Option<String>,
}

impl TaskSpec {
    pub fn new(name: &str) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            ..TaskSpec::default()
        }
    }
    pub fn status(mut self, status: &str) -> Self {
        self.status = Some(status.into());
        self
    }
    /// `runtime` from a JSON object; anything else leaves it empty.
    pub fn runtime(mut self, runtime: Value) -> Self {
        self.runtime = match runtime {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self
    }
    pub fn system_tags(mut self, tags: &[&str]) -> Self {
        self.system_tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }
    pub fn queue(mut self, queue_id: &str) -> Self {
        self.queue = Some(queue_id.into());
        self
    }
    pub fn last_worker(mut self, worker: &str) -> Self {
        self.last_worker = Some(worker.into());
        self
    }
}

/// A fault to inject, as the admin HTTP API takes it.
#[derive(Clone, Debug, Deserialize)]
pub struct FaultSpec {
    /// `error` (default code 500), `delay`, `malformed`, or `empty` (no tasks).
    pub kind: String,
    #[serde(default = "one")]
    pub count: u32,
    pub endpoint: Option<String>,
    pub code: Option<u16>,
    pub subcode: Option<u32>,
    pub msg: Option<String>,
    pub delay_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    pub fn kind(&self) -> std::result::Result<FaultKind, String> {
        match self.kind.as_str() {
            "error" => Ok(FaultKind::Error {
                code: self.code.unwrap_or(500),
                subcode: self.subcode.unwrap_or(0),
                msg: self
                    .msg
                    .clone()
                    .unwrap_or_else(|| "General server error (injected fault)".into()),
            }),
            "delay" => Ok(FaultKind::Delay(Duration::from_millis(
                self.delay_ms.unwrap_or(1000),
            ))),
            "malformed" => Ok(FaultKind::Malformed),
            "empty" => Ok(FaultKind::Empty),
            other => Err(format!(
                "unknown fault kind {other:?}: expected error, delay, malformed or empty"
            )),
        }
    }
}

/// Set-up and inspection of a running server, bypassing the API (no auth, no faults, no
/// call counting).
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
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
        let mut state = self.shared.lock();
        let identity = state.identity();
        state.issue_token(&identity, lifetime.as_secs() as i64)
    }

    /// The HMAC key tokens are signed with (what `AUTH_BASE64_JWKS_KEY` carries, base64url).
    pub fn token_secret(&self) -> Vec<u8> {
        self.shared.lock().token_secret.clone()
    }

    /// The identity tokens are issued for.
    pub fn identity(&self) -> Identity {
        self.shared.lock().identity()
    }
}
