//! The admin endpoint's caller guard over a real network path: the endpoint listens on every
//! address of a router namespace, a client namespace calls it over a veth.
//!
//! Expected: by default (`ROUTER_ADMIN_ADDR` loopback) nobody else can even connect; when an
//! operator binds it wider, only loopback callers and `ROUTER_ADMIN_ALLOW` CIDRs are served —
//! every path, also routers merged in by other owners (`/auth`, `/metrics`) — and a forged
//! `X-Forwarded-For: 127.0.0.1` changes nothing (the guard looks at the TCP peer only).

use axum::routing::get;
use ipnet::Ipv4Net;
use router_tests::http_client;
use router_tests::netns::Netns;
use router_tests::require_root;
use router_tests::topology::ClientRouter;
use router_userspace::admin;
use router_userspace::config::{Config, Sources};
use std::net::SocketAddr;

const PATHS: [&str; 4] = ["/status", "/readyz", "/healthz", "/merged"];

/// Serves the admin endpoint (plus a merged router at `/merged`) on 0.0.0.0 inside `ns`.
async fn serve_in(
    ns: &Netns,
    allow: Vec<Ipv4Net>,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = ns
        .enter(|| std::net::TcpListener::bind("0.0.0.0:0"))
        .expect("enter")
        .expect("bind in the router namespace");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("addr").port();
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let status = admin::SharedStatus::default();
    let merged = axum::Router::new().route("/merged", get(|| async { "merged\n" }));
    let app = admin::router(status, vec![merged]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = admin::serve(listener, app, allow, async {
            let _ = stopped.await;
        })
        .await;
    });
    (port, stop, task)
}

/// `GET path` from inside `ns` to `addr`, with a forged `X-Forwarded-For`.
async fn status_code(ns: &Netns, addr: SocketAddr, path: &'static str) -> u16 {
    let response = http_client::get_in(ns, addr, path, &[("X-Forwarded-For", "127.0.0.1")])
        .unwrap_or_else(|e| panic!("GET {path} from the namespace: {e:#}"));
    response.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_serves_loopback_and_allowed_callers_only() {
    require_root();
    let net = ClientRouter::new(&[208]).expect("client and router namespaces");
    let (client, router) = (&net.client, &net.router);
    let (c, r) = &net.links[0];

    // Bound wide, no allow-list: the client is refused on every path, loopback is served.
    let (port, stop, task) = serve_in(router, Vec::new()).await;
    let from_client = SocketAddr::from((r.addr, port));
    for path in PATHS {
        assert_eq!(status_code(client, from_client, path).await, 403, "{path}");
        // Past the guard (`/readyz` says 503 "not ready" on this empty status: served).
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        assert_ne!(status_code(router, local, path).await, 403, "{path}");
    }
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(status_code(router, local, "/status").await, 200);
    // The router's own non-loopback address from inside the router is not loopback either.
    assert_eq!(
        status_code(router, SocketAddr::from((r.addr, port)), "/status").await,
        403
    );
    let _ = stop.send(());
    let _ = task.await;

    // An allow-list with the client's address: served; one without: refused.
    let allow: Ipv4Net = format!("{}/32", c.addr).parse().expect("cidr");
    let (port, stop, task) = serve_in(router, vec![allow]).await;
    for path in PATHS {
        assert_ne!(
            status_code(client, SocketAddr::from((r.addr, port)), path).await,
            403,
            "{path}"
        );
    }
    assert_eq!(
        status_code(client, SocketAddr::from((r.addr, port)), "/merged").await,
        200
    );
    let _ = stop.send(());
    let _ = task.await;
    let other: Ipv4Net = "10.209.0.0/16".parse().expect("cidr");
    let (port, stop, task) = serve_in(router, vec![other]).await;
    assert_eq!(
        status_code(client, SocketAddr::from((r.addr, port)), "/status").await,
        403
    );
    let _ = stop.send(());
    let _ = task.await;
}

/// The default address is loopback, so by default the endpoint is not reachable from outside
/// at all (the guard is the second line).
#[test]
fn the_admin_endpoint_listens_on_loopback_by_default() {
    let env = [
        ("TCP_ROUTER_ADDRESS", "203.0.113.7"),
        ("AUTH_ENABLED", "false"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let sources = Sources::new(Vec::new(), env, None).expect("sources");
    let cfg = Config::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.admin.addr.ip().is_loopback(), "{}", cfg.admin.addr);
    assert!(cfg.admin.allow.is_empty());
}
