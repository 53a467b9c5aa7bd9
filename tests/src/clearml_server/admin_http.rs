//! The admin side over HTTP (`/_admin/...`, documented in the module above): the same
//! operations as [`super::Admin`], for a server running in another process.

use super::{Admin, FaultSpec, Shared, TaskSpec};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;

type St = State<Arc<Shared>>;

fn admin(shared: &Arc<Shared>) -> Admin {
    Admin {
        shared: Arc::clone(shared),
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no task {id}")})),
    )
        .into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

pub fn router() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/tasks", post(create_task).get(list_tasks))
        .route(
            "/tasks/{id}",
            get(get_task).patch(patch_task).delete(delete_task),
        )
        .route("/tasks/{id}/status", post(set_status))
        .route("/queues", post(create_queue))
        .route("/faults", post(add_fault).delete(clear_faults))
        .route("/tokens/expire", post(expire_tokens))
        .route("/calls", get(calls))
}

async fn create_task(State(s): St, Json(spec): Json<TaskSpec>) -> Response {
    Json(json!({"id": admin(&s).create_task(spec)})).into_response()
}

async fn list_tasks(State(s): St) -> Response {
    Json(json!({"ids": admin(&s).task_ids()})).into_response()
}

async fn get_task(State(s): St, Path(id): Path<String>) -> Response {
    match admin(&s).task(&id) {
        Some(t) => Json(t).into_response(),
        None => not_found(&id),
    }
}

async fn patch_task(State(s): St, Path(id): Path<String>, Json(fields): Json<Value>) -> Response {
    if !fields.is_object() {
        return bad_request("expected an object of fields".into());
    }
    if admin(&s).update_task(&id, fields) {
        Json(json!({"updated": 1})).into_response()
    } else {
        not_found(&id)
    }
}

async fn delete_task(State(s): St, Path(id): Path<String>) -> Response {
    if admin(&s).delete_task(&id) {
        Json(json!({"deleted": 1})).into_response()
    } else {
        not_found(&id)
    }
}

async fn set_status(State(s): St, Path(id): Path<String>, Json(body): Json<Value>) -> Response {
    let Some(status) = body.get("status").and_then(Value::as_str) else {
        return bad_request("expected {\"status\": \"...\"}".into());
    };
    if !super::store::TASK_STATUSES.contains(&status) {
        return bad_request(format!("unknown status {status:?}"));
    }
    if admin(&s).set_status(&id, status) {
        Json(json!({"updated": 1})).into_response()
    } else {
        not_found(&id)
    }
}

async fn create_queue(State(s): St, Json(body): Json<Value>) -> Response {
    match body.get("name").and_then(Value::as_str) {
        Some(name) => Json(json!({"id": admin(&s).create_queue(name)})).into_response(),
        None => bad_request("expected {\"name\": \"...\"}".into()),
    }
}

async fn add_fault(State(s): St, Json(spec): Json<FaultSpec>) -> Response {
    match spec.kind() {
        Ok(kind) => {
            admin(&s).inject(kind, spec.count, spec.endpoint.as_deref());
            Json(json!({"added": 1})).into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn clear_faults(State(s): St) -> Response {
    admin(&s).clear_faults();
    Json(json!({"cleared": true})).into_response()
}

async fn expire_tokens(State(s): St) -> Response {
    admin(&s).expire_tokens();
    Json(json!({"expired": true})).into_response()
}

async fn calls(State(s): St) -> Response {
    Json(json!(admin(&s).call_counts())).into_response()
}
