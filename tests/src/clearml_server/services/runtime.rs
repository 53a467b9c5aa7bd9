//! `tasks.edit_runtime` as clearml-server v2.3.0 (API 2.34) has it: per-key `$set` / `$unset`
//! on `runtime` in one update of the task document (atomic per call), keys escaped by
//! `ParameterKeyEscaper` on the way in and never unescaped on the way out.
//!
//! Sources (clearml/clearml-server at tag v2.3.0, commit b396096):
//! - `apiserver/services/tasks.py:1425-1436`: the endpoint; it passes `force=True` whatever the
//!   request says, and answers `{"updated": n}`.
//! - `apiserver/apimodels/tasks.py:86-92,154-156`: `task` (required string), `force` (bool),
//!   `add_or_update` (`DictField()`: any value types), `remove` (`ListField([str])`). The
//!   endpoint does not validate the JSON schema (`validate_schema` defaults to false,
//!   `service_repo/__init__.py:17-24`, `endpoint.py:56-67`), so the schema's
//!   `additionalProperties {type: string}` (`schema/services/tasks.conf:495-531`) is not
//!   enforced: numbers stay numbers.
//! - `apiserver/bll/task/task_bll.py:98-126`: find the task for update, build
//!   `set__runtime__<escaped>` / `unset__runtime__<escaped>`, nothing to do = 0, else
//!   `update_task` (`bll/task/utils.py:265-272`: `last_change`, `last_changed_by`,
//!   `last_update`), which answers 1 (documents matched).
//! - `apiserver/bll/task/utils.py:214-262`: the task must be of the caller's company
//!   (else 400/101 with `id` and `company`) and, with `force`, `created`, `queued` or
//!   `in_progress` (else 400/110 `expected=created`).
//! - `apiserver/utilities/parameter_key_escaper.py:17-33`: the escaping, see [`escape_key`].

use super::Call;
use super::tasks::{existing_for_write, run_after_edit, status_of, touch};
use crate::clearml_server::error::ApiError;
use crate::clearml_server::store::State;
use serde_json::{Map, Value, json};

/// `ParameterKeyEscaper.escape`: strip; empty is refused; `%` → `%%`, then `.` → `%2E`,
/// `$` → `%24`, `__` → `%_%_`; a leading `_` → `%_`. The stored key is the escaped one and
/// reads return it as stored: `_ROUTER_NAME` lands as `%_ROUTER_NAME`, `endpoint__ui` as
/// `endpoint%_%_ui`, so only keys this leaves unchanged read back under their own name.
pub fn escape_key(key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(ApiError::validation("Empty key is not allowed"));
    }
    let mut escaped = key
        .replace('%', "%%")
        .replace('.', "%2E")
        .replace('$', "%24")
        .replace("__", "%_%_");
    if let Some(rest) = escaped.strip_prefix('_') {
        escaped = format!("%_{rest}");
    }
    Ok(escaped)
}

/// Python's `str()` of a JSON value, as a jsonmodels message prints the offending value.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// An `EditRuntimeRequest`.
struct EditRuntime {
    task: String,
    add_or_update: Map<String, Value>,
    remove: Vec<String>,
}

/// The request as `EditRuntimeRequest` parses it; a jsonmodels error becomes 400/12 with its
/// arguments lower-cased and joined (`service_repo/validators.py:36-39`).
fn parse(call: &Call) -> Result<EditRuntime, ApiError> {
    let wrong_type = |kind: &str, v: &Value| {
        ApiError::validation(format!(
            "value is wrong, expected type \"{kind}\" {}",
            py_str(v)
        ))
    };
    let task = match call.data.get("task") {
        None | Some(Value::Null) => {
            return Err(ApiError::validation(
                "error for field 'task'. field is required!",
            ));
        }
        Some(Value::String(t)) => t.clone(),
        Some(other) => return Err(wrong_type("str", other)),
    };
    let add = match call.data.get("add_or_update") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(wrong_type("dict", other)),
    };
    let remove = match call.data.get("remove") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::validation(format!(
                    "all items must be instances of \"str\", and not \"{}\".",
                    py_type(other)
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("list", other)),
    };
    Ok(EditRuntime {
        task,
        add_or_update: add,
        remove,
    })
}

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Statuses whose runtime `tasks.edit_runtime` may change (`created`, plus the running ones
/// since the endpoint always forces).
const EDITABLE: &[&str] = &["created", "queued", "in_progress"];

pub fn edit_runtime(state: &mut State, call: &Call) -> Result<Value, ApiError> {
    let EditRuntime {
        task: id,
        add_or_update: add,
        remove,
    } = parse(call)?;
    let company = call.identity.company.clone();
    let task = existing_for_write(state, &id, &company)?;
    let status = status_of(task);
    if !EDITABLE.contains(&status.as_str()) {
        return Err(ApiError::invalid_task_status("created", &status));
    }
    let mut set = Vec::with_capacity(add.len());
    for (key, value) in add {
        set.push((escape_key(&key)?, value));
    }
    let mut unset = Vec::with_capacity(remove.len());
    for key in &remove {
        unset.push(escape_key(key)?);
    }
    if set.is_empty() && unset.is_empty() {
        return Ok(json!({"updated": 0}));
    }
    if let Some((key, _)) = set.iter().find(|(k, _)| unset.contains(k)) {
        // MongoDB refuses one update that both sets and unsets a path; the server has no
        // handler for that, so it surfaces as an unhandled error.
        return Err(ApiError::general(format!(
            "Updating the path 'runtime.{key}' would create a conflict at 'runtime'"
        )));
    }
    let runtime = task
        .entry("runtime")
        .or_insert_with(|| Value::Object(Map::new()));
    if !runtime.is_object() {
        *runtime = Value::Object(Map::new());
    }
    if let Value::Object(runtime) = runtime {
        for (key, value) in set {
            runtime.insert(key, value);
        }
        for key in &unset {
            runtime.remove(key);
        }
    }
    touch(task, &call.identity.user);
    run_after_edit(state, &id);
    Ok(json!({"updated": 1}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_as_the_server_escapes_them() {
        for (key, stored) in [
            ("endpoint", "endpoint"),
            ("browser_endpoint", "browser_endpoint"),
            ("external_tcp_port", "external_tcp_port"),
            ("_ROUTER_NAME", "%_ROUTER_NAME"),
            ("endpoint__ui", "endpoint%_%_ui"),
            ("_PORT__1", "%_PORT%_%_1"),
            ("a.b$c%d", "a%2Eb%24c%%d"),
            ("___x", "%_%__x"),
            ("  padded ", "padded"),
        ] {
            assert_eq!(escape_key(key).unwrap(), stored, "{key}");
        }
        let e = escape_key("  ").expect_err("empty");
        assert_eq!((e.code, e.subcode), (400, 12));
    }
}
