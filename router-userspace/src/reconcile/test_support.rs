//! Set-up shared by the reconciler's unit tests: a router, a policy, tasks and plans.

use super::plan::{Plan, Reconciler};
use super::settings::Settings;
use crate::clearml::task::Task;
use crate::ports::PortAllocator;
use crate::routes::{HttpMode, RouteSet};
use crate::validate::UpstreamPolicy;
use serde_json::{Map, Value};
use std::time::Duration;

/// Router `r1` on 203.0.113.7, path mode by default, 16 endpoints per task.
pub(super) fn settings() -> Settings {
    Settings {
        router_name: "r1".into(),
        tcp_address: "203.0.113.7".into(),
        url: "https://router.example.com".into(),
        domain: Some("apps.example.com".into()),
        default_mode: HttpMode::Path,
        queue_ids: Vec::new(),
        queue_names: Vec::new(),
        max_endpoints_per_task: 16,
        client_allow: crate::client_allow::ClientAllow::Any,
    }
}

/// Upstreams in 10.0.0.0/8.
pub(super) fn policy() -> UpstreamPolicy {
    UpstreamPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], [])
}

/// A running task of queue `q1`, tagged for routes, with `runtime` (a JSON object).
pub(super) fn task(id: &str, runtime: Value) -> Task {
    running_task(id, serde_json::from_value(runtime).unwrap())
}

/// A running task of queue `q1`, tagged for routes, with `runtime`.
pub(super) fn running_task(id: &str, runtime: Map<String, Value>) -> Task {
    Task {
        id: id.into(),
        name: format!("name-{id}"),
        status: "in_progress".into(),
        system_tags: vec!["external_service".into()],
        queue: Some("q1".into()),
        k8s_queue: None,
        company: String::new(),
        runtime,
    }
}

/// A reconciler handing out ports `start..=end`, each resting 60 s after release.
pub(super) fn reconciler(start: u16, end: u16) -> Reconciler {
    Reconciler::new(PortAllocator::in_memory(
        start,
        end,
        Duration::from_secs(60),
    ))
}

/// A plan of `tasks` with no static routes and none in force.
pub(super) fn plan(r: &mut Reconciler, tasks: &[Task]) -> Plan {
    r.plan(
        tasks,
        &RouteSet::default(),
        &RouteSet::default(),
        &settings(),
        &policy(),
        0,
    )
}

/// Applies a plan's writes to the tasks, as the server would after write-back.
pub(super) fn write_back(tasks: &mut [Task], plan: &Plan) {
    for wb in &plan.writes {
        let t = tasks.iter_mut().find(|t| t.id == wb.key.task_id).unwrap();
        for (k, v) in &wb.patch {
            t.runtime.insert(k.clone(), v.clone());
        }
    }
}
