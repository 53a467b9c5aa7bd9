//! Why a request is refused, written on the task: the reason goes to the endpoint's
//! [`ENDPOINT_ERROR_KEY`] (no leading `_`, so the ClearML web app lists it on the task's INFO
//! tab and the user sees why `wait_for_external_endpoint` never returns, not only the router's
//! log). Due only while the task does not already show that reason, so a refusal that holds is
//! written once, and a restarted router writes nothing new. The endpoint's own write-back
//! removes the key once the request is served.

use super::request::{Parsed, Refusal, mentions_endpoint, parse_task};
use super::settings::Settings;
use super::write_back::{ENDPOINT_ERROR_KEY, error_patch};
use crate::clearml::task::{Task, runtime_key};
use crate::endpoint::EndpointId;
use crate::validate::UpstreamPolicy;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// The reason to write on one task endpoint the router refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalWrite {
    pub key: EndpointId,
    pub task_name: String,
    /// Every refusal of the endpoint (an endpoint may ask for both protocols), joined.
    pub reason: String,
}

/// The refusals whose reason the task does not show yet. Skipped: a task the listing does not
/// hold under that id (an id too malformed to route is never written to) and a name the task
/// did not write as it is (a refused name is shortened for the log).
pub fn refusal_writes(tasks: &[Task], refused: &[Refusal]) -> Vec<RefusalWrite> {
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut reasons: BTreeMap<&EndpointId, (&str, Vec<&str>)> = BTreeMap::new();
    for r in refused {
        let entry = reasons
            .entry(&r.owner.id)
            .or_insert((r.owner.task_name.as_str(), Vec::new()));
        if !entry.1.contains(&r.reason.as_str()) {
            entry.1.push(&r.reason);
        }
    }
    reasons
        .into_iter()
        .filter_map(|(key, (task_name, reasons))| {
            let task = by_id.get(key.task_id.as_str())?;
            if !mentions_endpoint(task, &key.endpoint) {
                return None;
            }
            let reason = reasons.join("; ");
            let shown = task
                .runtime
                .get(&runtime_key(ENDPOINT_ERROR_KEY, &key.endpoint));
            (shown != Some(&Value::from(reason.as_str()))).then(|| RefusalWrite {
                key: key.clone(),
                task_name: task_name.to_string(),
                reason,
            })
        })
        .collect()
}

/// Called on the freshly re-read task before the write: the reason's key, if the task still
/// wants routes and still asks for the endpoint (and no other router took it), else why not.
pub fn recheck_refusal(
    task: &Task,
    w: &RefusalWrite,
    s: &Settings,
    policy: &UpstreamPolicy,
) -> Result<BTreeMap<String, Value>, String> {
    if !task.wants_routes(&s.queue_ids, &s.queue_names) {
        return Err(format!(
            "task is {} (or untagged, archived, requeued)",
            task.status
        ));
    }
    let asked = parse_task(task, s, policy)
        .into_iter()
        .find_map(|p| match p {
            Parsed::Request { key, .. } | Parsed::Refused { key, .. } if key == w.key => {
                Some(Ok(()))
            }
            Parsed::Foreign { key, router } if key == w.key => Some(Err(router)),
            _ => None,
        });
    match asked {
        None => Err("the task withdrew the request".into()),
        Some(Err(router)) => Err(format!("claimed by router {router:?}")),
        Some(Ok(())) => Ok(error_patch(&w.key.endpoint, &w.reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::test_support::*;
    use serde_json::json;

    #[test]
    fn a_refused_request_gets_its_reason_once() {
        let mut r = reconciler(30000, 30010);
        // The upstream is outside the policy's 10.0.0.0/8.
        let mut tasks = vec![task(
            "t",
            json!({"_SERVICE__ssh": "EXTERNAL_TCP", "external_address__ssh": "192.0.2.9",
                   "external_tcp_port__ssh": 22}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refusal_writes.len(), 1, "{:?}", p.refusal_writes);
        let w = &p.refusal_writes[0];
        assert_eq!(w.key, EndpointId::new("t", "ssh"));
        assert_eq!(w.reason, p.refused[0].reason);
        assert_eq!(w.task_name, "name-t");
        let patch = recheck_refusal(&tasks[0], w, &settings(), &policy()).expect("due");
        assert_eq!(
            patch,
            BTreeMap::from([(
                "router_endpoint_error__ssh".to_string(),
                json!(p.refused[0].reason)
            )])
        );

        // Once the task shows it, nothing is due; the same refusal next cycle writes nothing.
        tasks[0].runtime.extend(patch);
        let p2 = plan(&mut r, &tasks);
        assert_eq!(p2.refused, p.refused);
        assert!(p2.refusal_writes.is_empty(), "{:?}", p2.refusal_writes);

        // Fixed by the task: served, and the endpoint's write removes the reason.
        tasks[0]
            .runtime
            .insert("external_address__ssh".into(), json!("10.0.0.9"));
        let p3 = plan(&mut r, &tasks);
        assert!(p3.refused.is_empty() && p3.refusal_writes.is_empty());
        assert_eq!(
            p3.writes[0].patch["router_endpoint_error__ssh"],
            Value::Null
        );
    }

    #[test]
    fn a_changed_reason_is_written_again() {
        let tasks = vec![task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "192.0.2.9",
                   "external_tcp_port": 22, "router_endpoint_error": "an older reason"}),
        )];
        let mut r = reconciler(30000, 30010);
        let p = plan(&mut r, &tasks);
        assert_eq!(p.refusal_writes.len(), 1);
        assert_eq!(p.refusal_writes[0].key, EndpointId::new("t", ""));
    }

    #[test]
    fn names_the_task_did_not_write_and_unknown_tasks_get_nothing() {
        let tasks = vec![task(
            "t",
            json!({"_SERVICE__a": "EXTERNAL_TCP", "external_address__a": "192.0.2.9",
                   "external_tcp_port__a": 22}),
        )];
        let refusal = |task_id: &str, name: &str| Refusal {
            owner: crate::routes::RouteOwner::new(EndpointId::new(task_id, name), "x"),
            kind: "tcp".into(),
            reason: "r".into(),
        };
        let writes = refusal_writes(
            &tasks,
            &[
                refusal("t", "a-shortened…"),
                refusal("gone", "a"),
                refusal("t", "a"),
            ],
        );
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].key, EndpointId::new("t", "a"));
    }

    #[test]
    fn both_protocols_refused_are_one_reason() {
        let tasks = vec![task("t", json!({"_SERVICE": "EXTERNAL"}))];
        let owner = crate::routes::RouteOwner::new(EndpointId::new("t", ""), "x");
        let refusals = [
            Refusal {
                owner: owner.clone(),
                kind: "tcp".into(),
                reason: "one".into(),
            },
            Refusal {
                owner: owner.clone(),
                kind: "http".into(),
                reason: "two".into(),
            },
            Refusal {
                owner,
                kind: "http".into(),
                reason: "two".into(),
            },
        ];
        let writes = refusal_writes(&tasks, &refusals);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].reason, "one; two");
    }

    #[test]
    fn recheck_skips_a_task_that_withdrew_or_stopped() {
        let mut t = task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "192.0.2.9"}),
        );
        let w = RefusalWrite {
            key: EndpointId::new("t", ""),
            task_name: "n".into(),
            reason: "r".into(),
        };
        assert!(recheck_refusal(&t, &w, &settings(), &policy()).is_ok());
        t.status = "stopped".into();
        assert!(recheck_refusal(&t, &w, &settings(), &policy()).is_err());
        t.status = "in_progress".into();
        t.runtime.clear();
        assert!(recheck_refusal(&t, &w, &settings(), &policy()).is_err());
    }
}
