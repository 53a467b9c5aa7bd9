//! `ROUTER_MAX_ENDPOINTS_PER_TASK`: which requests of a task are served when it asks for more.

use super::request::{Kind, Refusal, Req, Want};
use super::settings::Settings;
use super::urls::endpoint_url;
use super::write_back::http_patch;
use crate::clearml::task::applied;
use crate::routes::{RouteOwner, RouteSet};
use std::collections::HashSet;

/// Why a request past `ROUTER_MAX_ENDPOINTS_PER_TASK` is not served (the same text every cycle:
/// refusals are logged once per change).
pub fn over_limit_reason(task_id: &str, limit: usize) -> String {
    format!(
        "task {task_id} asks for more than ROUTER_MAX_ENDPOINTS_PER_TASK={limit} routes \
         (TCP and HTTP counted together); this one is served once the task holds fewer"
    )
}

/// Every route of `routes` with its owner and protocol.
pub(super) fn route_owners(routes: &RouteSet) -> impl Iterator<Item = (&RouteOwner, Kind)> {
    let tcp = routes.tcp.values().map(|r| (&r.owner, Kind::Tcp));
    let http = routes.http.values().map(|r| (&r.owner, Kind::Http));
    tcp.chain(http)
}

/// Keeps at most `s.max_endpoints_per_task` requests of each task and refuses the others, so
/// one task cannot take the whole port range (nor fill nginx's config) and starve the rest.
/// `requests` are sorted by endpoint key and protocol. The served ones, per task:
/// 1. its routes in force (`in_force`: this router's last plan, seeded from `routes.json` at
///    start), even above the limit: a working route is never torn down because the task asked
///    for more or the operator lowered the limit. This is the router's own record, which a
///    task cannot forge; when a task holds that many, its new requests are all refused;
/// 2. then those its runtime shows as routed by this router (the local state lost: the same
///    choice comes out of ClearML's data alone, as long as the limit did not shrink);
/// 3. then the rest;
///
/// each tier by endpoint name, then protocol (TCP before HTTP), while the task holds fewer than
/// the limit. Tier 2 is read from the task's runtime, which the task may write: forging it only
/// reorders the task's own requests, never admits one more.
pub(super) fn limit_per_task<'a>(
    requests: Vec<Req<'a>>,
    in_force: &RouteSet,
    s: &Settings,
    refused: &mut Vec<Refusal>,
) -> Vec<Req<'a>> {
    let limit = s.max_endpoints_per_task;
    let held: HashSet<(&str, &str, Kind)> = route_owners(in_force)
        .map(|(owner, kind)| (owner.id.task_id.as_str(), owner.id.endpoint.as_str(), kind))
        .collect();
    let tier = |r: &Req| -> u8 {
        let kind = r.want.kind();
        if held.contains(&(r.key.task_id.as_str(), r.key.endpoint.as_str(), kind)) {
            return 0;
        }
        let routed_by_us = match &r.want {
            Want::Tcp { routed_port, .. } => routed_port.is_some(),
            Want::Http { mode, .. } => applied(
                &r.task.runtime,
                &http_patch(s, &r.key.endpoint, &endpoint_url(s, &r.key, *mode)),
            ),
        };
        if routed_by_us { 1 } else { 2 }
    };
    let mut serve = vec![false; requests.len()];
    let mut start = 0;
    while start < requests.len() {
        let task_id = &requests[start].key.task_id;
        let end = start
            + requests[start..]
                .iter()
                .take_while(|r| &r.key.task_id == task_id)
                .count();
        if end - start > limit {
            // The index keeps the (endpoint, protocol) order within a tier.
            let mut order: Vec<(u8, usize)> =
                (start..end).map(|i| (tier(&requests[i]), i)).collect();
            order.sort_unstable();
            let mut holds = 0;
            for (t, i) in order {
                if t == 0 || holds < limit {
                    serve[i] = true;
                    holds += 1;
                }
            }
        } else {
            serve[start..end].fill(true);
        }
        start = end;
    }
    let mut kept = Vec::with_capacity(requests.len());
    for (r, served) in requests.into_iter().zip(serve) {
        if served {
            kept.push(r);
        } else {
            let reason = over_limit_reason(&r.key.task_id, limit);
            refused.push(Refusal::new(r.task, r.key, Some(r.want.kind()), reason));
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearml::task::{Task, runtime_key};
    use crate::reconcile::plan::{Plan, Reconciler};
    use crate::reconcile::test_support::*;
    use serde_json::Value;
    use serde_json::json;

    /// A plan with `ROUTER_MAX_ENDPOINTS_PER_TASK` = `limit`, serving `in_force` now.
    fn plan_limited(r: &mut Reconciler, tasks: &[Task], in_force: &RouteSet, limit: usize) -> Plan {
        let s = Settings {
            max_endpoints_per_task: limit,
            ..settings()
        };
        r.plan(tasks, &RouteSet::default(), in_force, &s, &policy(), 0)
    }

    /// A task asking for TCP endpoints `names` ("" = the default one).
    fn tcp_task(id: &str, names: &[&str]) -> Task {
        let mut rt = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            rt.insert(runtime_key("_SERVICE", name), json!("EXTERNAL_TCP"));
            rt.insert(runtime_key("external_address", name), json!("10.0.0.9"));
            rt.insert(runtime_key("external_tcp_port", name), json!(2000 + i));
        }
        task(id, Value::Object(rt))
    }

    /// `(endpoint, kind)` of the routes of `task_id`.
    fn routed(p: &Plan, task_id: &str) -> Vec<(String, Kind)> {
        let mut out: Vec<_> = route_owners(&p.routes)
            .filter(|(o, _)| o.id.task_id == task_id)
            .map(|(o, k)| (o.id.endpoint.clone(), k))
            .collect();
        out.sort();
        out
    }

    fn names(v: &[&str]) -> Vec<(String, Kind)> {
        v.iter().map(|n| (n.to_string(), Kind::Tcp)).collect()
    }

    #[test]
    fn a_task_over_the_limit_gets_the_limit_and_refusals_naming_it() {
        let mut r = reconciler(30000, 30099);
        // limit + 3 requests.
        let mut tasks = vec![
            tcp_task("greedy", &["", "a", "b", "c", "d", "e"]),
            tcp_task("other", &[""]),
        ];
        let p = plan_limited(&mut r, &tasks, &RouteSet::default(), 3);
        assert_eq!(
            routed(&p, "greedy"),
            names(&["", "a", "b"]),
            "by endpoint name"
        );
        assert_eq!(
            routed(&p, "other"),
            names(&[""]),
            "another task still gets its port"
        );
        let refused: Vec<&str> = p
            .refused
            .iter()
            .map(|f| f.owner.id.endpoint.as_str())
            .collect();
        assert_eq!(refused, ["c", "d", "e"]);
        for f in &p.refused {
            assert_eq!(
                (f.owner.id.task_id.as_str(), f.kind.as_str()),
                ("greedy", "tcp")
            );
            assert!(
                f.reason.contains("task greedy")
                    && f.reason.contains("ROUTER_MAX_ENDPOINTS_PER_TASK=3"),
                "{}",
                f.reason
            );
        }
        assert_eq!(p.writes.len(), 4, "refused requests are not written back");
        assert_eq!(r.ports.stats().assigned, 4, "refused requests hold no port");

        // Stable: the next cycles refuse the same ones with the same reasons (logged once).
        write_back(&mut tasks, &p);
        let p2 = plan_limited(&mut r, &tasks, &p.routes, 3);
        assert_eq!(p2.routes, p.routes);
        assert_eq!(p2.refused, p.refused);
        assert!(p2.writes.is_empty());
        // And from ClearML's data alone (the local state lost): the same endpoints.
        let mut fresh = reconciler(30000, 30099);
        let p3 = plan_limited(&mut fresh, &tasks, &RouteSet::default(), 3);
        assert_eq!(p3.routes, p.routes);
        assert_eq!(p3.refused, p.refused);
    }

    #[test]
    fn routed_endpoints_are_kept_when_the_task_asks_for_more() {
        let mut r = reconciler(30000, 30099);
        let mut tasks = vec![tcp_task("t", &["m", "n"])];
        let p = plan_limited(&mut r, &tasks, &RouteSet::default(), 2);
        write_back(&mut tasks, &p);
        // New requests whose names sort first: the working routes stay, the new ones wait.
        let rt = &mut tasks[0].runtime;
        for name in ["a", "b"] {
            rt.insert(runtime_key("external_address", name), json!("10.0.0.9"));
            rt.insert(runtime_key("external_tcp_port", name), json!(22));
        }
        let p2 = plan_limited(&mut r, &tasks, &p.routes, 2);
        assert_eq!(p2.routes, p.routes);
        assert_eq!(routed(&p2, "t"), names(&["m", "n"]));
        let refused: Vec<&str> = p2
            .refused
            .iter()
            .map(|f| f.owner.id.endpoint.as_str())
            .collect();
        assert_eq!(refused, ["a", "b"]);
        // The same from ClearML's data alone: the runtime shows m and n routed by us.
        let mut fresh = reconciler(30000, 30099);
        let p3 = plan_limited(&mut fresh, &tasks, &RouteSet::default(), 2);
        assert_eq!(p3.routes, p.routes);
        // A routed endpoint withdrawn frees its place for the first waiting one.
        for key in ["external_address__m", "external_tcp_port__m", "_SERVICE__m"] {
            tasks[0].runtime.remove(key);
        }
        let p4 = plan_limited(&mut r, &tasks, &p2.routes, 2);
        assert_eq!(routed(&p4, "t"), names(&["a", "n"]));
        assert_eq!(p4.refused.len(), 1);
        assert_eq!(p4.refused[0].owner.id.endpoint, "b");
    }

    #[test]
    fn a_lowered_limit_keeps_the_routes_in_force_and_refuses_new_ones() {
        let mut r = reconciler(30000, 30099);
        let mut tasks = vec![tcp_task("t", &["a", "b", "c", "d"]), tcp_task("u", &[""])];
        let p = plan_limited(&mut r, &tasks, &RouteSet::default(), 16);
        assert_eq!(routed(&p, "t").len(), 4);
        write_back(&mut tasks, &p);
        // Restarted with ROUTER_MAX_ENDPOINTS_PER_TASK=2, routes.json still in force: all
        // four stay (never torn down), a fifth request is refused.
        tasks[0]
            .runtime
            .insert("external_address__e".into(), json!("10.0.0.9"));
        tasks[0]
            .runtime
            .insert("external_tcp_port__e".into(), json!(22));
        let p2 = plan_limited(&mut r, &tasks, &p.routes, 2);
        assert_eq!(p2.routes, p.routes);
        assert!(p2.writes.is_empty());
        assert_eq!(p2.refused.len(), 1);
        assert_eq!(p2.refused[0].owner.id.endpoint, "e");
        assert!(
            p2.refused[0]
                .reason
                .contains("ROUTER_MAX_ENDPOINTS_PER_TASK=2")
        );
        // Withdrawing one frees no place while it still holds more than the limit.
        for key in ["external_address__a", "external_tcp_port__a", "_SERVICE__a"] {
            tasks[0].runtime.remove(key);
        }
        let p3 = plan_limited(&mut r, &tasks, &p2.routes, 2);
        assert_eq!(routed(&p3, "t"), names(&["b", "c", "d"]));
        assert_eq!(p3.refused.len(), 1);
        // Without the local state (routes.json lost too), ClearML's data alone shows no order
        // of arrival: the limit holds, the routed ones first by name.
        let mut fresh = reconciler(30000, 30099);
        let p4 = plan_limited(&mut fresh, &tasks, &RouteSet::default(), 2);
        assert_eq!(routed(&p4, "t"), names(&["b", "c"]));
        assert_eq!(routed(&p4, "u"), names(&[""]));
    }

    #[test]
    fn tcp_and_http_routes_count_together() {
        let mut r = reconciler(30000, 30099);
        let tasks = vec![task(
            "t",
            json!({"external_address": "10.0.0.9", "external_tcp_port": 22,
                   "_ADDRESS": "10.0.0.9", "_PORT": 80,
                   "_ADDRESS__api": "10.0.0.9", "_PORT__api": 8000,
                   "external_address__db": "10.0.0.9", "external_tcp_port__db": 5432}),
        )];
        let p = plan_limited(&mut r, &tasks, &RouteSet::default(), 3);
        assert_eq!(
            routed(&p, "t"),
            [
                (String::new(), Kind::Tcp),
                (String::new(), Kind::Http),
                ("api".to_string(), Kind::Http)
            ]
        );
        assert_eq!(p.refused.len(), 1);
        assert_eq!(
            (
                p.refused[0].owner.id.endpoint.as_str(),
                p.refused[0].kind.as_str()
            ),
            ("db", "tcp")
        );
    }

    #[test]
    fn a_forged_claim_reorders_the_tasks_own_requests_only() {
        // A task writing "routed by r1" on all its endpoints itself gets no more than the limit.
        let mut rt = serde_json::Map::new();
        for i in 0..10 {
            let name = format!("e{i}");
            rt.insert(runtime_key("external_address", &name), json!("203.0.113.7"));
            rt.insert(runtime_key("external_tcp_port", &name), json!(30010 + i));
            rt.insert(
                runtime_key("upstream_task_address", &name),
                json!("10.0.0.9"),
            );
            rt.insert(runtime_key("upstream_task_port", &name), json!(22));
            rt.insert(runtime_key("_ROUTER_NAME", &name), json!("r1"));
        }
        rt.insert("external_address".into(), json!("10.0.0.9"));
        rt.insert("external_tcp_port".into(), json!(22));
        let tasks = vec![task("forger", Value::Object(rt)), tcp_task("other", &[""])];
        let mut r = reconciler(30000, 30099);
        let p = plan_limited(&mut r, &tasks, &RouteSet::default(), 3);
        assert_eq!(routed(&p, "forger"), names(&["e0", "e1", "e2"]));
        assert_eq!(p.refused.len(), 8);
        assert_eq!(routed(&p, "other"), names(&[""]));
    }
}
