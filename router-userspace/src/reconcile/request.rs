//! Reading a task's runtime properties into endpoint requests: which endpoints it asks for, of
//! which protocol, to which upstream, and why a request is refused or left to another router.

use super::client_allow;
use super::naming::subdomain_label;
use super::settings::Settings;
use crate::clearml::task::{Task, runtime_key};
use crate::client_allow::ClientAllow;
use crate::endpoint::EndpointId;
use crate::routes::{HttpMode, RouteOwner};
use crate::validate::{self, UpstreamPolicy};
use std::collections::BTreeSet;
use std::net::SocketAddrV4;

pub const SERVICE_HTTP: &str = "EXTERNAL";
pub const SERVICE_TCP: &str = "EXTERNAL_TCP";

/// An endpoint request the router refused, with the reason (shown in the log and `status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// Whose request: flattened, so the JSON keeps its `task_id`, `task_name` and `endpoint`.
    #[serde(flatten)]
    pub owner: RouteOwner,
    /// `tcp` or `http` (empty when the kind could not be told).
    #[serde(default)]
    pub kind: String,
    pub reason: String,
}

impl Refusal {
    /// `task`'s request for endpoint `key` of protocol `kind` (`None`: not told), refused for
    /// `reason`.
    pub(super) fn new(task: &Task, key: EndpointId, kind: Option<Kind>, reason: String) -> Self {
        Refusal {
            owner: RouteOwner::new(key, validate::truncate(&task.name)),
            kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
            reason,
        }
    }
}

/// The protocol of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Tcp,
    Http,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Http => "http",
        }
    }
}

/// What one endpoint of a task asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    Tcp {
        upstream: SocketAddrV4,
        /// The router port already written on the task by this router.
        routed_port: Option<u16>,
        /// Who may connect: `ROUTER_TCP_CLIENT_ALLOW` narrowed by the task's key.
        allow: ClientAllow,
    },
    Http {
        upstream: SocketAddrV4,
        mode: HttpMode,
    },
}

impl Want {
    pub fn kind(&self) -> Kind {
        match self {
            Want::Tcp { .. } => Kind::Tcp,
            Want::Http { .. } => Kind::Http,
        }
    }
}

/// One request of a task, read from its runtime properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Request {
        key: EndpointId,
        want: Want,
    },
    /// Refused; `kind` is `None` when the request could not be read that far.
    Refused {
        key: EndpointId,
        kind: Option<Kind>,
        reason: String,
    },
    /// Claimed by another router.
    Foreign {
        key: EndpointId,
        router: String,
    },
}

/// One readable request of a task during planning.
pub(super) struct Req<'a> {
    pub(super) task: &'a Task,
    pub(super) key: EndpointId,
    pub(super) want: Want,
}

/// Runtime keys whose presence (with any suffix) makes an endpoint request. The protocol comes
/// from the keys, not from `_SERVICE`: SDK 2.0 keeps one unsuffixed `_SERVICE`, so a task that
/// asked for both protocols shows only the last one there.
const REQUEST_KEYS: &[&str] = &[
    "_SERVICE",
    "_PORT",
    "_ADDRESS",
    "external_tcp_port",
    "external_address",
];

/// Whether `task` asks for endpoint `name` under exactly that name (a refused name may have
/// been shortened for the log: only a name the task wrote can carry a key written back).
pub(super) fn mentions_endpoint(task: &Task, name: &str) -> bool {
    REQUEST_KEYS
        .iter()
        .any(|base| task.runtime.contains_key(&runtime_key(base, name)))
}

/// The endpoint names a task's runtime mentions (`""` = default), servable names first, each
/// once (any name the SDK writes is servable but an empty one, one with control characters or
/// an absurdly long one: `validate::endpoint_name`). A set, not a search of a list: a task may
/// write thousands of keys, and deduplicating by search made reading one such task quadratic
/// (found by the parser fuzz tests: 20 000 endpoints took 25 s and stalled the reconcile loop
/// for every other task).
fn endpoint_names(task: &Task) -> Vec<Result<String, (String, String)>> {
    let mut names: BTreeSet<Result<String, (String, String)>> = BTreeSet::new();
    for k in task.runtime.keys() {
        for base in REQUEST_KEYS {
            let name = if k == base {
                Some(Ok(String::new()))
            } else {
                k.strip_prefix(base)
                    .and_then(|rest| rest.strip_prefix("__"))
                    .map(|name| {
                        validate::endpoint_name(name)
                            .map(str::to_string)
                            .map_err(|e| (validate::truncate(name), e))
                    })
            };
            if let Some(name) = name {
                names.insert(name);
            }
        }
    }
    // `Ok` sorts before `Err`: valid names by name, then the refused ones.
    names.into_iter().collect()
}

/// The protocols endpoint `name` asks for: by its keys, else by `_SERVICE`.
fn requested_kinds(task: &Task, name: &str) -> Result<Vec<Kind>, String> {
    let has = |base: &str| task.runtime.contains_key(&runtime_key(base, name));
    let mut kinds = Vec::new();
    if has("external_tcp_port") || has("external_address") {
        kinds.push(Kind::Tcp);
    }
    if has("_PORT") || has("_ADDRESS") {
        kinds.push(Kind::Http);
    }
    if kinds.is_empty() {
        match task.runtime_str(&runtime_key("_SERVICE", name)).as_deref() {
            Some(SERVICE_TCP) => kinds.push(Kind::Tcp),
            Some(SERVICE_HTTP) => kinds.push(Kind::Http),
            // An empty `_SERVICE`: a withdrawn request.
            None => {}
            Some(other) => {
                return Err(format!(
                    "{} {:?} is neither {SERVICE_HTTP} nor {SERVICE_TCP}",
                    runtime_key("_SERVICE", name),
                    validate::truncate(other)
                ));
            }
        }
    }
    Ok(kinds)
}

/// Reads every endpoint request of `task`. The task must already be known to want routes
/// (running, tagged, in a listened queue).
pub fn parse_task(task: &Task, s: &Settings, policy: &UpstreamPolicy) -> Vec<Parsed> {
    let names = endpoint_names(task);
    if names.is_empty() {
        return Vec::new();
    }
    if let Err(reason) = validate::task_id(&task.id) {
        return vec![Parsed::Refused {
            key: EndpointId::new(validate::truncate(&task.id), ""),
            kind: None,
            reason,
        }];
    }
    let mut out = Vec::new();
    for name in names {
        let name = match name {
            Ok(name) => name,
            Err((name, reason)) => {
                out.push(Parsed::Refused {
                    key: EndpointId::new(task.id.clone(), name),
                    kind: None,
                    reason,
                });
                continue;
            }
        };
        let key = EndpointId::new(task.id.clone(), name.as_str());
        if let Some(router) = task.runtime_str(&runtime_key("_ROUTER_NAME", &name))
            && router != s.router_name
        {
            out.push(Parsed::Foreign {
                key,
                router: validate::truncate(&router),
            });
            continue;
        }
        match requested_kinds(task, &name) {
            Ok(kinds) => {
                for kind in kinds {
                    out.push(parse_endpoint(task, &name, kind, s, policy));
                }
            }
            Err(reason) => out.push(Parsed::Refused {
                key,
                kind: None,
                reason,
            }),
        }
    }
    out
}

/// One request of endpoint `name` of protocol `kind` (the claim was checked by the caller).
fn parse_endpoint(
    task: &Task,
    name: &str,
    kind: Kind,
    s: &Settings,
    policy: &UpstreamPolicy,
) -> Parsed {
    let key = EndpointId::new(task.id.clone(), name);
    let get = |base: &str| task.runtime_str(&runtime_key(base, name));
    let refuse = |reason: String| Parsed::Refused {
        key: key.clone(),
        kind: Some(kind),
        reason,
    };
    let ours = get("_ROUTER_NAME").as_deref() == Some(s.router_name.as_str());
    match kind {
        Kind::Tcp => {
            let address = get("external_address");
            let port = get("external_tcp_port");
            let routed_port = port
                .as_deref()
                .and_then(|p| validate::port_number(p).ok())
                .filter(|_| ours && address.as_deref() == Some(s.tcp_address.as_str()));
            let (addr_key, port_key) = if routed_port.is_some() {
                ("upstream_task_address", "upstream_task_port")
            } else {
                ("external_address", "external_tcp_port")
            };
            let (Some(address), Some(port)) = (get(addr_key), get(port_key)) else {
                return refuse(format!(
                    "TCP request without {} and {}",
                    runtime_key(addr_key, name),
                    runtime_key(port_key, name)
                ));
            };
            let upstream = match policy.upstream(&address, &port) {
                Ok(upstream) => upstream,
                Err(reason) => return refuse(reason),
            };
            match client_allow::effective(task, name, &s.client_allow) {
                Ok(allow) => Parsed::Request {
                    key,
                    want: Want::Tcp {
                        upstream,
                        routed_port,
                        allow,
                    },
                },
                Err(reason) => refuse(reason),
            }
        }
        Kind::Http => {
            if let Err(reason) = validate::company(&task.company) {
                return refuse(reason);
            }
            let (Some(address), Some(port)) = (get("_ADDRESS"), get("_PORT")) else {
                return refuse(format!(
                    "HTTP request without {} and {}",
                    runtime_key("_ADDRESS", name),
                    runtime_key("_PORT", name)
                ));
            };
            let mode = match get("_ROUTER_ENDPOINT_MODE").as_deref() {
                None => s.default_mode,
                Some(m) if m.eq_ignore_ascii_case("path") => HttpMode::Path,
                Some(m) if m.eq_ignore_ascii_case("subdomain") => HttpMode::Subdomain,
                Some(other) => {
                    return refuse(format!(
                        "{} {:?} is neither path nor subdomain",
                        runtime_key("_ROUTER_ENDPOINT_MODE", name),
                        validate::truncate(other)
                    ));
                }
            };
            if mode == HttpMode::Subdomain {
                if s.domain.is_none() {
                    return refuse(
                        "subdomain mode asked for, but this router has no ROUTER_DOMAIN".into(),
                    );
                }
                if let Err(reason) = subdomain_label(&task.id, name) {
                    return refuse(reason);
                }
            }
            match policy.upstream(&address, &port) {
                Ok(upstream) => Parsed::Request {
                    key,
                    want: Want::Http { upstream, mode },
                },
                Err(reason) => refuse(reason),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::reconcile::test_support::*;
    use crate::reconcile::write_back::recheck;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn sdk_2_0_tcp_and_http_on_one_task_are_both_served() {
        // SDK 2.0 keeps one unsuffixed _SERVICE (the last request's); the keys tell both.
        let mut r = reconciler(30000, 30010);
        let mut tasks = vec![task(
            "t",
            json!({"_SERVICE": "EXTERNAL", "external_address": "10.1.2.3", "external_tcp_port": 9000,
                   "_ADDRESS": "10.1.2.3", "_PORT": 8080}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(
            p.routes.tcp[&30000].upstream,
            "10.1.2.3:9000".parse().unwrap()
        );
        assert_eq!(
            p.routes.http["t"].upstream,
            "10.1.2.3:8080".parse().unwrap()
        );
        assert_eq!(p.writes.len(), 2);
        let (s, pol) = (settings(), policy());
        for wb in &p.writes {
            assert_eq!(recheck(&tasks[0], wb, &s, &pol), Ok(wb.patch.clone()));
        }
        write_back(&mut tasks, &p);
        for wb in &p.writes {
            assert_eq!(recheck(&tasks[0], wb, &s, &pol), Ok(wb.patch.clone()));
        }
        let p2 = plan(&mut r, &tasks);
        assert_eq!(p2.routes, p.routes);
        assert!(p2.writes.is_empty(), "{:?}", p2.writes);
    }

    #[test]
    fn clearml_session_string_ports_are_accepted() {
        let mut r = reconciler(30000, 30010);
        let tasks = vec![task(
            "s1",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.1.2.3",
                   "external_tcp_port": "10022", "_ssh_password": "x"}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(
            p.routes.tcp[&30000].upstream,
            "10.1.2.3:10022".parse().unwrap()
        );
    }

    #[test]
    fn other_routers_tasks_are_left_alone() {
        let mut r = reconciler(30000, 30010);
        let tasks = vec![task(
            "t",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.5", "_PORT": 80,
                   "_ROUTER_NAME": "other", "endpoint": "https://other/service/t/"}),
        )];
        let p = plan(&mut r, &tasks);
        assert!(p.routes.http.is_empty() && p.writes.is_empty());
        assert_eq!(p.foreign, 1);
    }

    #[test]
    fn bad_input_is_refused_with_reasons_and_the_rest_served() {
        let mut r = reconciler(30000, 30010);
        let tasks = vec![
            task(
                "a",
                json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "127.0.0.1", "external_tcp_port": 22}),
            ),
            task(
                "b",
                json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 0}),
            ),
            task(
                "c",
                json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "8.8.8.8", "_PORT": 80}),
            ),
            task("d", json!({"_SERVICE": "EXTERNAL", "_PORT": 80})),
            task("e", json!({"_SERVICE": "SOMETHING"})),
            task("f", json!({"_SERVICE__bad\nname": "EXTERNAL"})),
            task(
                "g;rm",
                json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.1", "_PORT": 80}),
            ),
            task(
                "h",
                json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.1", "_PORT": 80,
                             "_ROUTER_ENDPOINT_MODE": "magic"}),
            ),
            task(
                "ok",
                json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
            ),
        ];
        let p = plan(&mut r, &tasks);
        let reasons: BTreeMap<&str, &str> = p
            .refused
            .iter()
            .map(|f| (f.owner.id.task_id.as_str(), f.reason.as_str()))
            .collect();
        assert!(reasons["a"].contains("loopback"), "{reasons:?}");
        assert!(reasons["b"].contains("not a port"), "{reasons:?}");
        assert!(reasons["c"].contains("outside ROUTER_ALLOWED_UPSTREAMS"));
        assert!(reasons["d"].contains("without _ADDRESS"));
        assert!(reasons["e"].contains("neither EXTERNAL"));
        assert!(reasons["f"].contains("endpoint name"));
        assert!(reasons["g;rm"].contains("task id"));
        assert!(reasons["h"].contains("neither path nor subdomain"));
        assert_eq!(p.refused.len(), 8);
        assert_eq!(p.routes.tcp.len(), 1);
        assert_eq!(p.routes.tcp[&30000].owner.id.task_id, "ok");
    }
}
