//! Property tests of endpoint requests read from task runtime properties (untrusted: a task
//! may write anything there): ports, addresses, endpoint names, modes, claims. No runtime
//! panics; every refusal says why; every accepted upstream passes the policy; valid requests
//! are read as written; a plan settles once its write-backs are applied.

use super::limit::route_owners;
use super::test_support::{self, running_task as task};
use super::{
    Kind, Parsed, Plan, SERVICE_HTTP, SERVICE_TCP, Settings, Want, endpoint_url, parse_task,
    subdomain_label,
};
use crate::clearml::task::{Task, runtime_key};
use crate::endpoint::EndpointId;
use crate::proptest_config as config;
use crate::routes::{HttpMode, RouteSet};
use crate::validate::{self, UpstreamPolicy};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

fn settings() -> Settings {
    Settings {
        // Small, so that hostile tasks (up to 10 runtime keys each) meet it.
        max_endpoints_per_task: 3,
        ..test_support::settings()
    }
}

/// Routes per task in `routes`, by `(endpoint, protocol)`.
fn routes_by_task(routes: &RouteSet) -> BTreeMap<String, BTreeSet<(String, Kind)>> {
    let mut by_task: BTreeMap<String, BTreeSet<(String, Kind)>> = BTreeMap::new();
    for (owner, kind) in route_owners(routes) {
        by_task
            .entry(owner.id.task_id.clone())
            .or_default()
            .insert((owner.id.endpoint.clone(), kind));
    }
    by_task
}

/// No task is given new routes past the limit: the routes it keeps from `in_force` count, and
/// once they reach the limit it gets none.
fn assert_limit(plan: &Plan, in_force: &RouteSet, limit: usize) -> Result<(), TestCaseError> {
    let before = routes_by_task(in_force);
    for (task, routes) in routes_by_task(&plan.routes) {
        let kept = before
            .get(&task)
            .map_or(0, |old| routes.intersection(old).count());
        let new = routes.len() - kept;
        prop_assert!(
            new <= limit.saturating_sub(kept),
            "task {task}: {kept} kept + {new} new routes, limit {limit}: {routes:?}"
        );
    }
    Ok(())
}

fn policy() -> UpstreamPolicy {
    UpstreamPolicy::new(
        vec!["10.0.0.0/8".parse().unwrap()],
        [Ipv4Addr::new(10, 0, 0, 1)],
    )
}

/// Values a task might write, hostile ones included.
fn runtime_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "(?s).{0,30}".prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        (0u32..70_000).prop_map(|n| json!(n)),
        (0u32..70_000).prop_map(|n| json!(format!(" {n} "))),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "((10|127|169|0|255|224)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}|::1|localhost|10\\.0\\.0\\.1)"
            .prop_map(Value::String),
        prop::sample::select(vec!["EXTERNAL", "EXTERNAL_TCP", "external", "", "path",
                                  "subdomain", "r1", "r2"])
            .prop_map(|s| json!(s)),
        Just(Value::Null),
        Just(json!([1, 2])),
        Just(json!({"a": 1})),
        Just(Value::Bool(true)),
    ]
}

fn runtime_key_strategy() -> impl Strategy<Value = String> {
    let base = prop::sample::select(vec![
        "_SERVICE",
        "_PORT",
        "_ADDRESS",
        "external_tcp_port",
        "external_address",
        "_ROUTER_NAME",
        "_ROUTER_ENDPOINT_MODE",
        "upstream_task_address",
        "upstream_task_port",
        "endpoint",
    ]);
    let suffix = prop_oneof![
        3 => Just(String::new()),
        2 => prop::sample::select(vec!["__api", "__ui", "__a-b_2"]).prop_map(str::to_string),
        1 => "__(?s).{0,40}",
        1 => "_{0,3}[A-Za-z]{0,3}",
    ];
    prop_oneof![
        6 => (base, suffix).prop_map(|(b, s)| format!("{b}{s}")),
        1 => "(?s).{0,20}",
    ]
}

fn runtime() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(runtime_key_strategy(), runtime_value(), 0..10)
        .prop_map(|m| m.into_iter().collect())
}

fn task_id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-f0-9]{32}",
        1 => "(?s).{0,70}",
    ]
}

proptest! {
    #![proptest_config(config(3000))]

    /// Any runtime dict: requests whose upstream the policy accepts, refusals with reasons,
    /// and keys with valid endpoint names only.
    #[test]
    fn any_runtime_is_read_or_refused_with_a_reason(id in task_id(), rt in runtime()) {
        let t = task(&id, rt);
        let (s, p) = (settings(), policy());
        for parsed in parse_task(&t, &s, &p) {
            match parsed {
                Parsed::Request { key, want } => {
                    prop_assert_eq!(&key.task_id, &t.id);
                    prop_assert!(key.endpoint.is_empty() || validate::endpoint_name(&key.endpoint).is_ok());
                    let upstream = match want {
                        Want::Tcp { upstream, .. } | Want::Http { upstream, .. } => upstream,
                    };
                    prop_assert!(upstream.port() != 0);
                    prop_assert!(p.address(&upstream.ip().to_string()).is_ok(), "{upstream}");
                    if let Want::Http { mode: HttpMode::Subdomain, .. } = want {
                        prop_assert!(subdomain_label(&key.task_id, &key.endpoint).is_ok());
                    }
                    let url = endpoint_url(&s, &key, HttpMode::Subdomain);
                    prop_assert!(url.starts_with("https://"));
                }
                Parsed::Refused { key, reason, .. } => {
                    prop_assert!(!reason.trim().is_empty());
                    prop_assert!(key.task_id.chars().count() <= 81);
                    prop_assert!(key.endpoint.chars().count() <= 81);
                }
                Parsed::Foreign { router, .. } => prop_assert_ne!(router, s.router_name.clone()),
            }
        }
    }

    /// Valid requests (numbers or strings, padded, any endpoint name) read back as written.
    #[test]
    fn valid_requests_are_read_as_written(
        name in prop_oneof![Just(String::new()), "[A-Za-z0-9_-]{1,32}"],
        tcp in any::<bool>(),
        b in 0u8..=255, c in 0u8..=255, d in 2u8..=254,
        port in 1u16..=65535,
        port_as_string in any::<bool>(),
    ) {
        let addr = Ipv4Addr::new(10, b, c, d);
        let port_value = if port_as_string { json!(format!(" {port}")) } else { json!(port) };
        let mut rt = Map::new();
        let (addr_key, port_key, service) = if tcp {
            ("external_address", "external_tcp_port", SERVICE_TCP)
        } else {
            ("_ADDRESS", "_PORT", SERVICE_HTTP)
        };
        rt.insert(runtime_key("_SERVICE", &name), json!(service));
        rt.insert(runtime_key(addr_key, &name), json!(addr.to_string()));
        rt.insert(runtime_key(port_key, &name), port_value);
        let t = task("4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99", rt);
        let parsed = parse_task(&t, &settings(), &policy());
        let want_upstream = SocketAddrV4::new(addr, port);
        prop_assert_eq!(parsed.len(), 1, "{:?}", parsed);
        match &parsed[0] {
            Parsed::Request { key, want: Want::Tcp { upstream, routed_port: None, .. } } if tcp => {
                prop_assert_eq!(*upstream, want_upstream);
                prop_assert_eq!(&key.endpoint, &name);
            }
            Parsed::Request { key, want: Want::Http { upstream, mode: HttpMode::Path } } if !tcp => {
                prop_assert_eq!(*upstream, want_upstream);
                prop_assert_eq!(&key.endpoint, &name);
            }
            Parsed::Refused { reason, .. } if addr == Ipv4Addr::new(10, 0, 0, 1) => {
                prop_assert!(reason.contains("router's own"), "{reason}");
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Plans of hostile task lists: routes inside the port range with allowed upstreams, and
    /// once the write-backs are applied the next plan keeps the same routes and writes nothing.
    #[test]
    fn plans_of_hostile_tasks_are_bounded_and_settle(
        rts in prop::collection::vec((task_id(), runtime()), 0..12),
    ) {
        let (s, p) = (settings(), policy());
        let mut tasks: Vec<Task> = rts.into_iter().map(|(id, rt)| task(&id, rt)).collect();
        let mut r = test_support::reconciler(30000, 30015);
        let first = r.plan(&tasks, &RouteSet::default(), &RouteSet::default(), &s, &p, 0);
        assert_limit(&first, &RouteSet::default(), s.max_endpoints_per_task)?;
        for (port, route) in &first.routes.tcp {
            prop_assert!((30000..=30015).contains(port));
            prop_assert!(p.address(&route.upstream.ip().to_string()).is_ok());
        }
        for refusal in &first.refused {
            prop_assert!(!refusal.reason.is_empty());
        }
        test_support::write_back(&mut tasks, &first);
        let second = r.plan(&tasks, &RouteSet::default(), &first.routes, &s, &p, 1);
        prop_assert_eq!(&second.routes, &first.routes);
        prop_assert!(second.writes.is_empty(), "still writing: {:?}", second.writes);
        assert_limit(&second, &first.routes, s.max_endpoints_per_task)?;
        // The same choice from ClearML's data alone (the local state lost).
        let mut fresh = test_support::reconciler(30000, 30015);
        let rebuilt = fresh.plan(&tasks, &RouteSet::default(), &RouteSet::default(), &s, &p, 1);
        prop_assert_eq!(routes_by_task(&rebuilt.routes), routes_by_task(&first.routes));
        // A lowered limit: what is in force stays, nothing new past the limit.
        let lowered = Settings { max_endpoints_per_task: 1, ..s.clone() };
        let third = r.plan(&tasks, &RouteSet::default(), &first.routes, &lowered, &p, 2);
        prop_assert_eq!(&third.routes, &first.routes);
        assert_limit(&third, &first.routes, 1)?;
    }
}

/// A task asking for valid endpoints: `(name index, TCP?, forged "routed by r1" claim?)`.
fn valid_requests() -> impl Strategy<Value = Vec<(u8, bool, bool)>> {
    prop::collection::vec((0u8..12, any::<bool>(), any::<bool>()), 0..10)
}

fn valid_task(i: usize, requests: &[(u8, bool, bool)]) -> Task {
    let mut rt = Map::new();
    for &(n, tcp, forged) in requests {
        let name = if n == 0 {
            String::new()
        } else {
            format!("e{n}")
        };
        if tcp && forged {
            // The keys this router writes, written by the task itself, on a port of the range.
            rt.insert(runtime_key("external_address", &name), json!("203.0.113.7"));
            rt.insert(
                runtime_key("external_tcp_port", &name),
                json!(30000 + u16::from(n)),
            );
            rt.insert(
                runtime_key("upstream_task_address", &name),
                json!("10.0.0.9"),
            );
            rt.insert(runtime_key("upstream_task_port", &name), json!(22));
        } else if tcp {
            rt.insert(runtime_key("external_address", &name), json!("10.0.0.9"));
            rt.insert(runtime_key("external_tcp_port", &name), json!(22));
        } else {
            rt.insert(runtime_key("_ADDRESS", &name), json!("10.0.0.9"));
            rt.insert(runtime_key("_PORT", &name), json!(80));
            if forged {
                let url = endpoint_url(
                    &settings(),
                    &EndpointId::new(format!("{i:032x}"), name.as_str()),
                    HttpMode::Path,
                );
                rt.insert(runtime_key("endpoint", &name), json!(url));
                rt.insert(runtime_key("browser_endpoint", &name), json!(url));
            }
        }
        if forged {
            rt.insert(runtime_key("_ROUTER_NAME", &name), json!("r1"));
        }
    }
    task(&format!("{i:032x}"), rt)
}

proptest! {
    #![proptest_config(config(300))]

    /// Tasks with many valid requests (some forging this router's keys) under a random limit:
    /// no task is given more than the limit, the choice settles and is the same from ClearML's
    /// data alone, and a lowered limit keeps every route in force and adds none past it.
    #[test]
    fn no_task_holds_more_than_the_limit_of_new_routes(
        requests in prop::collection::vec(valid_requests(), 1..6),
        limit in 1usize..5,
        lowered_by in 0usize..4,
    ) {
        let lowered = limit.saturating_sub(lowered_by).max(1);
        let p = policy();
        let s = Settings { max_endpoints_per_task: limit, ..settings() };
        let mut tasks: Vec<Task> =
            requests.iter().enumerate().map(|(i, r)| valid_task(i, r)).collect();
        let new_reconciler = || test_support::reconciler(30000, 30099);
        let mut r = new_reconciler();
        let none = RouteSet::default();
        let first = r.plan(&tasks, &none, &none, &s, &p, 0);
        assert_limit(&first, &none, limit)?;
        for f in &first.refused {
            prop_assert!(f.reason.contains(&format!("ROUTER_MAX_ENDPOINTS_PER_TASK={limit}")), "{f:?}");
            prop_assert!(f.reason.contains(&f.owner.id.task_id), "{f:?}");
        }
        test_support::write_back(&mut tasks, &first);
        let second = r.plan(&tasks, &none, &first.routes, &s, &p, 1);
        prop_assert_eq!(&second.routes, &first.routes);
        prop_assert_eq!(&second.refused, &first.refused);
        let rebuilt = new_reconciler().plan(&tasks, &none, &none, &s, &p, 1);
        prop_assert_eq!(routes_by_task(&rebuilt.routes), routes_by_task(&first.routes));
        let lower = Settings { max_endpoints_per_task: lowered, ..s.clone() };
        let third = r.plan(&tasks, &none, &first.routes, &lower, &p, 2);
        prop_assert_eq!(&third.routes, &first.routes);
        assert_limit(&third, &first.routes, lowered)?;
    }
}

/// A task that writes thousands of endpoint keys (a hostile or broken task) is read and
/// planned whole: every endpoint refused or routed, the range filled and no more. This used to
/// be quadratic (endpoint names deduplicated by searching a list; every request past a full
/// range walking the whole range): 25 s to read these 20 000 endpoints and about 6 s to plan
/// 20 000 TCP requests over 1 000 ports, stalling the loop for every other task. Now about 0.5 s
/// each in a debug build. (Speed targets belong in benchmarks, not timed tests: a regression
/// shows here as a test that takes minutes.)
#[test]
fn a_task_with_thousands_of_endpoints_is_read_and_planned() {
    let mut http = Map::new();
    let mut tcp = Map::new();
    for i in 0..20_000 {
        http.insert(format!("_PORT__e{i}"), json!(8000));
        http.insert(format!("_ADDRESS__e{i}"), json!("10.1.2.3"));
        tcp.insert(format!("external_tcp_port__e{i}"), json!(22));
        tcp.insert(format!("external_address__e{i}"), json!("10.1.2.4"));
    }
    let http = task("4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99", http);
    let tcp = task("5f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99", tcp);
    let parsed = parse_task(&http, &settings(), &policy());
    assert_eq!(parsed.len(), 20_000);
    // Without a per-task limit (the largest allowed): the whole range, no more.
    let unlimited = Settings {
        max_endpoints_per_task: 65535,
        ..settings()
    };
    let tasks = [http, tcp];
    // A plan from a fresh reconciler over ports 30000-30999.
    let fresh_plan = |s: &Settings| {
        test_support::reconciler(30000, 30999).plan(
            &tasks,
            &RouteSet::default(),
            &RouteSet::default(),
            s,
            &policy(),
            0,
        )
    };
    let plan = fresh_plan(&unlimited);
    assert_eq!(plan.routes.http.len(), 20_000);
    assert_eq!(plan.routes.tcp.len(), 1000, "the whole range, no more");
    assert_eq!(plan.refused.len(), 19_000);
    assert!(
        plan.refused.iter().all(|r| r.reason.contains("30000")),
        "{:?}",
        plan.refused[0]
    );

    // With the default limit: 16 routes each, the other requests refused naming the limit.
    let limited = Settings {
        max_endpoints_per_task: crate::config::DEFAULT_MAX_ENDPOINTS_PER_TASK as usize,
        ..settings()
    };
    let plan = fresh_plan(&limited);
    assert_eq!(plan.routes.http.len(), 16);
    assert_eq!(plan.routes.tcp.len(), 16);
    assert_eq!(plan.refused.len(), 2 * (20_000 - 16));
    assert!(
        plan.refused
            .iter()
            .all(|r| r.reason.contains("ROUTER_MAX_ENDPOINTS_PER_TASK=16")),
        "{:?}",
        plan.refused[0]
    );
}
