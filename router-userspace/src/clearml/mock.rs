//! A small in-process stand-in for the ClearML API, for unit tests of the client and the sync
//! engine (the full test server lives in `tests/src/clearml_server`). It speaks the envelope,
//! Basic login → Bearer tokens, paging with the 500 cap, `search_hidden`, `tasks.edit`
//! replacing the runtime dict whole, `tasks.edit_runtime` setting keys (when switched on:
//! otherwise 404/0 as on a server before 2.3.0); faults are injected per call.

use crate::config::ClearmlConfig;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client configuration the unit tests use against the server at `url`.
pub fn client_config(url: &str) -> ClearmlConfig {
    ClearmlConfig {
        api_host: Some(url.to_string()),
        access_key: "ak".into(),
        secret_key: "sk".into(),
        ssl_verify: true,
        ssl_verify_bundle: None,
        ca_bundle: None,
        listen_queues: Vec::new(),
        poll_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer HTTP 500 with an error envelope.
    Status500,
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 401 invalid_token (as for an expired token).
    Expired,
    /// Never answer within the client's timeout.
    Hang(std::time::Duration),
    /// Answer normally (to aim a later fault at a later call).
    Pass,
}

/// Runs on a task's runtime right after `tasks.edit` stored it.
pub type EditHook = Box<dyn FnMut(&mut Map<String, Value>) + Send>;

#[derive(Default)]
pub struct MockState {
    pub tasks: Vec<Map<String, Value>>,
    pub queues: Vec<(String, String)>,
    pub tokens: Vec<String>,
    pub logins: usize,
    pub calls: Vec<String>,
    /// Faults for the next calls (any endpoint but login), in order.
    pub faults: VecDeque<Fault>,
    /// Called after each `tasks.edit` (and `tasks.edit_runtime`), e.g. to simulate the task
    /// overwriting the runtime.
    pub after_edit: Option<EditHook>,
    /// Serve `tasks.edit_runtime` (server 2.3.0 and later).
    pub edit_runtime: bool,
}

pub type Shared = Arc<Mutex<MockState>>;

pub struct MockServer {
    pub url: String,
    pub state: Shared,
    _task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub async fn start() -> MockServer {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/v2.31/{call}", axum::routing::post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockServer {
            url,
            state,
            _task: task,
        }
    }

    pub fn add_task(&self, id: &str, runtime: Value) {
        let task = json!({
            "id": id, "name": format!("task {id}"), "status": "in_progress",
            "system_tags": ["external_service"], "execution": {"queue": "q-default"},
            "runtime": runtime,
        });
        self.state
            .lock()
            .unwrap()
            .tasks
            .push(task.as_object().unwrap().clone());
    }

    pub fn task(&self, id: &str) -> Map<String, Value> {
        self.state
            .lock()
            .unwrap()
            .tasks
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .expect("task exists")
    }

    pub fn set(&self, id: &str, field: &str, value: Value) {
        let mut s = self.state.lock().unwrap();
        let t = s.tasks.iter_mut().find(|t| t["id"] == id).expect("task");
        t.insert(field.into(), value);
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(fault);
    }

    pub fn calls(&self, name: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| *c == name)
            .count()
    }
}

fn envelope(code: u16, subcode: i64, msg: &str, data: Value) -> Response {
    let body = json!({
        "meta": {"result_code": code, "result_subcode": subcode, "result_msg": msg},
        "data": data,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

async fn handle(
    State(state): State<Shared>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let fault = {
        let mut s = state.lock().unwrap();
        s.calls.push(call.clone());
        if call == "auth.login" {
            // The only valid key pair is ak:sk.
            if auth != "Basic YWs6c2s=" {
                return envelope(401, 21, "bad credentials", json!({}));
            }
            s.logins += 1;
            let token = format!("tok{}", s.logins);
            s.tokens.push(token.clone());
            return envelope(200, 0, "OK", json!({"token": token}));
        }
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        if !s.tokens.iter().any(|t| t == token) {
            return envelope(401, 30, "invalid token", json!({}));
        }
        s.faults.pop_front()
    };
    match fault {
        Some(Fault::Status500) => return envelope(500, 102, "database unavailable", json!({})),
        Some(Fault::Garbage) => {
            return (StatusCode::OK, "<html>proxy error</html>").into_response();
        }
        Some(Fault::Expired) => {
            state.lock().unwrap().tokens.clear();
            return envelope(401, 30, "invalid token", json!({}));
        }
        Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
        Some(Fault::Pass) | None => {}
    }
    let mut s = state.lock().unwrap();
    match call.as_str() {
        "tasks.get_all" => {
            let ids: Option<Vec<&str>> = body["id"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect());
            let mut matching: Vec<&Map<String, Value>> = s
                .tasks
                .iter()
                .filter(|t| match &ids {
                    Some(ids) => ids.contains(&t["id"].as_str().unwrap_or("")),
                    None => {
                        body["status"]
                            .as_array()
                            .is_none_or(|st| st.contains(&t["status"]))
                            && body["system_tags"].as_array().is_none_or(|tags| {
                                tags.iter().any(|tag| {
                                    t["system_tags"].as_array().is_some_and(|a| a.contains(tag))
                                })
                            })
                            && body["execution.queue"]
                                .as_array()
                                .is_none_or(|q| q.contains(&t["execution"]["queue"]))
                            && body["hyperparams.properties.k8s-queue.value"]
                                .as_array()
                                .is_none_or(|q| {
                                    let name = t.get("hyperparams").map_or(&Value::Null, |h| {
                                        &h["properties"]["k8s-queue"]["value"]
                                    });
                                    q.contains(name)
                                })
                    }
                })
                .collect();
            matching.sort_by_key(|t| t["id"].as_str().unwrap_or("").to_string());
            let size = body["page_size"].as_u64().unwrap_or(500).min(500) as usize;
            let page = body["page"].as_u64().unwrap_or(0) as usize;
            let tasks: Vec<&Map<String, Value>> =
                matching.into_iter().skip(page * size).take(size).collect();
            envelope(200, 0, "OK", json!({ "tasks": tasks }))
        }
        "tasks.get_by_id" => {
            let id = body["task"].as_str().unwrap_or("");
            match s.tasks.iter().find(|t| t["id"] == id) {
                Some(t) => envelope(200, 0, "OK", json!({ "task": t })),
                None => envelope(400, 101, "Invalid task id", json!({})),
            }
        }
        "tasks.edit" | "tasks.edit_runtime" if call == "tasks.edit" || s.edit_runtime => {
            let id = body["task"].as_str().unwrap_or("").to_string();
            let mut hook = s.after_edit.take();
            let Some(t) = s.tasks.iter_mut().find(|t| t["id"] == id) else {
                return envelope(400, 101, "Invalid task id", json!({}));
            };
            if call == "tasks.edit" {
                let runtime = body["runtime"].as_object().cloned().unwrap_or_default();
                t.insert("runtime".into(), Value::Object(runtime));
            } else if let Some(Value::Object(rt)) = t.get_mut("runtime") {
                // Only keys the real server stores as they are reach this mock.
                for (k, v) in body["add_or_update"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                {
                    rt.insert(k, v);
                }
                for k in body["remove"].as_array().cloned().unwrap_or_default() {
                    rt.remove(k.as_str().unwrap_or_default());
                }
            }
            if let Some(h) = &mut hook
                && let Some(Value::Object(rt)) = t.get_mut("runtime")
            {
                h(rt);
            }
            s.after_edit = hook;
            envelope(200, 0, "OK", json!({"updated": 1}))
        }
        "queues.get_all" => {
            let pattern = body["name"].as_str().unwrap_or("");
            let name = pattern
                .trim_start_matches('^')
                .trim_end_matches('$')
                .replace('\\', "");
            let queues: Vec<Value> = s
                .queues
                .iter()
                .filter(|(_, n)| *n == name)
                .map(|(id, n)| json!({"id": id, "name": n}))
                .collect();
            envelope(200, 0, "OK", json!({ "queues": queues }))
        }
        // As the real server answers a call it does not have (`service_repo.py:180-194`).
        _ => envelope(404, 0, "Unable to find endpoint", json!({})),
    }
}
