//! The other services the SDK and routers touch: server, debug, users, queues, projects,
//! models, events.

use super::Call;
use crate::clearml_server::error::ApiError;
use crate::clearml_server::query::{self, Collection};
use crate::clearml_server::store::{State, new_id, now_iso};
use serde_json::{Value, json};

pub const SERVER_BUILD: &str = "test-server";

const QUEUES: Collection = Collection {
    list_fields: &["id", "tags", "system_tags"],
    enums: &[],
};
const PROJECTS: Collection = Collection {
    list_fields: &["id", "tags", "system_tags", "parent"],
    enums: &[],
};
const MODELS: Collection = Collection {
    list_fields: &[
        "id",
        "tags",
        "system_tags",
        "project",
        "task",
        "framework",
        "user",
    ],
    enums: &[],
};

/// `auth.login` is answered by the HTTP layer, which also sets the cookie.
pub fn auth_login_placeholder(_: &mut State, _: &Call) -> Result<Value, ApiError> {
    Err(ApiError::general("auth.login is handled by the HTTP layer"))
}

/// `server.info` from 2.12 on: no `uid` (the 2.12 handler calls the base one and adds
/// `api_version` = the highest endpoint version; `services/server/__init__.py:59-77` at v2.3.0).
pub fn server_info(state: &mut State, _: &Call) -> Result<Value, ApiError> {
    Ok(json!({
        "version": state.release.version, "build": SERVER_BUILD, "commit": "0000000",
        "api_version": state.release.api_string(),
    }))
}

pub fn debug_ping(_: &mut State, _: &Call) -> Result<Value, ApiError> {
    Ok(json!({"msg": "ClearML server"}))
}

pub fn users_get_current_user(_: &mut State, call: &Call) -> Result<Value, ApiError> {
    let i = &call.identity;
    Ok(json!({
        "user": {
            "id": i.user, "name": i.user_name, "given_name": i.user_name, "family_name": "",
            "company": {"id": i.company, "name": i.company_name},
            "role": i.role, "email": format!("{}@example.invalid", i.user),
            "created": now_iso(), "preferences": {}, "avatar": null,
        },
        "getting_started": null,
        "settings": {"max_download_items": 1000},
    }))
}

/// Vaults are an Enterprise feature; an advanced-feature-set server answers with none.
pub fn users_get_vaults(_: &mut State, _: &Call) -> Result<Value, ApiError> {
    Ok(json!({"vaults": [], "total": 0}))
}

pub fn users_get_all(state: &mut State, _: &Call) -> Result<Value, ApiError> {
    let users: Vec<Value> = state
        .credentials
        .iter()
        .map(|c| json!({"id": c.identity.user, "name": c.identity.user_name}))
        .collect();
    Ok(json!({"users": users}))
}

pub fn queues_get_all(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let page = query::get_all(&state.queues, &call.data, &QUEUES, None, &mut state.scrolls)?;
    let mut out = json!({"queues": page.items});
    if let Some(s) = page.scroll_id {
        out["scroll_id"] = json!(s);
    }
    Ok(out)
}

pub fn queues_get_by_id(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = call.str("queue").unwrap_or_default();
    state
        .queues
        .iter()
        .find(|q| q["id"] == id)
        .map(|q| json!({"queue": q}))
        .ok_or_else(|| ApiError::invalid_queue_id(id))
}

pub fn queues_get_default(state: &mut State, _: &Call) -> Result<Value, ApiError> {
    state
        .queues
        .iter()
        .find(|q| {
            q["system_tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("default")))
        })
        .map(|q| json!({"id": q["id"], "name": q["name"]}))
        .ok_or_else(|| {
            ApiError::plain(
                400,
                707,
                "No queue is tagged as the default queue for this company",
            )
        })
}

pub fn queues_create(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let name = call.str("name").unwrap_or_default();
    if state.queues.iter().any(|q| q["name"] == name) {
        return Err(ApiError::expected_unique_data(&[("name", json!(name))]));
    }
    let tags: Vec<&str> = call
        .data
        .get("system_tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let id = state.add_queue(name, &tags);
    Ok(json!({"id": id}))
}

pub fn projects_get_all(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let page = query::get_all(
        &state.projects,
        &call.data,
        &PROJECTS,
        None,
        &mut state.scrolls,
    )?;
    let mut out = json!({"projects": page.items});
    if let Some(s) = page.scroll_id {
        out["scroll_id"] = json!(s);
    }
    Ok(out)
}

pub fn projects_get_by_id(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = call.str("project").unwrap_or_default();
    state
        .projects
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| json!({"project": p}))
        .ok_or_else(|| ApiError::invalid_project_id(id))
}

pub fn projects_create(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let name = call.str("name").unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(ApiError::plain(
            400,
            407,
            "Invalid project name: name must not be empty",
        ));
    }
    if state.projects.iter().any(|p| p["name"] == name.as_str()) {
        return Err(ApiError::expected_unique_data(&[("name", json!(name))]));
    }
    // Sub-projects (`a/b`) get their parents created, as the real server does.
    if let Some((parent, _)) = name.rsplit_once('/')
        && !state.projects.iter().any(|p| p["name"] == parent)
    {
        let parent_call = Call {
            data: json!({"name": parent})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            batch: None,
            identity: call.identity.clone(),
        };
        projects_create(state, &parent_call)?;
    }
    let id = new_id();
    let now = now_iso();
    state.projects.push(json!({
        "id": id, "name": name, "basename": name.rsplit('/').next().unwrap_or(&name),
        "description": call.str("description").unwrap_or_default(),
        "user": call.identity.user, "company": call.identity.company, "created": now,
        "last_update": now, "tags": call.data.get("tags").cloned().unwrap_or(json!([])),
        "system_tags": call.data.get("system_tags").cloned().unwrap_or(json!([])),
        "default_output_destination": call.data.get("default_output_destination").cloned(),
    }));
    Ok(json!({"id": id}))
}

pub fn models_get_all(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let page = query::get_all(&state.models, &call.data, &MODELS, None, &mut state.scrolls)?;
    let mut out = json!({"models": page.items});
    if let Some(s) = page.scroll_id {
        out["scroll_id"] = json!(s);
    }
    Ok(out)
}

pub fn models_get_by_id(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = call.str("model").unwrap_or_default();
    state
        .models
        .iter()
        .find(|m| m["id"] == id)
        .map(|m| json!({"model": m}))
        .ok_or_else(|| ApiError::invalid_model_id(id))
}

/// Events are accepted and counted, not stored: nothing a router or these tests read.
pub fn events_add(_: &mut State, _: &Call) -> Result<Value, ApiError> {
    Ok(json!({"added": 1, "errors": 0, "errors_info": {}}))
}

pub fn events_add_batch(_: &mut State, call: &Call) -> Result<Value, ApiError> {
    let n = call.batch.as_ref().map(Vec::len).unwrap_or(0);
    if n == 0 {
        return Err(ApiError::plain(400, 17, "Batch request contains no items"));
    }
    Ok(json!({"added": n, "errors": 0, "errors_info": {}}))
}
