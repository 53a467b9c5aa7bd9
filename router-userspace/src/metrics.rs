//! Prometheus `/metrics` on the admin endpoint.
//!
//! Nothing is counted per packet here: every value is read when scraped, from the datapath's
//! maps (verdict counters, per-route counters of the last sweep, the connection count), the
//! daemon's shared [`Status`] (sync loop, ClearML, datapath modes) and nginx's own status.

use crate::admin::{ClearmlStatus, SharedStatus, Status};
use crate::datapath::Datapath;
use crate::nginx::Nginx;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, OnceLock};

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the metrics come from. Every source but the status is optional: the nginx datapath has
/// no kernel maps, and nginx is opened only when the first HTTP route (or the stream fallback)
/// needs it.
#[derive(Clone, Default)]
pub struct Sources {
    pub status: SharedStatus,
    pub datapath: Option<Arc<Mutex<Datapath>>>,
    /// Filled when nginx is opened.
    pub nginx: Arc<OnceLock<Nginx>>,
    /// The refusals of routed HTTP requests, when authentication serves them.
    pub auth: Option<Arc<crate::auth::Refusals>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("datapath", &self.datapath.is_some())
            .field("nginx", &self.nginx.get().is_some())
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

/// The `/metrics` router.
pub fn router(sources: Sources) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources));
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry))
}

/// The text a `/metrics` scrape of `sources` returns, without the HTTP server (the
/// observability benchmark renders it on its own schedule).
pub fn render(sources: &Sources) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources.clone()));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    // Reading the maps is a few syscalls per route and reason; keep them off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).map(|()| out)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

/// Writes one metric family: `name` with one sample per label set.
fn family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// One sample without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(value).encode(metric),
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self
            .status
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Status::default());
        encode_status(&mut encoder, &status)?;
        if let Some(datapath) = &self.datapath
            && let Ok(dp) = datapath.lock()
        {
            encode_datapath(&mut encoder, &dp)?;
        }
        if let Some(refusals) = &self.auth {
            family(
                &mut encoder,
                "task_router_auth_refusals",
                "routed HTTP requests refused, by reason (missing, malformed, expired, \
                 bad_signature: AUTH_BASE64_JWKS_KEY matches no form of the server's secret, \
                 wrong_company: a token of another company than the task's)",
                MetricType::Counter,
                refusals
                    .counts()
                    .into_iter()
                    .map(|(reason, n)| ([("reason", reason.label())], n as f64)),
            )?;
        }
        if let Some(nginx) = self.nginx.get() {
            let s = nginx.status();
            single(
                &mut encoder,
                "task_router_nginx_reloads",
                "nginx reloads done since start",
                MetricType::Counter,
                s.reloads as f64,
            )?;
            single(
                &mut encoder,
                "task_router_nginx_restarts",
                "times a managed nginx that had died was started again",
                MetricType::Counter,
                s.restarts as f64,
            )?;
            family(
                &mut encoder,
                "task_router_nginx_rejected_configs",
                "nginx configurations rejected and not yet replaced by a good one, per slot",
                MetricType::Gauge,
                s.rejected
                    .iter()
                    .map(|r| ([("slot", r.slot.to_string())], 1.0)),
            )?;
            single(
                &mut encoder,
                "task_router_nginx_failing",
                "1 while the last nginx reload or start failed",
                MetricType::Gauge,
                if s.last_error.is_some() { 1.0 } else { 0.0 },
            )?;
        }
        Ok(())
    }
}

/// The `interface mode` entries of the status as label pairs.
fn interface_modes(status: &Status) -> Vec<(String, String)> {
    status
        .datapath
        .interfaces
        .iter()
        .filter_map(|entry| {
            let (interface, mode) = entry.rsplit_once(' ')?;
            Some((interface.to_string(), mode.to_string()))
        })
        .collect()
}

fn encode_status(encoder: &mut DescriptorEncoder, s: &Status) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        "task_router_build_info",
        "the running build: version and git revision (task-router --version)",
        MetricType::Gauge,
        [(
            [
                ("version", crate::build_info::VERSION),
                ("revision", crate::build_info::REVISION),
            ],
            1.0,
        )],
    )?;
    single(
        encoder,
        "task_router_ready",
        "1 when programs are attached and the first sync is done",
        MetricType::Gauge,
        if s.ready { 1.0 } else { 0.0 },
    )?;
    family(
        encoder,
        "task_router_datapath_info",
        "the TCP datapath in use (ebpf mode, nginx or nginx (fallback))",
        MetricType::Gauge,
        [([("kind", s.datapath.kind.clone())], 1.0)],
    )?;
    family(
        encoder,
        "task_router_datapath_mode_info",
        "the hook the kernel programs run at, per attached interface",
        MetricType::Gauge,
        interface_modes(s)
            .into_iter()
            .map(|(interface, mode)| ([("interface", interface), ("mode", mode)], 1.0)),
    )?;
    family(
        encoder,
        "task_router_datapath_degraded",
        "1 per interface whose mode forwards, but not as well as it could, by reason (the \
         start-up check; the log and /readyz say what to do)",
        MetricType::Gauge,
        s.datapath.degraded.iter().map(|d| {
            (
                [
                    ("interface", d.interface.clone()),
                    ("reason", d.reason.clone()),
                ],
                1.0,
            )
        }),
    )?;
    encode_sync(encoder, &s.clearml)?;
    single(
        encoder,
        "task_router_state_save_failing",
        "1 while the state files in ROUTER_STATE_DIR cannot be saved",
        MetricType::Gauge,
        if s.state_error.is_some() { 1.0 } else { 0.0 },
    )?;
    single(
        encoder,
        "task_router_degraded",
        "reasons the router is degraded while it forwards (see /readyz)",
        MetricType::Gauge,
        s.degraded.len() as f64,
    )?;
    family(
        encoder,
        "task_router_routes",
        "routes in the status, by kind and state",
        MetricType::Gauge,
        route_states(s),
    )?;
    single(
        encoder,
        "task_router_refused_routes",
        "routes refused by validation or port allocation",
        MetricType::Gauge,
        s.refused.len() as f64,
    )?;
    Ok(())
}

/// The sync loop and the ClearML connection.
fn encode_sync(encoder: &mut DescriptorEncoder, c: &ClearmlStatus) -> Result<(), std::fmt::Error> {
    single(
        encoder,
        "task_router_sync_cycles",
        "sync cycles run",
        MetricType::Counter,
        c.cycles as f64,
    )?;
    single(
        encoder,
        "task_router_sync_failed_cycles",
        "sync cycles that failed (the last good route set stayed in force)",
        MetricType::Counter,
        c.failed_cycles as f64,
    )?;
    single(
        encoder,
        "task_router_sync_last_duration_seconds",
        "how long the last sync cycle took",
        MetricType::Gauge,
        c.last_sync_duration_ms as f64 / 1000.0,
    )?;
    single(
        encoder,
        "task_router_clearml_api_calls",
        "ClearML API calls made",
        MetricType::Counter,
        c.api_calls as f64,
    )?;
    single(
        encoder,
        "task_router_clearml_api_failures",
        "ClearML API calls that failed",
        MetricType::Counter,
        c.api_failures as f64,
    )?;
    encode_api_latency(encoder, &c.api_latency)?;
    family(
        encoder,
        "task_router_clearml_state",
        "the ClearML connection state (disabled, connecting, ok or error)",
        MetricType::Gauge,
        [([("state", c.state.clone())], 1.0)],
    )?;
    single(
        encoder,
        "task_router_clearml_tasks",
        "tasks asking for routes in the last listing",
        MetricType::Gauge,
        c.tasks as f64,
    )?;
    single(
        encoder,
        "task_router_clearml_removals_held",
        "routed tasks the last ClearML answer dropped at once, kept until the next answer agrees",
        MetricType::Gauge,
        c.held_removals as f64,
    )?;
    single(
        encoder,
        "task_router_clearml_held_cycles",
        "sync cycles whose answer the mass-removal guard held",
        MetricType::Counter,
        c.held_cycles as f64,
    )?;
    single(
        encoder,
        "task_router_clearml_concurrent_writes",
        "task writes seen between the router's read and its write-back (merged, never dropped)",
        MetricType::Counter,
        c.concurrent_writes as f64,
    )?;
    Ok(())
}

/// `task_router_clearml_api_request_duration_seconds{endpoint, status}`: one histogram per
/// API endpoint and outcome (its `_count` is the calls by endpoint and status).
fn encode_api_latency(
    encoder: &mut DescriptorEncoder,
    calls: &[crate::clearml::client::ApiCallStats],
) -> Result<(), std::fmt::Error> {
    use crate::clearml::client::LATENCY_BUCKETS;
    let mut metric = encoder.encode_descriptor(
        "task_router_clearml_api_request_duration_seconds",
        "ClearML API call latency by endpoint and status (HTTP code, or timeout/unreachable/malformed)",
        None,
        MetricType::Histogram,
    )?;
    for call in calls {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(call.buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        let labels = [
            ("endpoint", call.endpoint.clone()),
            ("status", call.status.clone()),
        ];
        metric
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                call.sum_seconds,
                call.count,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// Route counts by (kind, state), with states reduced to their first word so a failure's
/// message does not become a label value.
fn route_states(s: &Status) -> Vec<([(&'static str, String); 2], f64)> {
    let mut counts = std::collections::BTreeMap::<(String, String), f64>::new();
    for r in &s.routes {
        let state = r
            .state
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        *counts.entry((r.kind.clone(), state)).or_default() += 1.0;
    }
    counts
        .into_iter()
        .map(|((kind, state), n)| ([("kind", kind), ("state", state)], n))
        .collect()
}

fn encode_datapath(encoder: &mut DescriptorEncoder, dp: &Datapath) -> Result<(), std::fmt::Error> {
    encode_route_counters(encoder, dp)?;
    encode_verdicts(encoder, dp)?;
    encode_conntrack(encoder, dp)
}

/// Per-route connections, bytes and packets, as of the last sweep.
fn encode_route_counters(
    encoder: &mut DescriptorEncoder,
    dp: &Datapath,
) -> Result<(), std::fmt::Error> {
    let routes = dp.route_counters();
    let label = |port: &u16, upstream: &std::net::SocketAddrV4| {
        [
            ("port", port.to_string()),
            ("upstream", upstream.to_string()),
        ]
    };
    family(
        encoder,
        "task_router_route_active_connections",
        "connections of a route that are not closing, as of the last sweep",
        MetricType::Gauge,
        routes
            .iter()
            .map(|(port, (p, c))| (label(port, &p.upstream), c.active as f64)),
    )?;
    family(
        encoder,
        "task_router_route_client_ip_info",
        "1 per TCP route: whether new connections keep the client's address (mode preserved) \
         or come from the router (translated), and the setting that chose it",
        MetricType::Gauge,
        routes.iter().map(|(port, (p, _))| {
            let [port, upstream] = label(port, &p.upstream);
            let mode = ("mode", p.client_ip.mode().to_string());
            let setting = ("setting", p.client_ip.setting.as_str().to_string());
            ([port, upstream, mode, setting], 1.0)
        }),
    )?;
    for (direction, help) in [
        ("to_backend", "toward the backend"),
        ("to_client", "toward the client"),
    ] {
        let pick = |c: &crate::datapath::RouteCounters| match direction {
            "to_backend" => c.to_backend,
            _ => c.to_client,
        };
        family(
            encoder,
            &format!("task_router_route_{direction}_bytes"),
            &format!("bytes forwarded {help} on a route, as of the last sweep"),
            MetricType::Counter,
            routes
                .iter()
                .map(|(port, (p, c))| (label(port, &p.upstream), pick(c).bytes as f64)),
        )?;
        family(
            encoder,
            &format!("task_router_route_{direction}_packets"),
            &format!("packets forwarded {help} on a route, as of the last sweep"),
            MetricType::Counter,
            routes
                .iter()
                .map(|(port, (p, c))| (label(port, &p.upstream), pick(c).packets as f64)),
        )?;
    }
    Ok(())
}

/// The kernel's verdict counters by hook and reason (logged, not encoded, when unreadable).
fn encode_verdicts(encoder: &mut DescriptorEncoder, dp: &Datapath) -> Result<(), std::fmt::Error> {
    match dp.stats() {
        Ok(stats) => {
            let samples = |bytes: bool| {
                stats
                    .iter()
                    .map(move |(hook, reason, v)| {
                        (
                            [
                                ("hook", hook.name().to_string()),
                                ("reason", reason.name().to_string()),
                            ],
                            if bytes { v.bytes } else { v.packets } as f64,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            family(
                encoder,
                "task_router_verdict_packets",
                "packets by hook and verdict reason (forwarded, pass_*, drop_*)",
                MetricType::Counter,
                samples(false),
            )?;
            family(
                encoder,
                "task_router_verdict_bytes",
                "bytes by hook and verdict reason (forwarded, pass_*, drop_*)",
                MetricType::Counter,
                samples(true),
            )?;
        }
        Err(e) => {
            tracing::warn!(error = %crate::error::error_chain(&e), "reading the verdict counters for /metrics")
        }
    }
    Ok(())
}

/// The connection table: fill, evictions, the last sweep.
fn encode_conntrack(encoder: &mut DescriptorEncoder, dp: &Datapath) -> Result<(), std::fmt::Error> {
    match dp.fill() {
        Ok((live, capacity)) => {
            single(
                encoder,
                "task_router_conntrack_entries",
                "connections in the kernel's table",
                MetricType::Gauge,
                live as f64,
            )?;
            single(
                encoder,
                "task_router_conntrack_capacity",
                "connections the kernel's table is sized for",
                MetricType::Gauge,
                capacity as f64,
            )?;
        }
        Err(e) => {
            tracing::warn!(error = %crate::error::error_chain(&e), "reading the conntrack fill for /metrics")
        }
    }
    single(
        encoder,
        "task_router_conntrack_evicted",
        "idle connections evicted before their timeout because the table was nearly full",
        MetricType::Counter,
        dp.evicted_total() as f64,
    )?;
    single(
        encoder,
        "task_router_host_ephemeral_range_changes",
        "changes of the host's net.ipv4.ip_local_port_range the datapath followed (client ports \
         and NAT source ports inside it are not used toward tasks)",
        MetricType::Counter,
        dp.host_ephemeral_changes() as f64,
    )?;
    single(
        encoder,
        "task_router_nat_source_ports",
        "NAT source ports toward tasks outside the host's ephemeral range (tuples per task port \
         for clients whose own port is inside it or taken)",
        MetricType::Gauge,
        crate::datapath::nat_ports::count(&dp.settings().nat_ports) as f64,
    )?;
    if let Some(sweep) = dp.last_sweep() {
        single(
            encoder,
            "task_router_conntrack_last_sweep_expired",
            "idle connections the last sweep removed",
            MetricType::Gauge,
            sweep.expired as f64,
        )?;
        single(
            encoder,
            "task_router_conntrack_last_sweep_evicted",
            "idle connections the last sweep evicted before their timeout (table nearly full)",
            MetricType::Gauge,
            sweep.evicted as f64,
        )?;
        single(
            encoder,
            "task_router_half_open_connections",
            "connections whose handshake is under way (the half-open table), as of the last sweep",
            MetricType::Gauge,
            sweep.half_open as f64,
        )?;
        single(
            encoder,
            "task_router_half_open_capacity",
            "half-open connections admitted before a SYN evicts the oldest \
             (verdict reason new_connection_evicting)",
            MetricType::Gauge,
            sweep.half_open_capacity as f64,
        )?;
        single(
            encoder,
            "task_router_half_open_last_sweep_expired",
            "abandoned or refused handshakes the last sweep removed from the half-open table",
            MetricType::Gauge,
            sweep.half_open_expired as f64,
        )?;
        single(
            encoder,
            "task_router_conntrack_last_sweep_seconds",
            "how long the last conntrack sweep took",
            MetricType::Gauge,
            sweep.took.as_secs_f64(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{DatapathStatus, RouteStatus};
    use std::sync::RwLock;

    fn scrape_text(sources: Sources) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        out
    }

    #[test]
    fn status_facts_become_metrics() {
        let mut status = Status {
            ready: true,
            datapath: DatapathStatus {
                kind: "auto".into(),
                interfaces: vec!["veth-a tc".into(), "eth0 xdp".into()],
                degraded: vec![crate::datapath::capability::Degradation {
                    interface: "veth-a".into(),
                    reason: "xdp_generic".into(),
                    detail: "slow".into(),
                }],
            },
            ..Status::default()
        };
        status.clearml.cycles = 7;
        status.clearml.failed_cycles = 2;
        status.clearml.state = "ok".into();
        status.clearml.last_sync_duration_ms = 1500;
        status.clearml.held_removals = 3;
        status.clearml.held_cycles = 2;
        status.clearml.concurrent_writes = 5;
        status.state_error = Some("No space left on device".into());
        status.degraded = vec!["state not saved: ...".into(), "held".into()];
        let mut buckets = vec![0; crate::clearml::client::LATENCY_BUCKETS.len() + 1];
        buckets[1] = 2; // <= 10 ms
        buckets[12] = 1; // > 30 s
        status.clearml.api_latency = vec![crate::clearml::client::ApiCallStats {
            endpoint: "tasks.get_all_ex".into(),
            status: "200".into(),
            count: 3,
            sum_seconds: 31.5,
            buckets,
        }];
        status.routes = vec![
            RouteStatus {
                kind: "tcp".into(),
                state: "failed: no port".into(),
                ..RouteStatus::default()
            },
            RouteStatus {
                kind: "tcp".into(),
                state: "active".into(),
                ..RouteStatus::default()
            },
        ];
        let refusals = Arc::new(crate::auth::Refusals::default());
        refusals.count(crate::auth::RefusalReason::WrongCompany);
        let text = scrape_text(Sources {
            status: Arc::new(RwLock::new(status)),
            auth: Some(refusals),
            ..Sources::default()
        });
        for (series, value) in [
            ("task_router_ready", 1.0),
            (
                "task_router_datapath_mode_info{interface=\"veth-a\",mode=\"tc\"}",
                1.0,
            ),
            (
                "task_router_datapath_mode_info{interface=\"eth0\",mode=\"xdp\"}",
                1.0,
            ),
            (
                "task_router_datapath_degraded{interface=\"veth-a\",reason=\"xdp_generic\"}",
                1.0,
            ),
            ("task_router_sync_cycles_total", 7.0),
            ("task_router_sync_failed_cycles_total", 2.0),
            ("task_router_sync_last_duration_seconds", 1.5),
            ("task_router_clearml_state{state=\"ok\"}", 1.0),
            ("task_router_routes{kind=\"tcp\",state=\"failed\"}", 1.0),
            ("task_router_routes{kind=\"tcp\",state=\"active\"}", 1.0),
            ("task_router_clearml_removals_held", 3.0),
            ("task_router_clearml_held_cycles_total", 2.0),
            ("task_router_clearml_concurrent_writes_total", 5.0),
            (
                "task_router_auth_refusals_total{reason=\"wrong_company\"}",
                1.0,
            ),
            ("task_router_auth_refusals_total{reason=\"missing\"}", 0.0),
            ("task_router_state_save_failing", 1.0),
            ("task_router_degraded", 2.0),
            (
                "task_router_clearml_api_request_duration_seconds_count{endpoint=\"tasks.get_all_ex\",status=\"200\"}",
                3.0,
            ),
            (
                "task_router_clearml_api_request_duration_seconds_bucket{le=\"0.005\",endpoint=\"tasks.get_all_ex\",status=\"200\"}",
                0.0,
            ),
            (
                "task_router_clearml_api_request_duration_seconds_bucket{le=\"0.01\",endpoint=\"tasks.get_all_ex\",status=\"200\"}",
                2.0,
            ),
            (
                "task_router_clearml_api_request_duration_seconds_bucket{le=\"30.0\",endpoint=\"tasks.get_all_ex\",status=\"200\"}",
                2.0,
            ),
            (
                "task_router_clearml_api_request_duration_seconds_bucket{le=\"+Inf\",endpoint=\"tasks.get_all_ex\",status=\"200\"}",
                3.0,
            ),
        ] {
            let found = text.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            });
            assert_eq!(found, Some(value), "{series} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let build = format!(
            "task_router_build_info{{version=\"{}\",revision=\"{}\"}} 1.0",
            crate::build_info::VERSION,
            crate::build_info::REVISION
        );
        assert!(text.lines().any(|l| l == build), "{build} in:\n{text}");
    }
}
