//! The admin endpoint (`ROUTER_ADMIN_ADDR`): `/healthz`, `/readyz`, `/status`, plus whatever
//! other owners merge in (the nginx `auth_request` check at `/auth`, `/metrics`).
//!
//! Only loopback callers (and `ROUTER_ADMIN_ALLOW` CIDRs) are served; the guard wraps merged
//! routers too. [`Status`] is also what `task-router status` reads and renders.

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use crate::reconcile::Refusal;
use crate::routes::RouteOwner;

/// Everything `status` shows; the daemon keeps it current.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub router_name: String,
    pub pid: u32,
    pub started_at_ms: u64,
    pub ready: bool,
    /// Why not ready (empty when ready).
    pub ready_reason: String,
    /// While ready: what is wrong even though forwarding continues (the ClearML API failing,
    /// a removal held by the mass-removal guard, state not saved). `/readyz` prints them.
    #[serde(default)]
    pub degraded: Vec<String>,
    /// When the sync loop last went round (liveness).
    pub heartbeat_ms: u64,
    /// The longest the loop may stay silent before `/healthz` fails.
    pub heartbeat_limit_ms: u64,
    pub datapath: DatapathStatus,
    pub clearml: ClearmlStatus,
    pub routes_file: Option<RoutesFileStatus>,
    pub ports: crate::ports::PortStats,
    pub routes: Vec<RouteStatus>,
    pub refused: Vec<Refusal>,
    /// The TCP forwarder's last `apply` error, if it failed as a whole.
    pub tcp_error: Option<String>,
    /// The HTTP router's last `apply` error (e.g. nginx refused the config).
    pub http_error: Option<String>,
    /// The last failure to save `ROUTER_STATE_DIR` (`None` once a save succeeds).
    #[serde(default)]
    pub state_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DatapathStatus {
    /// `ROUTER_DATAPATH` as resolved.
    pub kind: String,
    /// `interface mode` for each attached interface.
    pub interfaces: Vec<String>,
    /// Interfaces whose mode forwards, but not as well as it could (from the start-up check).
    #[serde(default)]
    pub degraded: Vec<crate::datapath::capability::Degradation>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClearmlStatus {
    pub enabled: bool,
    /// `disabled`, `connecting`, `ok` or `error`.
    pub state: String,
    pub error: Option<String>,
    /// Since when the state holds.
    pub since_ms: u64,
    pub last_sync_ms: Option<u64>,
    pub last_sync_duration_ms: u64,
    /// Tasks asking for routes in the last listing.
    pub tasks: usize,
    /// Endpoints claimed by other routers.
    pub foreign: usize,
    pub cycles: u64,
    pub failed_cycles: u64,
    pub api_calls: u64,
    pub api_failures: u64,
    /// Routed tasks a held answer dropped (removal waits for the next answer to agree).
    #[serde(default)]
    pub held_removals: usize,
    /// Cycles whose answer the mass-removal guard held.
    #[serde(default)]
    pub held_cycles: u64,
    /// Task writes seen between the router's reads and its write-back (merged or repaired).
    #[serde(default)]
    pub concurrent_writes: u64,
    /// Latency histograms of the API calls, by endpoint and status.
    #[serde(default)]
    pub api_latency: Vec<crate::clearml::client::ApiCallStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoutesFileStatus {
    pub path: String,
    pub routes: usize,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// Whose route: flattened, so the JSON keeps its `task_id`, `task_name` and `endpoint`.
    #[serde(flatten)]
    pub owner: RouteOwner,
    /// `tcp` or `http`.
    pub kind: String,
    /// The router port (TCP) or URL (HTTP).
    pub router: String,
    pub upstream: String,
    /// `active`, `writing back`, `write-back failed: ...`, `failed: ...` (not programmed),
    /// `not served: ...` (programmed, but the forwarder cannot serve it: its task gets the
    /// reason instead of the endpoint) or `waiting to be served: ...`.
    pub state: String,
    /// Filled by the datapath's counters when available.
    pub connections: Option<u64>,
    pub bytes: Option<u64>,
    /// TCP routes of the eBPF datapath: whether the task sees the client's address, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<crate::routes::ClientIpChoice>,
    /// TCP: the clients that may open connections (`any`, `none` or CIDRs), the effective
    /// allow-list the kernel enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_allow: Option<String>,
}

pub type SharedStatus = Arc<RwLock<Status>>;

/// The admin routes, with `extra` routers (auth, metrics) merged in.
pub fn router(status: SharedStatus, extra: Vec<Router>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state(status);
    for r in extra {
        app = app.merge(r);
    }
    app
}

/// Serves `app` on `listener` until `shutdown`, refusing callers that are neither loopback nor
/// inside `allow`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    allow: Vec<Ipv4Net>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(middleware::from_fn_with_state(Arc::new(allow), guard));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Whether `peer` may call the admin endpoint.
pub fn caller_allowed(peer: IpAddr, allow: &[Ipv4Net]) -> bool {
    let v4 = match peer {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    peer.is_loopback()
        || v4.is_some_and(|a| a.is_loopback() || allow.iter().any(|n| n.contains(&a)))
}

async fn guard(
    State(allow): State<Arc<Vec<Ipv4Net>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if caller_allowed(peer.ip(), &allow) {
        next.run(request).await
    } else {
        tracing::debug!(%peer, "admin call refused");
        (
            StatusCode::FORBIDDEN,
            "the admin endpoint serves loopback and ROUTER_ADMIN_ALLOW only\n",
        )
            .into_response()
    }
}

async fn healthz(State(status): State<SharedStatus>) -> Response {
    let (beat, limit) = status
        .read()
        .map(|s| (s.heartbeat_ms, s.heartbeat_limit_ms))
        .unwrap_or((0, 0));
    let silent = crate::time::now_millis().saturating_sub(beat);
    if beat == 0 || limit == 0 || silent <= limit {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the sync loop has been silent for {silent} ms\n"),
        )
            .into_response()
    }
}

async fn readyz(State(status): State<SharedStatus>) -> Response {
    let (ready, reason) = status
        .read()
        .map(|s| (s.ready, s.ready_reason.clone()))
        .unwrap_or((false, "status unavailable".into()));
    let degraded = status
        .read()
        .map(|s| s.degraded.clone())
        .unwrap_or_default();
    if ready && degraded.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else if ready {
        // Still forwarding: a load balancer must keep sending traffic; a person sees why.
        let mut body = String::from("ready (degraded)\n");
        for d in degraded {
            body.push_str(&format!("degraded: {d}\n"));
        }
        (StatusCode::OK, body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response()
    }
}

async fn status_json(State(status): State<SharedStatus>) -> Response {
    match status.read() {
        Ok(s) => axum::Json(s.clone()).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n").into_response(),
    }
}

/// The human-readable form of `status`.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let ready = if s.ready {
        "ready".to_string()
    } else {
        format!("NOT READY: {}", s.ready_reason)
    };
    out.push_str(&format!(
        "task-router {} ({}), pid {}: {ready}\n",
        s.version, s.router_name, s.pid
    ));
    out.push_str(&format!(
        "datapath: {}{}\n",
        s.datapath.kind,
        if s.datapath.interfaces.is_empty() {
            String::new()
        } else {
            format!(" on {}", s.datapath.interfaces.join(", "))
        }
    ));
    let c = &s.clearml;
    if c.enabled {
        out.push_str(&format!(
            "clearml: {}{}; {} tasks, {} endpoints of other routers; {} cycles ({} failed)\n",
            c.state,
            c.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            c.tasks,
            c.foreign,
            c.cycles,
            c.failed_cycles
        ));
    } else {
        out.push_str("clearml: disabled\n");
    }
    for d in &s.degraded {
        out.push_str(&format!("degraded: {d}\n"));
    }
    if let Some(f) = &s.routes_file {
        out.push_str(&format!(
            "routes file: {} ({} routes){}\n",
            f.path,
            f.routes,
            f.error
                .as_ref()
                .map(|e| format!(", last reload failed: {e}"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "ports: {} of {} assigned, {} resting, {} reserved\n",
        s.ports.assigned, s.ports.range_size, s.ports.resting, s.ports.reserved
    ));
    for (what, e) in [
        ("tcp datapath", &s.tcp_error),
        ("http router", &s.http_error),
    ] {
        if let Some(e) = e {
            out.push_str(&format!("{what} error: {e}\n"));
        }
    }
    out.push('\n');
    let rows: Vec<[String; 9]> = s
        .routes
        .iter()
        .map(|r| {
            let count = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            [
                r.owner.id.to_string(),
                r.owner.task_name.clone(),
                r.kind.clone(),
                r.router.clone(),
                r.upstream.clone(),
                r.state.clone(),
                count(r.connections),
                count(r.bytes),
                r.client_allow.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TASK", "NAME", "KIND", "ROUTER", "UPSTREAM", "STATE", "CONNS", "BYTES", "CLIENTS",
        ],
        &rows,
    ));
    if s.routes.is_empty() {
        out.push_str("(no routes)\n");
    }
    out.push_str(&client_addresses(s));
    if !s.refused.is_empty() {
        out.push_str("\nrefused requests:\n");
        let rows: Vec<[String; 4]> = s
            .refused
            .iter()
            .map(|r| {
                [
                    r.owner.id.to_string(),
                    r.owner.task_name.clone(),
                    r.kind.clone(),
                    r.reason.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["TASK", "NAME", "KIND", "REASON"], &rows));
    }
    out
}

fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Per TCP route, whether the task sees the client's address and why; nothing when every route
/// is simply off (the default).
fn client_addresses(s: &Status) -> String {
    let lines: Vec<String> = s
        .routes
        .iter()
        .filter_map(|r| {
            let c = r.client_ip.as_ref()?;
            Some(format!("  {}: {} ({})\n", r.router, c.mode(), c.reason))
        })
        .collect();
    if lines.iter().all(|line| line.contains(": translated (off)")) {
        return String::new();
    }
    format!(
        "\nclient addresses (ROUTER_PRESERVE_CLIENT_IP):\n{}",
        lines.concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_allowed_callers() {
        let allow: Vec<Ipv4Net> = vec!["10.1.0.0/16".parse().unwrap()];
        assert!(caller_allowed("127.0.0.1".parse().unwrap(), &[]));
        assert!(caller_allowed("127.5.0.1".parse().unwrap(), &[]));
        assert!(caller_allowed("::1".parse().unwrap(), &[]));
        assert!(caller_allowed("::ffff:127.0.0.1".parse().unwrap(), &[]));
        assert!(!caller_allowed("10.1.2.3".parse().unwrap(), &[]));
        assert!(caller_allowed("10.1.2.3".parse().unwrap(), &allow));
        assert!(caller_allowed("::ffff:10.1.2.3".parse().unwrap(), &allow));
        assert!(!caller_allowed("10.2.0.1".parse().unwrap(), &allow));
        assert!(!caller_allowed("2001:db8::1".parse().unwrap(), &allow));
    }

    #[test]
    fn render_shows_routes_and_refusals() {
        let s = Status {
            version: "0.1.0".into(),
            router_name: "r1".into(),
            ready: true,
            routes: vec![RouteStatus {
                owner: RouteOwner::new(crate::endpoint::EndpointId::new("abc", "ssh"), "notebook"),
                kind: "tcp".into(),
                router: "30001".into(),
                upstream: "10.0.0.5:22".into(),
                state: "active".into(),
                connections: Some(2),
                bytes: None,
                client_ip: Some(crate::routes::ClientIpChoice {
                    setting: crate::routes::PreserveClientIp::Auto,
                    preserved: true,
                    forced: false,
                    reason: "auto: directly on br0 (bridge)".into(),
                }),
                client_allow: Some("10.8.0.0/16".into()),
            }],
            refused: vec![Refusal {
                owner: RouteOwner::new(crate::endpoint::EndpointId::new("bad", ""), "x"),
                kind: "tcp".into(),
                reason: "address 127.0.0.1 is loopback".into(),
            }],
            ..Status::default()
        };
        let text = render(&s);
        assert!(text.contains("ready"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("abc__ssh"))
            .expect(&text);
        for cell in [
            "notebook",
            "tcp",
            "30001",
            "10.0.0.5:22",
            "active",
            "10.8.0.0/16",
            "2",
            "-",
        ] {
            assert!(row.contains(cell), "{row}");
        }
        assert!(text.contains("address 127.0.0.1 is loopback"), "{text}");
        assert!(
            text.contains("30001: preserved (auto: directly on br0 (bridge))"),
            "{text}"
        );
    }

    #[test]
    fn render_shows_why_it_is_degraded() {
        let s = Status {
            ready: true,
            degraded: vec!["ClearML API failing for 12 s (...): connection refused".into()],
            ..Status::default()
        };
        let text = render(&s);
        assert!(
            text.contains("degraded: ClearML API failing for 12 s"),
            "{text}"
        );
    }
}
