//! The planner: one complete task listing → the wanted ClearML route set, the refused requests
//! and the write-backs still due. Pure and synchronous (no I/O): ports come from the allocator
//! it owns, the server's claims winning over local allocations.

use super::limit::limit_per_task;
use super::naming::route_key;
use super::refusal_write::{RefusalWrite, refusal_writes};
use super::request::{Kind, Parsed, Refusal, Req, Want, parse_task};
use super::settings::Settings;
use super::urls::endpoint_url;
use super::write_back::{WriteBack, http_patch, tcp_patch};
use crate::clearml::task::{Task, applied};
use crate::endpoint::EndpointId;
use crate::ports::PortAllocator;
use crate::routes::{HttpMode, HttpRoute, RouteOwner, RouteRef, RouteSet, TcpRoute};
use crate::time::Millis;
use crate::validate::{self, UpstreamPolicy};
use std::collections::{HashMap, HashSet};

/// The result of one planning pass.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Routes from ClearML (static routes not included).
    pub routes: RouteSet,
    /// Endpoints whose runtime keys differ from what they should be.
    pub writes: Vec<WriteBack>,
    pub refused: Vec<Refusal>,
    /// Refused endpoints whose task does not show the reason yet.
    pub refusal_writes: Vec<RefusalWrite>,
    /// Endpoints claimed by other routers.
    pub foreign: usize,
    /// Tasks that want routes.
    pub tasks: usize,
}

/// Owns the port allocator; turns task listings into plans.
#[derive(Debug)]
pub struct Reconciler {
    pub ports: PortAllocator,
}

impl Reconciler {
    pub fn new(ports: PortAllocator) -> Self {
        Reconciler { ports }
    }

    /// Computes the wanted ClearML routes from `tasks` (one complete listing). Ports of
    /// `static_routes` are never handed out and their HTTP keys win over tasks'. `in_force` is
    /// the ClearML route set being served now (the last plan, or the previous run's): a task
    /// over `ROUTER_MAX_ENDPOINTS_PER_TASK` keeps those routes (see [`limit_per_task`]).
    pub fn plan(
        &mut self,
        tasks: &[Task],
        static_routes: &RouteSet,
        in_force: &RouteSet,
        s: &Settings,
        policy: &UpstreamPolicy,
        now: Millis,
    ) -> Plan {
        let mut plan = Plan::default();
        let requests = read_requests(tasks, s, policy, &mut plan);
        // Before any port is claimed or allocated: a refused request holds nothing.
        let requests = limit_per_task(requests, in_force, s, &mut plan.refused);
        let port_of = self.assign_ports(&requests, static_routes, now, &mut plan.refused);
        for r in requests {
            add_route(&mut plan, r, &port_of, static_routes, s);
        }
        plan.refusal_writes = refusal_writes(tasks, &plan.refused);
        plan
    }

    /// The port of every TCP request: static reservations, then the server's claims, then
    /// releases, then new ones. A request the range has no port for is refused.
    fn assign_ports(
        &mut self,
        requests: &[Req],
        static_routes: &RouteSet,
        now: Millis,
        refused: &mut Vec<Refusal>,
    ) -> HashMap<EndpointId, u16> {
        self.ports.set_reserved(static_routes.tcp.keys().copied());
        let mut port_of: HashMap<EndpointId, u16> = HashMap::new();
        let mut claimed: HashMap<u16, EndpointId> = HashMap::new();
        for r in requests {
            if let Want::Tcp {
                routed_port: Some(port),
                ..
            } = r.want
            {
                if claimed.contains_key(&port) {
                    // Two tasks show the same port (state lost, or edited by hand): the first
                    // keeps it, the other is re-routed.
                    continue;
                }
                if self.ports.claim(&r.key, port).is_ok() {
                    claimed.insert(port, r.key.clone());
                    port_of.insert(r.key.clone(), port);
                }
            }
        }
        let live: HashSet<&EndpointId> = requests
            .iter()
            .filter(|r| matches!(r.want, Want::Tcp { .. }))
            .map(|r| &r.key)
            .collect();
        self.ports.retain(now, |k| live.contains(k));
        // Once the range is full it stays full for the rest of this pass: later requests
        // without a port are refused at once instead of each walking the whole range (a task
        // asking for thousands of endpoints made that quadratic: found by the fuzz tests).
        let mut exhausted: Option<String> = None;
        for r in requests {
            if matches!(r.want, Want::Tcp { .. }) && !port_of.contains_key(&r.key) {
                let allocated = match (&exhausted, self.ports.port_of(&r.key)) {
                    (Some(reason), None) => Err(reason.clone()),
                    _ => self.ports.allocate(&r.key, now).map_err(|e| e.to_string()),
                };
                match allocated {
                    Ok(port) => {
                        port_of.insert(r.key.clone(), port);
                    }
                    Err(reason) => {
                        exhausted.get_or_insert_with(|| reason.clone());
                        refused.push(Refusal::new(r.task, r.key.clone(), Some(Kind::Tcp), reason));
                    }
                }
            }
        }
        port_of
    }
}

/// The requests of every task that wants routes, sorted by endpoint key and protocol; the
/// refused ones go to `plan.refused`, and `plan` counts the tasks and the foreign claims.
fn read_requests<'a>(
    tasks: &'a [Task],
    s: &Settings,
    policy: &UpstreamPolicy,
    plan: &mut Plan,
) -> Vec<Req<'a>> {
    let mut requests: Vec<Req> = Vec::new();
    for task in tasks {
        if !task.wants_routes(&s.queue_ids, &s.queue_names) {
            continue;
        }
        plan.tasks += 1;
        for parsed in parse_task(task, s, policy) {
            match parsed {
                Parsed::Request { key, want } => requests.push(Req { task, key, want }),
                Parsed::Refused { key, kind, reason } => {
                    plan.refused.push(Refusal::new(task, key, kind, reason))
                }
                Parsed::Foreign { .. } => plan.foreign += 1,
            }
        }
    }
    requests.sort_by(|a, b| (&a.key, a.want.kind()).cmp(&(&b.key, b.want.kind())));
    requests
}

/// Puts the route of `r` in `plan` (a TCP request on its port in `port_of`, none if it got no
/// port), with its write-back if the task does not show the route yet. An HTTP key taken by a
/// static route is refused.
fn add_route(
    plan: &mut Plan,
    r: Req,
    port_of: &HashMap<EndpointId, u16>,
    static_routes: &RouteSet,
    s: &Settings,
) {
    let owner = RouteOwner::new(
        EndpointId::new(r.key.task_id.clone(), r.key.endpoint.clone()),
        validate::truncate(&r.task.name),
    );
    let (route, patch) = match r.want {
        Want::Tcp {
            upstream,
            ref allow,
            ..
        } => {
            let Some(&port) = port_of.get(&r.key) else {
                return;
            };
            plan.routes.tcp.insert(
                port,
                TcpRoute {
                    port,
                    upstream,
                    owner,
                    preserve_client_ip: None,
                    allow: allow.clone(),
                },
            );
            (
                RouteRef::Tcp(port),
                tcp_patch(s, &r.key.endpoint, port, upstream),
            )
        }
        Want::Http { upstream, mode } => {
            let key = match free_http_key(plan, static_routes, &r.key, mode) {
                Ok(key) => key,
                Err(reason) => {
                    plan.refused
                        .push(Refusal::new(r.task, r.key, Some(Kind::Http), reason));
                    return;
                }
            };
            let url = endpoint_url(s, &r.key, mode);
            plan.routes.http.insert(
                key.clone(),
                HttpRoute {
                    key: key.clone(),
                    upstream,
                    mode,
                    owner,
                    company: r.task.company.clone(),
                },
            );
            (RouteRef::Http(key), http_patch(s, &r.key.endpoint, &url))
        }
    };
    if !applied(&r.task.runtime, &patch) {
        plan.writes.push(WriteBack {
            key: r.key,
            task_name: validate::truncate(&r.task.name),
            route,
            want: r.want,
            patch,
        });
    }
}

/// The key of the HTTP route of endpoint `id` in `mode`, unless a static route or another
/// endpoint of the plan has it (two names of one task deriving one key: `a.b` and the literal
/// `a-b-<hash of a.b>`).
fn free_http_key(
    plan: &Plan,
    static_routes: &RouteSet,
    id: &EndpointId,
    mode: HttpMode,
) -> Result<String, String> {
    let key = route_key(&id.task_id, &id.endpoint, mode)?;
    if static_routes.http.contains_key(&key) {
        return Err(format!("HTTP key {key:?} is taken by a static route"));
    }
    if let Some(other) = plan.routes.http.get(&key) {
        return Err(format!(
            "HTTP key {key:?} is taken by endpoint {:?} of the same task",
            other.owner.id.endpoint
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::test_support::*;
    use serde_json::json;

    #[test]
    fn stopped_reset_or_requeued_tasks_have_no_routes() {
        let mut r = reconciler(30000, 30010);
        let mut t = task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
        );
        let p = plan(&mut r, std::slice::from_ref(&t));
        assert_eq!(p.routes.tcp.len(), 1);
        t.status = "stopped".into();
        let p = plan(&mut r, std::slice::from_ref(&t));
        assert!(p.routes.tcp.is_empty());
        assert_eq!(r.ports.stats().resting, 1, "the port rests after release");
        // tasks.reset keeps the tag but clears the runtime: no request.
        let reset = task("t", json!({}));
        let p = plan(&mut r, &[reset]);
        assert!(p.routes.tcp.is_empty() && p.refused.is_empty());
    }

    #[test]
    fn listened_queues_filter_tasks() {
        let mut r = reconciler(30000, 30010);
        let mut s = settings();
        s.queue_ids = vec!["q2".into()];
        let t = task(
            "t",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.9", "_PORT": 80}),
        );
        let p = r.plan(
            &[t],
            &RouteSet::default(),
            &RouteSet::default(),
            &s,
            &policy(),
            0,
        );
        assert_eq!(p.tasks, 0);
        assert!(p.routes.http.is_empty());
    }

    #[test]
    fn a_task_keeps_its_port_across_a_lost_local_state() {
        // The port written on the task wins over a fresh allocator that would pick another.
        let mut r = reconciler(30000, 30010);
        let routed = task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "203.0.113.7",
                   "external_tcp_port": 30007, "upstream_task_address": "10.0.0.9",
                   "upstream_task_port": 22, "_ROUTER_NAME": "r1"}),
        );
        let p = plan(&mut r, &[routed]);
        assert_eq!(p.routes.tcp.keys().copied().collect::<Vec<_>>(), [30007]);
        assert_eq!(
            p.routes.tcp[&30007].upstream,
            "10.0.0.9:22".parse().unwrap()
        );
        assert!(p.writes.is_empty());
    }

    #[test]
    fn the_server_wins_over_a_local_allocation() {
        let mut r = reconciler(30000, 30010);
        // Locally, "local" got 30000 (not yet written back) ...
        let local = task(
            "local",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.8", "external_tcp_port": 22}),
        );
        plan(&mut r, std::slice::from_ref(&local));
        assert_eq!(r.ports.port_of(&EndpointId::new("local", "")), Some(30000));
        // ... but the server shows "srv" on 30000.
        let srv = task(
            "srv",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "203.0.113.7",
                   "external_tcp_port": 30000, "upstream_task_address": "10.0.0.9",
                   "upstream_task_port": 22, "_ROUTER_NAME": "r1"}),
        );
        let p = plan(&mut r, &[local, srv]);
        assert_eq!(p.routes.tcp[&30000].owner.id.task_id, "srv");
        let moved = p
            .routes
            .tcp
            .values()
            .find(|t| t.owner.id.task_id == "local")
            .unwrap();
        assert_ne!(moved.port, 30000);
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].key.task_id, "local");
    }

    #[test]
    fn two_tasks_claiming_one_port_are_split() {
        let mut r = reconciler(30000, 30010);
        let claim = |id: &str| {
            task(
                id,
                json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "203.0.113.7",
                       "external_tcp_port": 30003, "upstream_task_address": "10.0.0.9",
                       "upstream_task_port": 22, "_ROUTER_NAME": "r1"}),
            )
        };
        let p = plan(&mut r, &[claim("a"), claim("b")]);
        assert_eq!(p.routes.tcp.len(), 2);
        assert_eq!(p.routes.tcp[&30003].owner.id.task_id, "a");
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].key.task_id, "b");
    }

    #[test]
    fn exhaustion_refuses_the_overflow_only() {
        let mut r = reconciler(30000, 30001);
        let tasks: Vec<Task> = (0..3)
            .map(|i| task(&format!("t{i}"), json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22})))
            .collect();
        let p = plan(&mut r, &tasks);
        assert_eq!(p.routes.tcp.len(), 2);
        assert_eq!(p.refused.len(), 1);
        assert!(p.refused[0].reason.contains("exhausted"));
    }

    #[test]
    fn static_routes_reserve_ports_and_keys() {
        let mut r = reconciler(30000, 30001);
        let mut statics = RouteSet::default();
        let owner = RouteOwner::new(EndpointId::new("file:x", ""), "x");
        statics.tcp.insert(
            30000,
            TcpRoute {
                port: 30000,
                upstream: "10.0.0.1:1".parse().unwrap(),
                owner: owner.clone(),
                preserve_client_ip: None,
                allow: crate::client_allow::ClientAllow::Any,
            },
        );
        statics.http.insert(
            "grafana".into(),
            HttpRoute {
                key: "grafana".into(),
                upstream: "10.0.0.1:3000".parse().unwrap(),
                mode: HttpMode::Path,
                owner,
                company: String::new(),
            },
        );
        let tasks = vec![
            task(
                "t",
                json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
            ),
            task(
                "grafana",
                json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.9", "_PORT": 80}),
            ),
        ];
        let p = r.plan(
            &tasks,
            &statics,
            &RouteSet::default(),
            &settings(),
            &policy(),
            0,
        );
        assert_eq!(p.routes.tcp.keys().copied().collect::<Vec<_>>(), [30001]);
        assert!(p.routes.http.is_empty());
        assert!(p.refused[0].reason.contains("static route"));
    }

    #[test]
    fn ten_thousand_tasks_plan_and_settle() {
        let mut r = reconciler(20000, 40000);
        let mut tasks: Vec<Task> = (0..10_000)
            .map(|i| {
                task(
                    &format!("{i:032x}"),
                    json!({"_SERVICE": "EXTERNAL_TCP", "external_address": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256), "external_tcp_port": 22}),
                )
            })
            .collect();
        let p = plan(&mut r, &tasks);
        assert_eq!(p.routes.tcp.len(), 10_000);
        assert_eq!(p.writes.len(), 10_000);
        write_back(&mut tasks, &p);
        let p2 = plan(&mut r, &tasks);
        assert_eq!(p2.routes, p.routes);
        assert!(p2.writes.is_empty());
    }
}
