//! ClearML tasks → the wanted route set, plus the runtime keys to write back.
//!
//! Pure and synchronous: given the tasks of one successful listing, [`Reconciler::plan`]
//! computes every route that should exist now (ports from the allocator, the server winning on
//! conflicts) and which tasks still need their endpoint written. The daemon applies the route
//! set through the owners' traits and only then writes back; a failed listing produces no plan,
//! so an API error never removes a route.
//!
//! Contract (section 7 of `shared/clearml-api.md`):
//! - a request is `_SERVICE<sfx>` = `EXTERNAL` (HTTP: `_ADDRESS<sfx>`, `_PORT<sfx>`) or
//!   `EXTERNAL_TCP` (TCP: `external_address<sfx>`, `external_tcp_port<sfx>`) on a running task
//!   with the `external_service` system tag, for the default endpoint and each `__<name>`;
//! - `_ROUTER_NAME<sfx>` claims the endpoint; another router's claim is left alone;
//! - TCP write-back: `external_address` = `TCP_ROUTER_ADDRESS`, `external_tcp_port` = the
//!   router port, the task's own values kept as `upstream_task_address` / `upstream_task_port`;
//!   "already routed" = our claim, our address and a port in the range;
//! - HTTP write-back: `endpoint` = `browser_endpoint` = `{ROUTER_URL}/service/{task}[__name]/`
//!   (or `{task}[--name].{ROUTER_DOMAIN}` in subdomain mode).

use crate::clearml::task::{Task, runtime_key};
use crate::ports::{EndpointKey, PortAllocator};
use crate::routes::{HttpMode, HttpRoute, RouteOwner, RouteSet, TcpRoute};
use crate::time::Millis;
use crate::validate::{self, UpstreamPolicy};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddrV4;

pub const SERVICE_HTTP: &str = "EXTERNAL";
pub const SERVICE_TCP: &str = "EXTERNAL_TCP";

/// What the reconciler needs to know about this router.
#[derive(Clone, Debug)]
pub struct Settings {
    pub router_name: String,
    /// `TCP_ROUTER_ADDRESS`.
    pub tcp_address: String,
    /// `ROUTER_URL`, no trailing slash.
    pub url: String,
    pub domain: Option<String>,
    pub default_mode: HttpMode,
    /// Ids of the listened queues; empty = all.
    pub queue_ids: Vec<String>,
    /// `ROUTER_MAX_ENDPOINTS_PER_TASK`: routes (TCP and HTTP together) one task may hold.
    pub max_endpoints_per_task: usize,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Settings {
            router_name: cfg.router.name.clone(),
            tcp_address: cfg.tcp.router_address.clone(),
            url: cfg.router.url.clone(),
            domain: cfg.http.domain.clone(),
            default_mode: cfg.http.mode,
            queue_ids: Vec::new(),
            max_endpoints_per_task: cfg.router.max_endpoints_per_task as usize,
        }
    }
}

/// An endpoint request the router refused, with the reason (shown in the log and `status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub task_id: String,
    pub task_name: String,
    pub endpoint: String,
    /// `tcp` or `http` (empty when the kind could not be told).
    #[serde(default)]
    pub kind: String,
    pub reason: String,
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
        key: EndpointKey,
        want: Want,
    },
    /// Refused; `kind` is `None` when the request could not be read that far.
    Refused {
        key: EndpointKey,
        kind: Option<Kind>,
        reason: String,
    },
    /// Claimed by another router.
    Foreign {
        key: EndpointKey,
        router: String,
    },
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

/// The endpoint names a task's runtime mentions (`""` = default), valid names first, each
/// once. A set, not a search of a list: a task may write thousands of keys, and deduplicating
/// by search made reading one such task quadratic (found by the parser fuzz tests: 20 000
/// endpoints took 25 s and stalled the reconcile loop for every other task).
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
            key: EndpointKey::new(validate::truncate(&task.id), ""),
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
                    key: EndpointKey::new(task.id.clone(), name),
                    kind: None,
                    reason,
                });
                continue;
            }
        };
        let key = EndpointKey::new(task.id.clone(), name.as_str());
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
    let key = EndpointKey::new(task.id.clone(), name);
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
            match policy.upstream(&address, &port) {
                Ok(upstream) => Parsed::Request {
                    key,
                    want: Want::Tcp {
                        upstream,
                        routed_port,
                    },
                },
                Err(reason) => refuse(reason),
            }
        }
        Kind::Http => {
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

/// The `HttpRoute::key` of an endpoint: `task` or `task__name`.
pub fn http_key(key: &EndpointKey) -> String {
    if key.endpoint.is_empty() {
        key.task_id.clone()
    } else {
        format!("{}__{}", key.task_id, key.endpoint)
    }
}

/// The DNS label of a subdomain-mode endpoint: `task` or `task--name`.
pub fn subdomain_label(task_id: &str, name: &str) -> Result<String, String> {
    let label = if name.is_empty() {
        task_id.to_ascii_lowercase()
    } else {
        format!("{}--{}", task_id, name).to_ascii_lowercase()
    };
    if label.len() > 63
        || label.starts_with('-')
        || label.ends_with('-')
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "{label:?} cannot be a DNS label (subdomain mode needs 1-63 of a-z 0-9 -)"
        ));
    }
    Ok(label)
}

/// The URL written as `endpoint` / `browser_endpoint` (the one place it is built): path mode
/// `{ROUTER_URL}/service/{key}/`; subdomain mode `{scheme}://{label}.{ROUTER_DOMAIN}[:port]/`
/// with the scheme and port of `ROUTER_URL`.
pub fn endpoint_url(s: &Settings, key: &EndpointKey, mode: HttpMode) -> String {
    match (mode, &s.domain) {
        (HttpMode::Subdomain, Some(domain)) => {
            let (scheme, rest) = s.url.split_once("://").unwrap_or(("http", &s.url));
            let authority = rest.split('/').next().unwrap_or("");
            let port = match authority.strip_prefix('[') {
                Some(v6) => v6.split_once(']').map(|(_, after)| after).unwrap_or(""),
                None => authority.find(':').map(|i| &authority[i..]).unwrap_or(""),
            };
            let label = subdomain_label(&key.task_id, &key.endpoint).unwrap_or_default();
            format!("{scheme}://{label}.{domain}{port}/")
        }
        _ => format!("{}/service/{}/", s.url, http_key(key)),
    }
}

/// Where a write-back's route lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteRef {
    Tcp(u16),
    Http(String),
}

impl RouteRef {
    /// The id an owner's `ApplyReport::failed` uses for this route.
    pub fn id(&self) -> String {
        match self {
            RouteRef::Tcp(port) => port.to_string(),
            RouteRef::Http(key) => key.clone(),
        }
    }
}

/// Runtime keys to write on one task endpoint once its route is programmed.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteBack {
    pub key: EndpointKey,
    pub task_name: String,
    pub route: RouteRef,
    /// The request the write answers; the write is skipped if the task changed it meanwhile.
    pub want: Want,
    pub patch: BTreeMap<String, Value>,
}

/// The keys for a TCP endpoint routed on `port`.
pub fn tcp_patch(
    s: &Settings,
    name: &str,
    port: u16,
    upstream: SocketAddrV4,
) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (
            runtime_key("external_address", name),
            Value::from(s.tcp_address.clone()),
        ),
        (runtime_key("external_tcp_port", name), Value::from(port)),
        (
            runtime_key("upstream_task_address", name),
            Value::from(upstream.ip().to_string()),
        ),
        (
            runtime_key("upstream_task_port", name),
            Value::from(upstream.port()),
        ),
        (
            runtime_key("_ROUTER_NAME", name),
            Value::from(s.router_name.clone()),
        ),
    ])
}

/// The keys for an HTTP endpoint served at `url`.
pub fn http_patch(s: &Settings, name: &str, url: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (runtime_key("endpoint", name), Value::from(url)),
        (runtime_key("browser_endpoint", name), Value::from(url)),
        (
            runtime_key("_ROUTER_NAME", name),
            Value::from(s.router_name.clone()),
        ),
    ])
}

/// Called on the freshly re-read task before (and after) a write: the keys to write if the task
/// still asks for exactly what `wb` answers, else why not.
pub fn recheck(
    task: &Task,
    wb: &WriteBack,
    s: &Settings,
    policy: &UpstreamPolicy,
) -> Result<BTreeMap<String, Value>, String> {
    if !task.wants_routes(&s.queue_ids) {
        return Err(format!(
            "task is {} (or untagged, archived, requeued)",
            task.status
        ));
    }
    let kind = wb.want.kind();
    let parsed = parse_task(task, s, policy).into_iter().find(|p| match p {
        Parsed::Request { key, want } => *key == wb.key && want.kind() == kind,
        Parsed::Refused { key, kind: k, .. } => *key == wb.key && k.is_none_or(|k| k == kind),
        Parsed::Foreign { key, .. } => *key == wb.key,
    });
    match parsed {
        None => Err("the task withdrew the request".into()),
        Some(Parsed::Foreign { router, .. }) => Err(format!("claimed by router {router:?}")),
        Some(Parsed::Refused { reason, .. }) => {
            Err(format!("the request is now refused: {reason}"))
        }
        Some(Parsed::Request { want, .. }) => {
            let same = match (&want, &wb.want, &wb.route) {
                (
                    Want::Tcp {
                        upstream,
                        routed_port,
                    },
                    Want::Tcp { upstream: ours, .. },
                    RouteRef::Tcp(port),
                ) => upstream == ours && routed_port.is_none_or(|p| p == *port),
                (
                    Want::Http { upstream, mode },
                    Want::Http {
                        upstream: u,
                        mode: m,
                    },
                    _,
                ) => upstream == u && mode == m,
                _ => false,
            };
            if same {
                Ok(wb.patch.clone())
            } else {
                Err("the task changed its request".into())
            }
        }
    }
}

/// The result of one planning pass.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Routes from ClearML (static routes not included).
    pub routes: RouteSet,
    /// Endpoints whose runtime keys differ from what they should be.
    pub writes: Vec<WriteBack>,
    pub refused: Vec<Refusal>,
    /// Endpoints claimed by other routers.
    pub foreign: usize,
    /// Tasks that want routes.
    pub tasks: usize,
}

/// One readable request of a task during planning.
struct Req<'a> {
    task: &'a Task,
    key: EndpointKey,
    want: Want,
}

/// Why a request past `ROUTER_MAX_ENDPOINTS_PER_TASK` is not served (the same text every cycle:
/// refusals are logged once per change).
pub fn over_limit_reason(task_id: &str, limit: usize) -> String {
    format!(
        "task {task_id} asks for more than ROUTER_MAX_ENDPOINTS_PER_TASK={limit} routes \
         (TCP and HTTP counted together); this one is served once the task holds fewer"
    )
}

/// Every route of `routes` with its owner and protocol.
fn route_owners(routes: &RouteSet) -> impl Iterator<Item = (&RouteOwner, Kind)> {
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
fn limit_per_task<'a>(
    requests: Vec<Req<'a>>,
    in_force: &RouteSet,
    s: &Settings,
    refused: &mut Vec<Refusal>,
) -> Vec<Req<'a>> {
    let limit = s.max_endpoints_per_task;
    let held: std::collections::HashSet<(&str, &str, Kind)> = route_owners(in_force)
        .map(|(owner, kind)| (owner.task_id.as_str(), owner.endpoint.as_str(), kind))
        .collect();
    let tier = |r: &Req| -> u8 {
        let kind = r.want.kind();
        if held.contains(&(r.key.task_id.as_str(), r.key.endpoint.as_str(), kind)) {
            return 0;
        }
        let routed_by_us = match &r.want {
            Want::Tcp { routed_port, .. } => routed_port.is_some(),
            Want::Http { mode, .. } => crate::clearml::client::applied(
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
            refused.push(Refusal {
                reason: over_limit_reason(&r.key.task_id, limit),
                task_id: r.key.task_id,
                task_name: validate::truncate(&r.task.name),
                endpoint: r.key.endpoint,
                kind: r.want.kind().as_str().into(),
            });
        }
    }
    kept
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
        let mut requests: Vec<Req> = Vec::new();
        for task in tasks {
            if !task.wants_routes(&s.queue_ids) {
                continue;
            }
            plan.tasks += 1;
            for parsed in parse_task(task, s, policy) {
                match parsed {
                    Parsed::Request { key, want } => requests.push(Req { task, key, want }),
                    Parsed::Refused { key, kind, reason } => plan.refused.push(Refusal {
                        task_id: key.task_id,
                        task_name: validate::truncate(&task.name),
                        endpoint: key.endpoint,
                        kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
                        reason,
                    }),
                    Parsed::Foreign { .. } => plan.foreign += 1,
                }
            }
        }
        requests.sort_by(|a, b| (&a.key, a.want.kind()).cmp(&(&b.key, b.want.kind())));
        // Before any port is claimed or allocated: a refused request holds nothing.
        let requests = limit_per_task(requests, in_force, s, &mut plan.refused);

        // Ports: static reservations, then the server's claims, then releases, then new ones.
        self.ports.set_reserved(static_routes.tcp.keys().copied());
        let mut port_of: HashMap<EndpointKey, u16> = HashMap::new();
        let mut claimed: HashMap<u16, EndpointKey> = HashMap::new();
        for r in &requests {
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
        let live: std::collections::HashSet<&EndpointKey> = requests
            .iter()
            .filter(|r| matches!(r.want, Want::Tcp { .. }))
            .map(|r| &r.key)
            .collect();
        self.ports.retain(now, |k| live.contains(k));
        // Once the range is full it stays full for the rest of this pass: later requests
        // without a port are refused at once instead of each walking the whole range (a task
        // asking for thousands of endpoints made that quadratic: found by the fuzz tests).
        let mut exhausted: Option<String> = None;
        for r in &requests {
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
                        plan.refused.push(Refusal {
                            task_id: r.key.task_id.clone(),
                            task_name: validate::truncate(&r.task.name),
                            endpoint: r.key.endpoint.clone(),
                            kind: Kind::Tcp.as_str().into(),
                            reason,
                        });
                    }
                }
            }
        }

        for r in requests {
            let owner = RouteOwner {
                task_id: r.key.task_id.clone(),
                task_name: validate::truncate(&r.task.name),
                endpoint: r.key.endpoint.clone(),
            };
            let (route, patch) = match r.want {
                Want::Tcp { upstream, .. } => {
                    let Some(&port) = port_of.get(&r.key) else {
                        continue;
                    };
                    plan.routes.tcp.insert(
                        port,
                        TcpRoute {
                            port,
                            upstream,
                            owner,
                        },
                    );
                    (
                        RouteRef::Tcp(port),
                        tcp_patch(s, &r.key.endpoint, port, upstream),
                    )
                }
                Want::Http { upstream, mode } => {
                    let key = http_key(&r.key);
                    if static_routes.http.contains_key(&key) {
                        plan.refused.push(Refusal {
                            task_id: r.key.task_id.clone(),
                            task_name: owner.task_name,
                            endpoint: r.key.endpoint.clone(),
                            kind: Kind::Http.as_str().into(),
                            reason: format!("HTTP key {key:?} is taken by a static route"),
                        });
                        continue;
                    }
                    let url = endpoint_url(s, &r.key, mode);
                    plan.routes.http.insert(
                        key.clone(),
                        HttpRoute {
                            key: key.clone(),
                            upstream,
                            mode,
                            owner,
                        },
                    );
                    (RouteRef::Http(key), http_patch(s, &r.key.endpoint, &url))
                }
            };
            if !crate::clearml::client::applied(&r.task.runtime, &patch) {
                plan.writes.push(WriteBack {
                    key: r.key,
                    task_name: validate::truncate(&r.task.name),
                    route,
                    want: r.want,
                    patch,
                });
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn settings() -> Settings {
        Settings {
            router_name: "r1".into(),
            tcp_address: "203.0.113.7".into(),
            url: "https://router.example.com".into(),
            domain: Some("apps.example.com".into()),
            default_mode: HttpMode::Path,
            queue_ids: Vec::new(),
            max_endpoints_per_task: 16,
        }
    }

    fn policy() -> UpstreamPolicy {
        UpstreamPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], [])
    }

    fn task(id: &str, runtime: Value) -> Task {
        Task {
            id: id.into(),
            name: format!("name-{id}"),
            status: "in_progress".into(),
            system_tags: vec!["external_service".into()],
            queue: Some("q1".into()),
            runtime: serde_json::from_value(runtime).unwrap(),
        }
    }

    fn reconciler(start: u16, end: u16) -> Reconciler {
        Reconciler::new(PortAllocator::in_memory(
            start,
            end,
            Duration::from_secs(60),
        ))
    }

    fn plan(r: &mut Reconciler, tasks: &[Task]) -> Plan {
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
    fn write_back(tasks: &mut [Task], plan: &Plan) {
        for wb in &plan.writes {
            let t = tasks.iter_mut().find(|t| t.id == wb.key.task_id).unwrap();
            for (k, v) in &wb.patch {
                t.runtime.insert(k.clone(), v.clone());
            }
        }
    }

    #[test]
    fn sdk_tcp_request_is_routed_and_written_back() {
        let mut r = reconciler(30000, 30010);
        let mut tasks = vec![task(
            "t1",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.1.2.3",
                   "external_tcp_port": 22, "upstream_task_port": 22, "CLEARML VERSION": "2.1"}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(p.routes.tcp.len(), 1);
        let route = &p.routes.tcp[&30000];
        assert_eq!(route.upstream, "10.1.2.3:22".parse().unwrap());
        assert_eq!(route.owner.task_id, "t1");
        assert_eq!(p.writes.len(), 1);
        let patch = &p.writes[0].patch;
        assert_eq!(patch["external_address"], json!("203.0.113.7"));
        assert_eq!(patch["external_tcp_port"], json!(30000));
        assert_eq!(patch["upstream_task_address"], json!("10.1.2.3"));
        assert_eq!(patch["upstream_task_port"], json!(22));
        assert_eq!(patch["_ROUTER_NAME"], json!("r1"));

        // After the write-back the task reads as routed: same route, nothing more to write.
        write_back(&mut tasks, &p);
        let p2 = plan(&mut r, &tasks);
        assert_eq!(p2.routes, p.routes);
        assert!(p2.writes.is_empty(), "{:?}", p2.writes);
    }

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
    fn http_requests_get_urls_default_and_named() {
        let mut r = reconciler(30000, 30010);
        let tasks = vec![task(
            "abc",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.5", "_PORT": 7860,
                   "_SERVICE__api": "EXTERNAL", "_ADDRESS__api": "10.0.0.5", "_PORT__api": "8000",
                   "_SERVICE__ui": "EXTERNAL", "_ADDRESS__ui": "10.0.0.5", "_PORT__ui": 8501,
                   "_ROUTER_ENDPOINT_MODE__ui": "subdomain"}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(p.routes.http.len(), 3);
        assert!(p.routes.tcp.is_empty());
        let def = &p.routes.http["abc"];
        assert_eq!(def.upstream, "10.0.0.5:7860".parse().unwrap());
        assert_eq!(def.mode, HttpMode::Path);
        assert_eq!(p.routes.http["abc__api"].owner.endpoint, "api");
        assert_eq!(p.routes.http["abc__ui"].mode, HttpMode::Subdomain);
        let urls: BTreeMap<String, Value> = p
            .writes
            .iter()
            .flat_map(|w| w.patch.clone())
            .filter(|(k, _)| k.starts_with("endpoint"))
            .collect();
        assert_eq!(
            urls["endpoint"],
            json!("https://router.example.com/service/abc/")
        );
        assert_eq!(
            urls["endpoint__api"],
            json!("https://router.example.com/service/abc__api/")
        );
        assert_eq!(
            urls["endpoint__ui"],
            json!("https://abc--ui.apps.example.com/")
        );
        let w = p.writes.iter().find(|w| w.key.endpoint == "api").unwrap();
        assert_eq!(w.patch["browser_endpoint__api"], w.patch["endpoint__api"]);
        assert_eq!(w.patch["_ROUTER_NAME__api"], json!("r1"));
    }

    #[test]
    fn subdomain_urls_keep_the_router_port() {
        let mut s = settings();
        s.url = "http://203.0.113.7:8080".into();
        let key = EndpointKey::new("abc", "");
        assert_eq!(
            endpoint_url(&s, &key, HttpMode::Subdomain),
            "http://abc.apps.example.com:8080/"
        );
        assert_eq!(
            endpoint_url(&s, &key, HttpMode::Path),
            "http://203.0.113.7:8080/service/abc/"
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
            task("f", json!({"_SERVICE__bad.name": "EXTERNAL"})),
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
            .map(|f| (f.task_id.as_str(), f.reason.as_str()))
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
        assert_eq!(p.routes.tcp[&30000].owner.task_id, "ok");
    }

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
        assert_eq!(r.ports.port_of(&EndpointKey::new("local", "")), Some(30000));
        // ... but the server shows "srv" on 30000.
        let srv = task(
            "srv",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "203.0.113.7",
                   "external_tcp_port": 30000, "upstream_task_address": "10.0.0.9",
                   "upstream_task_port": 22, "_ROUTER_NAME": "r1"}),
        );
        let p = plan(&mut r, &[local, srv]);
        assert_eq!(p.routes.tcp[&30000].owner.task_id, "srv");
        let moved = p
            .routes
            .tcp
            .values()
            .find(|t| t.owner.task_id == "local")
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
        assert_eq!(p.routes.tcp[&30003].owner.task_id, "a");
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].key.task_id, "b");
    }

    #[test]
    fn a_rewritten_request_is_rerouted_on_the_same_port() {
        let mut r = reconciler(30000, 30010);
        let mut tasks = vec![task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
        )];
        let p = plan(&mut r, &tasks);
        write_back(&mut tasks, &p);
        // The task asks again with a new port (its own address back in external_address).
        let rt = &mut tasks[0].runtime;
        rt.insert("external_address".into(), json!("10.0.0.9"));
        rt.insert("external_tcp_port".into(), json!(2222));
        let p = plan(&mut r, &tasks);
        assert_eq!(
            p.routes.tcp[&30000].upstream,
            "10.0.0.9:2222".parse().unwrap()
        );
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].patch["upstream_task_port"], json!(2222));
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
        let owner = RouteOwner {
            task_id: "file:x".into(),
            task_name: "x".into(),
            endpoint: String::new(),
        };
        statics.tcp.insert(
            30000,
            TcpRoute {
                port: 30000,
                upstream: "10.0.0.1:1".parse().unwrap(),
                owner: owner.clone(),
            },
        );
        statics.http.insert(
            "grafana".into(),
            HttpRoute {
                key: "grafana".into(),
                upstream: "10.0.0.1:3000".parse().unwrap(),
                mode: HttpMode::Path,
                owner,
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
    fn recheck_follows_the_task() {
        let mut r = reconciler(30000, 30010);
        let t = task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
        );
        let p = plan(&mut r, std::slice::from_ref(&t));
        let wb = &p.writes[0];
        let (s, pol) = (settings(), policy());
        assert_eq!(recheck(&t, wb, &s, &pol), Ok(wb.patch.clone()));
        // After our write it still matches (now read through upstream_task_*).
        let mut written = t.clone();
        written.runtime.extend(wb.patch.clone());
        assert_eq!(recheck(&written, wb, &s, &pol), Ok(wb.patch.clone()));
        // Changed request, another router, stopped: no write.
        let mut changed = t.clone();
        changed
            .runtime
            .insert("external_tcp_port".into(), json!(23));
        assert!(
            recheck(&changed, wb, &s, &pol)
                .unwrap_err()
                .contains("changed")
        );
        let mut other = t.clone();
        other.runtime.insert("_ROUTER_NAME".into(), json!("r2"));
        assert!(recheck(&other, wb, &s, &pol).unwrap_err().contains("r2"));
        let mut stopped = t.clone();
        stopped.status = "stopped".into();
        assert!(recheck(&stopped, wb, &s, &pol).is_err());
        let withdrawn = task("t", json!({}));
        assert!(
            recheck(&withdrawn, wb, &s, &pol)
                .unwrap_err()
                .contains("withdrew")
        );
    }

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
            .filter(|(o, _)| o.task_id == task_id)
            .map(|(o, k)| (o.endpoint.clone(), k))
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
        let refused: Vec<&str> = p.refused.iter().map(|f| f.endpoint.as_str()).collect();
        assert_eq!(refused, ["c", "d", "e"]);
        for f in &p.refused {
            assert_eq!((f.task_id.as_str(), f.kind.as_str()), ("greedy", "tcp"));
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
        let refused: Vec<&str> = p2.refused.iter().map(|f| f.endpoint.as_str()).collect();
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
        assert_eq!(p4.refused[0].endpoint, "b");
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
        assert_eq!(p2.refused[0].endpoint, "e");
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
            (p.refused[0].endpoint.as_str(), p.refused[0].kind.as_str()),
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

#[cfg(test)]
mod fuzz;
