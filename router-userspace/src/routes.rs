//! The wanted-route model: what the control plane (ClearML sync, the routes file) wants served,
//! and the interfaces of the owners that make it so (kernel maps for TCP, nginx for HTTP).
//!
//! Data flows one way: sources → [`RouteSet`] → each owner's `apply` diffs it against what it
//! has programmed → write-back. Owners are idempotent: applying the same set twice changes
//! nothing the second time, so a missed cycle or a crash heals on the next one.

use crate::client_allow::ClientAllow;
use crate::endpoint::EndpointId;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// Who asked for a route: a ClearML task endpoint, or an entry of the static routes file.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct RouteOwner {
    /// Task id (or `file:<name>` for a static route) and endpoint name: the route's identity.
    /// Flattened, so persisted routes and `/status` keep their `task_id` and `endpoint` fields.
    #[serde(flatten)]
    pub id: EndpointId,
    /// Task name, for people reading `status`.
    pub task_name: String,
}

impl RouteOwner {
    pub fn new(id: EndpointId, task_name: impl Into<String>) -> Self {
        RouteOwner {
            id,
            task_name: task_name.into(),
        }
    }
}

/// A TCP route: connections to the router's `port` from the clients `allow` admits go to
/// `upstream`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpRoute {
    pub port: u16,
    pub upstream: SocketAddrV4,
    pub owner: RouteOwner,
    /// Whether the task sees the client's address (destination-only NAT); `None` = the
    /// daemon's `ROUTER_PRESERVE_CLIENT_IP`. The routes file sets it per route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_client_ip: Option<PreserveClientIp>,
    /// The effective client allow-list (`ROUTER_TCP_CLIENT_ALLOW` narrowed by the route's own
    /// `allow` or the task's key); routes saved before it existed admit everyone.
    #[serde(default)]
    pub allow: ClientAllow,
}

/// `ROUTER_PRESERVE_CLIENT_IP` and a route's `preserve_client_ip`: whether connections keep the
/// client's address toward the task (destination-only NAT) or come from the router (full NAT).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PreserveClientIp {
    /// Full NAT (the task sees the router's address).
    #[default]
    Off,
    /// Destination-only NAT where the backend's replies come back through the router (checked
    /// per route: `datapath::return_path`), full NAT elsewhere.
    Auto,
    /// Destination-only NAT; a warning where the check says the way back may miss the router.
    On,
}

/// How a TCP route's new connections are translated, and why (`status`, `/metrics`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientIpChoice {
    /// What was asked (`ROUTER_PRESERVE_CLIENT_IP` or the route's own setting).
    pub setting: PreserveClientIp,
    /// Destination-only NAT: the backend sees the client's address.
    pub preserved: bool,
    /// `on` although the return-path check says the task's replies may miss the router.
    pub forced: bool,
    pub reason: String,
}

impl ClientIpChoice {
    /// Full NAT, for a route asked nothing else.
    pub fn full_nat() -> ClientIpChoice {
        ClientIpChoice {
            setting: PreserveClientIp::Off,
            preserved: false,
            forced: false,
            reason: "off".into(),
        }
    }

    /// What a route found in an earlier daemon's pinned map does, until the first apply.
    pub fn adopted(preserved: bool) -> ClientIpChoice {
        ClientIpChoice {
            setting: if preserved {
                PreserveClientIp::On
            } else {
                PreserveClientIp::Off
            },
            preserved,
            forced: false,
            reason: "as an earlier daemon programmed it".into(),
        }
    }

    /// `preserved` or `translated`, the mode label of the metric.
    pub fn mode(&self) -> &'static str {
        if self.preserved {
            "preserved"
        } else {
            "translated"
        }
    }
}

impl PreserveClientIp {
    pub fn as_str(self) -> &'static str {
        match self {
            PreserveClientIp::Off => "off",
            PreserveClientIp::Auto => "auto",
            PreserveClientIp::On => "on",
        }
    }

    /// The value spelled `s` (any case), `None` for anything else.
    pub fn parse(s: &str) -> Option<PreserveClientIp> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Some(PreserveClientIp::Off),
            "auto" => Some(PreserveClientIp::Auto),
            "on" => Some(PreserveClientIp::On),
            _ => None,
        }
    }
}

/// How an HTTP route is addressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// `{ROUTER_URL}/service/{key}/`, prefix stripped before proxying.
    #[default]
    Path,
    /// `{key'}.{ROUTER_DOMAIN}` where key' is `task_id` or `task_id--name`.
    Subdomain,
}

/// An HTTP route: requests under the route's prefix (or host name) go to `upstream`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpRoute {
    /// `task_id` for the default endpoint, `task_id__name` for a named one (a derived key for
    /// names outside `[A-Za-z0-9_-]`: `reconcile::naming`). Validated
    /// (`[A-Za-z0-9_-]`, bounded length) before it gets here.
    pub key: String,
    pub upstream: SocketAddrV4,
    pub mode: HttpMode,
    pub owner: RouteOwner,
    /// The ClearML company whose users may reach it (the task's: a token opens only its own
    /// company's tasks); empty = any signed-in user (a public task, a routes-file entry).
    #[serde(default)]
    pub company: String,
}

/// Everything that should be served, keyed for diffing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSet {
    pub tcp: BTreeMap<u16, TcpRoute>,
    pub http: BTreeMap<String, HttpRoute>,
}

/// Which route of a [`RouteSet`]: a TCP route by its router port, an HTTP route by its key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum RouteRef {
    Tcp(u16),
    Http(String),
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRef::Tcp(port) => write!(f, "tcp port {port}"),
            RouteRef::Http(key) => write!(f, "http route {}", key.escape_debug()),
        }
    }
}

/// What an owner did in one `apply`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Routes that could not be programmed, with the reason (the rest were applied): the
    /// control plane holds back the write-back of these.
    pub failed: Vec<(RouteRef, String)>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.added == 0 && self.changed == 0 && self.removed == 0 && self.failed.is_empty()
    }
}

/// Live counters of one TCP route (summed over CPUs), shown by `task-router status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteCounters {
    /// Connections currently tracked for the route.
    pub connections: u64,
    /// Bytes forwarded for the route, both directions.
    pub bytes: u64,
}

/// Whether a forwarder can serve the routes it programmed, as of now: what
/// [`TcpForwarder::check_serving`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeCheck {
    /// Why no route can be served (an attached interface gone), if so.
    pub all: Option<String>,
    /// Programmed routes that cannot be served, by router port, with why (nothing listens on
    /// the port an nginx should hold).
    pub ports: BTreeMap<u16, String>,
}

impl ServeCheck {
    /// Why the route on `port` cannot be served, if so.
    pub fn problem(&self, port: u16) -> Option<&str> {
        self.all
            .as_deref()
            .or_else(|| self.ports.get(&port).map(String::as_str))
    }
}

/// Owner of the kernel's TCP route map (or of nginx `stream` servers in the fallback datapath).
pub trait TcpForwarder: Send {
    /// Makes the programmed TCP routes equal `wanted`. New connections follow the new routes at
    /// once; established connections keep their backend until they end.
    fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> anyhow::Result<ApplyReport>;

    /// Counters per programmed router port, read once per sync cycle; an owner that keeps none
    /// returns an empty map (the default).
    fn counters(&self) -> BTreeMap<u16, RouteCounters> {
        BTreeMap::new()
    }

    /// How each programmed TCP route translates client addresses, and why, read once per sync
    /// cycle; an owner that always translates them (nginx) returns an empty map (the default).
    fn client_ip(&self) -> BTreeMap<u16, ClientIpChoice> {
        BTreeMap::new()
    }

    /// Can the routes programmed now be served, and if not why: asked once per sync cycle,
    /// after `apply`, before their endpoints are written back (an endpoint nothing serves is
    /// never handed to a task). Cheap and without traffic: it looks (listening sockets,
    /// interfaces), it never connects. An owner that cannot tell says yes (the default).
    fn check_serving(&self) -> ServeCheck {
        ServeCheck::default()
    }
}

/// Owner of the generated nginx HTTP configuration.
pub trait HttpRouter: Send {
    /// Makes the served HTTP routes equal `wanted`; one reload at most per call, none when
    /// nothing changed. A configuration nginx rejects is never installed.
    fn apply(&mut self, wanted: &BTreeMap<String, HttpRoute>) -> anyhow::Result<ApplyReport>;
}
