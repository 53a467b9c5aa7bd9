//! `tasks.*`: what routers and the SDK call, with the real server's rules: `runtime` is a plain
//! field replaced whole by `tasks.edit`; `tasks.edit` without `force` only on `created` tasks
//! (400/110); `tasks.reset` clears `runtime` and `execution.queue` but keeps `system_tags`;
//! hidden tasks are found by `get_by_id` and by `get_all` with `search_hidden` or `id`; a caller
//! reads its own company's tasks and public ones, and writes only its own company's
//! (`database/model/base.py:779-782`, `bll/task/utils.py:214-231` at v2.3.0).

use super::Call;
use crate::clearml_server::error::ApiError;
use crate::clearml_server::query::{self, Collection};
use crate::clearml_server::store::{State, TASK_STATUSES, now_iso, set_path};
use serde_json::{Map, Value, json};

/// `Task.get_all_query_options` (`database/model/task/task.py:232-250` at v2.3.0).
pub const TASKS: Collection = Collection {
    list_fields: &[
        "id",
        "user",
        "tags",
        "system_tags",
        "type",
        "status",
        "project",
        "parent",
        "hyperparams.*",
        "execution.queue",
        "models.input.model",
    ],
    enums: &[
        ("status", TASK_STATUSES),
        (
            "type",
            &[
                "training",
                "testing",
                "inference",
                "data_processing",
                "application",
                "monitor",
                "controller",
                "optimizer",
                "service",
                "qc",
                "custom",
            ],
        ),
    ],
};

/// Fields `tasks.edit` writes besides `task` and `force` (`tasks.conf`, `edit`). Other keys
/// are ignored, as the real server does: the SDK sends `"method": "get"` in every body.
const EDIT_FIELDS: &[&str] = &[
    "name",
    "tags",
    "system_tags",
    "type",
    "comment",
    "parent",
    "project",
    "output_dest",
    "execution",
    "script",
    "hyperparams",
    "configuration",
    "models",
    "container",
    "runtime",
];

/// Fields `tasks.update` accepts besides `task`.
const UPDATE_FIELDS: &[&str] = &[
    "name",
    "tags",
    "system_tags",
    "comment",
    "project",
    "output__error",
    "created",
];

/// Fields `tasks.create` stores from the request.
const CREATE_FIELDS: &[&str] = &[
    "name",
    "type",
    "tags",
    "system_tags",
    "comment",
    "parent",
    "project",
    "input",
    "output_dest",
    "execution",
    "script",
    "hyperparams",
    "configuration",
    "models",
    "container",
    "runtime",
];

pub(super) fn task_id(call: &Call) -> Result<&str, ApiError> {
    call.str("task")
        .ok_or_else(|| ApiError::validation("task: expected a string"))
}

/// The task `id` of `company` for writing (`get_task_with_write_access`): another company's
/// task does not exist for the caller.
pub(super) fn existing_for_write<'a>(
    state: &'a mut State,
    id: &str,
    company: &str,
) -> Result<&'a mut Map<String, Value>, ApiError> {
    state
        .task_mut(id)
        .filter(|t| t.get("company").and_then(Value::as_str) == Some(company))
        .ok_or_else(|| ApiError::invalid_task_id_of(id, company))
}

pub(super) fn existing<'a>(
    state: &'a mut State,
    id: &str,
    call: &Call,
) -> Result<&'a mut Map<String, Value>, ApiError> {
    existing_for_write(state, id, &call.identity.company)
}

pub(super) fn status_of(task: &Map<String, Value>) -> String {
    task.get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string()
}

pub(super) fn touch(task: &mut Map<String, Value>, user: &str) -> String {
    let now = now_iso();
    task.insert("last_update".into(), json!(now));
    task.insert("last_change".into(), json!(now));
    task.insert("last_changed_by".into(), json!(user));
    now
}

pub(super) fn set_status(
    task: &mut Map<String, Value>,
    status: &str,
    user: &str,
    call: &Call,
) -> Value {
    let now = touch(task, user);
    task.insert("status".into(), json!(status));
    task.insert("status_changed".into(), json!(now));
    task.insert(
        "status_reason".into(),
        json!(call.str("status_reason").unwrap_or("")),
    );
    task.insert(
        "status_message".into(),
        json!(call.str("status_message").unwrap_or("")),
    );
    json!({"updated": 1, "fields": {"status": status, "status_changed": now, "last_update": now}})
}

pub fn get_all(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let page = query::get_all(
        &state.tasks,
        &call.data,
        &TASKS,
        Some(&call.identity.company),
        &mut state.scrolls,
    )?;
    let mut out = json!({"tasks": page.items});
    if let Some(scroll) = page.scroll_id {
        out["scroll_id"] = json!(scroll);
    }
    Ok(out)
}

pub fn get_by_id(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?;
    let task = state
        .task(id)
        .filter(|t| query::visible_to(t, &call.identity.company))
        .ok_or_else(|| ApiError::invalid_task_id(id))?;
    let answer = json!({"task": task});
    if let Some(hook) = state.after_read.as_mut()
        && let Some(Value::Object(task)) = state.tasks.iter_mut().find(|t| t["id"] == id)
    {
        let before = task.get("runtime").cloned();
        if let Some(Value::Object(runtime)) = task.get_mut("runtime") {
            hook(id, runtime);
        }
        if task.get("runtime") != before.as_ref() {
            task.insert("last_update".into(), json!(now_iso()));
        }
    }
    Ok(answer)
}

pub fn create(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let name = call
        .str("name")
        .ok_or_else(|| ApiError::validation("name: expected a string"))?;
    let task_type = call
        .str("type")
        .ok_or_else(|| ApiError::validation("type: expected a string"))?;
    check_enum("type", task_type)?;
    check_project(state, call.data.get("project"))?;
    let mut doc = state.new_task_doc(name, task_type);
    for field in CREATE_FIELDS {
        if let Some(v) = call.data.get(*field) {
            doc.insert((*field).to_string(), v.clone());
        }
    }
    doc.insert("user".into(), json!(call.identity.user));
    doc.insert("company".into(), json!(call.identity.company));
    let id = doc.get("id").cloned().unwrap_or(Value::Null);
    state.tasks.push(Value::Object(doc));
    Ok(json!({"id": id}))
}

fn check_enum(field: &str, value: &str) -> Result<(), ApiError> {
    let allowed = TASKS
        .enums
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, v)| *v)
        .unwrap_or(&[]);
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{field}: '{value}' is not one of {allowed:?}"
        )))
    }
}

fn check_project(state: &State, project: Option<&Value>) -> Result<(), ApiError> {
    match project {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(p)) if p.is_empty() => Ok(()),
        Some(Value::String(p)) if state.projects.iter().any(|x| x["id"] == p.as_str()) => Ok(()),
        Some(Value::String(p)) => Err(ApiError::invalid_project_id(p)),
        Some(other) => Err(ApiError::validation(format!(
            "project: {other} is not of type 'string'"
        ))),
    }
}

fn check_types(call: &Call) -> Result<(), ApiError> {
    for (field, want_object) in [
        ("runtime", true),
        ("execution", true),
        ("script", true),
        ("hyperparams", true),
        ("configuration", true),
        ("models", true),
        ("container", true),
        ("tags", false),
        ("system_tags", false),
    ] {
        match call.data.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(_)) if want_object => {}
            Some(Value::Array(items)) if !want_object && items.iter().all(Value::is_string) => {}
            Some(other) => {
                let kind = if want_object { "object" } else { "array" };
                return Err(ApiError::validation(format!(
                    "{field}: {other} is not of type '{kind}'"
                )));
            }
        }
    }
    // `runtime` is a `SafeDictField` (`database/model/task/task.py:289`, `database/fields.py:
    // 139-191` at v2.3.0): any values, but string keys that are not empty and do not start
    // with `$`.
    if let Some(Value::Object(runtime)) = call.data.get("runtime")
        && let Some(k) = runtime.keys().find(|k| k.is_empty() || k.starts_with('$'))
    {
        return Err(ApiError::validation(format!(
            "runtime: invalid dictionary key {k:?}: empty or starting with \"$\""
        )));
    }
    Ok(())
}

pub fn edit(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    check_types(call)?;
    if let Some(t) = call.str("type") {
        check_enum("type", t)?;
    }
    check_project(state, call.data.get("project"))?;
    let force = call.flag("force");
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    if status != "created" && !force {
        return Err(ApiError::invalid_task_status("created", &status));
    }
    let mut fields = Map::new();
    for field in EDIT_FIELDS {
        if let Some(v) = call.data.get(*field) {
            task.insert((*field).to_string(), v.clone());
            fields.insert((*field).to_string(), v.clone());
        }
    }
    let now = touch(task, &user);
    fields.insert("last_change".into(), json!(now));
    fields.insert("last_changed_by".into(), json!(user));
    if call.data.contains_key("runtime") {
        run_after_edit(state, &id);
    }
    Ok(json!({"updated": 1, "fields": fields}))
}

/// Runs the admin's after-edit hook, if any, on the stored runtime of task `id`.
pub(super) fn run_after_edit(state: &mut State, id: &str) {
    if let Some(hook) = state.after_edit.as_mut()
        && let Some(Value::Object(runtime)) = state
            .tasks
            .iter_mut()
            .find(|t| t["id"] == id)
            .and_then(|t| t.get_mut("runtime"))
    {
        hook(id, runtime);
    }
}

pub fn update(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    check_types(call)?;
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let mut fields = Map::new();
    for field in UPDATE_FIELDS {
        if let Some(v) = call.data.get(*field) {
            set_path(task, &field.replace("__", "."), v.clone());
            fields.insert((*field).to_string(), v.clone());
        }
    }
    touch(task, &user);
    Ok(json!({"updated": 1, "fields": fields}))
}

pub fn reset(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let force = call.flag("force");
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    if (status == "published" || status == "publishing") && !force {
        return Err(ApiError::invalid_task_status("not published", &status));
    }
    let dequeued = if status == "queued" {
        json!({"removed": 1})
    } else {
        json!({})
    };
    task.insert("runtime".into(), json!({}));
    set_path(task, "execution.queue", Value::Null);
    for field in ["started", "completed", "published", "last_worker"] {
        task.remove(field);
    }
    task.insert("last_iteration".into(), json!(0));
    task.insert("output".into(), json!({}));
    let now = touch(task, &user);
    task.insert("status".into(), json!("created"));
    task.insert("status_changed".into(), json!(now));
    task.insert("status_message".into(), json!(""));
    task.insert("status_reason".into(), json!("reset"));
    Ok(json!({
        "updated": 1, "dequeued": dequeued, "deleted_models": 0, "urls": {},
        "fields": {"status": "created", "runtime": {}, "execution.queue": null, "last_update": now},
    }))
}

/// `tasks.stop`: a queued task is dequeued and stopped; a running development task (or any with
/// `force`, or one no worker runs) is stopped at once; one run by an agent only gets
/// `status_message: "stopping"` for its agent to act on.
pub fn stop(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let force = call.flag("force");
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    let dev = task
        .get("system_tags")
        .and_then(Value::as_array)
        .is_some_and(|t| t.contains(&json!("development")));
    let has_worker = task
        .get("last_worker")
        .and_then(Value::as_str)
        .is_some_and(|w| !w.is_empty());
    match status.as_str() {
        "queued" => {
            set_path(task, "execution.queue", Value::Null);
            Ok(set_status(task, "stopped", &user, call))
        }
        "in_progress" if dev || force || !has_worker => {
            Ok(set_status(task, "stopped", &user, call))
        }
        "in_progress" => {
            let now = touch(task, &user);
            task.insert("status_message".into(), json!("stopping"));
            Ok(json!({"updated": 1, "fields": {"status_message": "stopping", "last_update": now}}))
        }
        _ if force => Ok(set_status(task, "stopped", &user, call)),
        _ => Err(ApiError::invalid_task_status("in_progress", &status)),
    }
}

/// Status changes reported by the task itself (`stopped`, `started`, `completed`, `failed`,
/// `close`): allowed from the listed statuses, or any with `force`.
fn transition(state: &mut State, call: &Call, to: &str, from: &[&str]) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let force = call.flag("force");
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    if !force && !from.contains(&status.as_str()) {
        return Err(ApiError::invalid_task_status(&from.join(" or "), &status));
    }
    let out = set_status(task, to, &user, call);
    if to == "in_progress" {
        task.insert("started".into(), json!(now_iso()));
    }
    if ["completed", "stopped", "failed", "closed"].contains(&to) {
        task.insert("completed".into(), json!(now_iso()));
    }
    Ok(out)
}

pub fn stopped(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    transition(
        state,
        call,
        "stopped",
        &["in_progress", "queued", "created"],
    )
}
pub fn started(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    transition(
        state,
        call,
        "in_progress",
        &["created", "queued", "in_progress", "stopped"],
    )
}
pub fn completed(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    transition(state, call, "completed", &["in_progress", "stopped"])
}
pub fn failed(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    transition(
        state,
        call,
        "failed",
        &["in_progress", "created", "queued", "stopped"],
    )
}
pub fn close(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    transition(state, call, "closed", &["stopped", "completed", "failed"])
}

pub fn ping(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let task = existing(state, &id, call)?;
    task.insert("last_update".into(), json!(now_iso()));
    Ok(json!({}))
}

pub fn delete(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    if status == "in_progress" && !call.flag("force") {
        return Err(ApiError::invalid_task_status("not in_progress", &status));
    }
    state.tasks.retain(|t| t["id"] != id.as_str());
    Ok(json!({"deleted": 1, "updated_children": 0, "updated_models": 0, "events": {}, "urls": {}}))
}

/// `{section: {name: {section, name, value, ...}}}` maps edited by the hyper-parameter and
/// configuration calls.
fn edit_section_map(
    state: &mut State,
    call: &Call,
    field: &str,
    items_key: &str,
    sectioned: bool,
) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let replace = call
        .str("replace_hyperparams")
        .unwrap_or("none")
        .to_string();
    let force = call.flag("force");
    let items = call
        .data
        .get(items_key)
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| ApiError::missing_required_fields(&[items_key]))?;
    // Only `properties` (any case, normalized): any status, as `HyperParams.edit_params`
    // allows (`bll/task/hyperparams.py:55-64,110-126` at v2.3.0; the k8s glue relies on it).
    let properties_only = sectioned
        && items.iter().all(|i| {
            i["section"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("properties"))
        });
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut i| {
            if properties_only {
                i["section"] = json!("properties");
            }
            i
        })
        .collect();
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    let running_ok = force && (status == "queued" || status == "in_progress");
    if status != "created" && !running_ok && !properties_only {
        return Err(ApiError::invalid_task_status("created", &status));
    }
    let replace_all = replace == "all" || call.flag("replace_configuration");
    let map = task.entry(field.to_string()).or_insert_with(|| json!({}));
    if replace_all || !map.is_object() {
        *map = json!({});
    }
    let Some(map) = map.as_object_mut() else {
        return Ok(json!({"updated": 0}));
    };
    for item in items {
        let name = item["name"].as_str().unwrap_or_default().to_string();
        if sectioned {
            let section = item["section"].as_str().unwrap_or_default().to_string();
            let sec = map.entry(section).or_insert_with(|| json!({}));
            if let Some(sec) = sec.as_object_mut() {
                sec.insert(name, item);
            }
        } else {
            map.insert(name, item);
        }
    }
    touch(task, &user);
    Ok(json!({"updated": 1}))
}

pub fn edit_hyper_params(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    edit_section_map(state, call, "hyperparams", "hyperparams", true)
}

pub fn edit_configuration(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    edit_section_map(state, call, "configuration", "configuration", false)
}

pub fn add_or_update_artifacts(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let artifacts = call
        .data
        .get("artifacts")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| ApiError::missing_required_fields(&["artifacts"]))?;
    let task = existing(state, &id, call)?;
    let exec = task.entry("execution").or_insert_with(|| json!({}));
    if !exec.is_object() {
        *exec = json!({});
    }
    let list = exec
        .as_object_mut()
        .map(|e| e.entry("artifacts").or_insert_with(|| json!([])));
    let mut updated = 0;
    if let Some(Value::Array(list)) = list {
        for a in artifacts {
            let key = (a["key"].clone(), a["mode"].clone());
            list.retain(|x| (x["key"].clone(), x["mode"].clone()) != key);
            list.push(a);
            updated += 1;
        }
    }
    Ok(json!({"updated": updated}))
}

pub fn add_or_update_model(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let kind = call.str("type").unwrap_or("output").to_string();
    let entry = json!({"name": call.str("name").unwrap_or_default(), "model": call.str("model").unwrap_or_default()});
    let task = existing(state, &id, call)?;
    let models = task.entry("models").or_insert_with(|| json!({}));
    if let Some(models) = models.as_object_mut()
        && let Value::Array(list) = models.entry(kind).or_insert_with(|| json!([]))
    {
        list.retain(|m| m["name"] != entry["name"]);
        list.push(entry);
    }
    Ok(json!({"updated": 1}))
}

/// `tasks.set_requirements`: stored as `script.requirements`, like the real server.
pub fn set_requirements(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let id = task_id(call)?.to_string();
    let requirements = call
        .data
        .get("requirements")
        .cloned()
        .ok_or_else(|| ApiError::missing_required_fields(&["requirements"]))?;
    let user = call.identity.user.clone();
    let task = existing(state, &id, call)?;
    let status = status_of(task);
    if status != "created" && status != "in_progress" && !call.flag("force") {
        return Err(ApiError::invalid_task_status(
            "created or in_progress",
            &status,
        ));
    }
    set_path(task, "script.requirements", requirements);
    touch(task, &user);
    Ok(json!({"updated": 1, "fields": {}}))
}
