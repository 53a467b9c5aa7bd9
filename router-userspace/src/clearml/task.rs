//! A task as the router sees it: the few fields it asks for, read leniently (a task is untrusted
//! input; one odd task must not stop the others from being served), and its runtime keys: read,
//! named per endpoint, and compared with the ones the router writes (the planner and the client
//! both ask whether a write is already applied).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The system tag a task carries to be routed.
pub const EXTERNAL_SERVICE_TAG: &str = "external_service";
/// The system tag of archived tasks (their routes go).
pub const ARCHIVED_TAG: &str = "archived";
/// The status of a running task.
pub const IN_PROGRESS: &str = "in_progress";

/// The user property the open-source Kubernetes glue writes the user's queue name into, once
/// it moved the task to its own `k8s_scheduler` queue (clearml-agent v3.0.3
/// `clearml_agent/glue/k8s.py:222,509-519` moves it, `:584,747-800,301-325` writes the name).
pub const K8S_QUEUE_PROPERTY: &str = "hyperparams.properties.k8s-queue";

/// The projection sent as `only_fields`.
pub const ONLY_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "system_tags",
    "execution.queue",
    K8S_QUEUE_PROPERTY,
    "runtime",
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub status: String,
    pub system_tags: Vec<String>,
    /// `execution.queue`: the id of the queue the task was last enqueued to.
    pub queue: Option<String>,
    /// [`K8S_QUEUE_PROPERTY`]: the name of the queue the user chose, when the open-source
    /// Kubernetes glue replaced `execution.queue` with its own.
    pub k8s_queue: Option<String>,
    /// `runtime`: free-form; values may be strings or numbers.
    pub runtime: Map<String, Value>,
}

impl Task {
    /// Reads one entry of `data.tasks`. Only a missing `id` is an error; other odd fields read as
    /// absent.
    pub fn from_json(v: &Value) -> Result<Task, String> {
        let obj = v.as_object().ok_or("a task entry is not a JSON object")?;
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a task entry has no string id")?
            .to_string();
        let text = |k: &str| {
            obj.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_default()
        };
        let system_tags = obj
            .get("system_tags")
            .and_then(Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let queue = obj
            .get("execution")
            .and_then(|e| e.get("queue"))
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
            .map(str::to_string);
        let k8s_queue = obj
            .get("hyperparams")
            .and_then(|h| h.get("properties"))
            .and_then(|p| p.get("k8s-queue"))
            .and_then(|q| q.get("value"))
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
            .map(str::to_string);
        let runtime = obj
            .get("runtime")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Task {
            id,
            name: text("name"),
            status: text("status"),
            system_tags,
            queue,
            k8s_queue,
            runtime,
        })
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.system_tags.iter().any(|t| t == tag)
    }

    /// A runtime value as text: strings as they are, numbers printed; anything else is absent.
    pub fn runtime_str(&self, key: &str) -> Option<String> {
        runtime_str(&self.runtime, key)
    }

    /// Whether this task wants routes from a router listening on the queues `queue_ids` named
    /// `queue_names` (both empty = all): running, tagged, not archived, and enqueued to one of
    /// them, or moved by the open-source Kubernetes glue from one of them.
    pub fn wants_routes(&self, queue_ids: &[String], queue_names: &[String]) -> bool {
        let any_queue = queue_ids.is_empty() && queue_names.is_empty();
        let in_queue = |queue: &Option<String>, listened: &[String]| {
            queue
                .as_ref()
                .is_some_and(|q| listened.iter().any(|l| l == q))
        };
        self.status == IN_PROGRESS
            && self.has_tag(EXTERNAL_SERVICE_TAG)
            && !self.has_tag(ARCHIVED_TAG)
            && (any_queue
                || in_queue(&self.queue, queue_ids)
                || in_queue(&self.k8s_queue, queue_names))
    }
}

/// `runtime[key]` as text (strings trimmed, integers printed); empty strings read as absent.
pub fn runtime_str(runtime: &Map<String, Value>, key: &str) -> Option<String> {
    match runtime.get(key)? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The runtime key `base` for endpoint `name` (`""` = the default endpoint): `base__name`.
pub fn runtime_key(base: &str, name: &str) -> String {
    if name.is_empty() {
        base.to_string()
    } else {
        format!("{base}__{name}")
    }
}

/// Whether every key of `patch` already has its value in `runtime` (numbers and their string
/// spellings count as equal: tasks write either). A `null` in a patch means "no such key".
pub fn applied(runtime: &Map<String, Value>, patch: &BTreeMap<String, Value>) -> bool {
    patch.iter().all(|(k, v)| holds(runtime, k, v))
}

/// The entries of `patch` that `runtime` does not hold yet (see [`applied`]).
pub fn pending(
    runtime: &Map<String, Value>,
    patch: &BTreeMap<String, Value>,
) -> BTreeMap<String, Value> {
    patch
        .iter()
        .filter(|(k, v)| !holds(runtime, k, v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn holds(runtime: &Map<String, Value>, key: &str, value: &Value) -> bool {
    match runtime.get(key) {
        current if value.is_null() => current.is_none_or(Value::is_null),
        Some(current) if current == value => true,
        Some(_) => {
            let mut probe = Map::new();
            probe.insert(key.to_string(), value.clone());
            runtime_str(runtime, key).is_some()
                && runtime_str(runtime, key) == runtime_str(&probe, key)
        }
        None => false,
    }
}

/// Writes `patch` into `runtime`: each key set, a `null` removing its key.
pub fn merge(runtime: &mut Map<String, Value>, patch: BTreeMap<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            runtime.remove(&k);
        } else {
            runtime.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_task_leniently() {
        let t = Task::from_json(&json!({
            "id": "abc", "name": "app", "status": "in_progress",
            "system_tags": ["external_service", 7],
            "execution": {"queue": "q1"},
            "runtime": {"_PORT": 7860, "_ADDRESS": " 10.0.0.5 ", "x": [1], "e": ""}
        }))
        .unwrap();
        assert_eq!(t.id, "abc");
        assert_eq!(t.system_tags, ["external_service"]);
        assert_eq!(t.queue.as_deref(), Some("q1"));
        assert_eq!(t.k8s_queue, None);
        let glued = Task::from_json(&json!({"id": "g", "hyperparams": {"properties": {
            "k8s-queue": {"section": "properties", "name": "k8s-queue", "value": "gpu"}}}}))
        .unwrap();
        assert_eq!(glued.k8s_queue.as_deref(), Some("gpu"));
        assert_eq!(t.runtime_str("_PORT").as_deref(), Some("7860"));
        assert_eq!(t.runtime_str("_ADDRESS").as_deref(), Some("10.0.0.5"));
        assert_eq!(t.runtime_str("x"), None);
        assert_eq!(t.runtime_str("e"), None);
        let odd =
            Task::from_json(&json!({"id": "x", "runtime": "str", "system_tags": "t"})).unwrap();
        assert!(odd.runtime.is_empty() && odd.system_tags.is_empty());
        assert!(Task::from_json(&json!({"name": "no id"})).is_err());
        assert!(Task::from_json(&json!(5)).is_err());
    }

    #[test]
    fn wants_routes_checks_status_tag_archive_and_queue() {
        let mut t = Task {
            id: "a".into(),
            status: "in_progress".into(),
            system_tags: vec!["external_service".into()],
            queue: Some("q1".into()),
            ..Task::default()
        };
        assert!(t.wants_routes(&[], &[]));
        assert!(t.wants_routes(&["q1".into()], &["gpu".into()]));
        assert!(!t.wants_routes(&["q2".into()], &["cpu".into()]));
        // Moved by the Kubernetes glue: the user's queue survives by name only.
        t.queue = Some("k8s-scheduler-id".into());
        t.k8s_queue = Some("gpu".into());
        assert!(t.wants_routes(&["q1".into()], &["gpu".into()]));
        assert!(!t.wants_routes(&["q1".into()], &["cpu".into()]));
        t.system_tags.push("archived".into());
        assert!(!t.wants_routes(&[], &[]));
        t.system_tags = vec!["external_service".into()];
        t.status = "stopped".into();
        assert!(!t.wants_routes(&[], &[]));
    }

    #[test]
    fn keys() {
        assert_eq!(runtime_key("_PORT", ""), "_PORT");
        assert_eq!(runtime_key("_PORT", "api"), "_PORT__api");
    }

    #[test]
    fn applied_compares_numbers_and_strings() {
        let runtime: Map<String, Value> =
            serde_json::from_value(json!({"p": "30001", "a": "x", "n": 5})).unwrap();
        let patch = |k: &str, v: Value| BTreeMap::from([(k.to_string(), v)]);
        assert!(applied(&runtime, &patch("p", json!(30001))));
        assert!(applied(&runtime, &patch("n", json!("5"))));
        assert!(!applied(&runtime, &patch("a", json!("y"))));
        assert!(!applied(&runtime, &patch("missing", json!(1))));
        let mut both = patch("p", json!(30001));
        both.insert("q".into(), json!(1));
        assert_eq!(pending(&runtime, &both), patch("q", json!(1)));
        // null: the key must be absent, and merging removes it.
        assert!(applied(&runtime, &patch("missing", Value::Null)));
        assert!(!applied(&runtime, &patch("a", Value::Null)));
        let mut merged = runtime.clone();
        merge(&mut merged, patch("a", Value::Null));
        merge(&mut merged, patch("b", json!("new")));
        assert_eq!(
            Value::Object(merged),
            json!({"p": "30001", "n": 5, "b": "new"})
        );
    }
}
