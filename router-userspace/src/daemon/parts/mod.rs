//! The owners the daemon drives, opened from the configuration (or handed in by a test), and
//! the nginx-fallback policy.
//!
//! Merge points for other owners:
//! - [`open_tcp_forwarder`]: returns the TCP datapath for `cfg.datapath` (eBPF `Datapath`, or the
//!   nginx stream fallback when `ROUTER_DATAPATH=nginx` / `auto` cannot load the programs).
//! - [`open_http_router`]: returns the nginx HTTP router; gets the bound admin address.
//! - [`admin_extensions`]: axum routers merged into the admin endpoint (`auth::router(...)` at
//!   `/auth`); the loopback guard covers them. [`open_parts`] adds `metrics::router` at
//!   `/metrics`, reading the kernel datapath, nginx and the status when scraped.
//! - `TcpForwarder::counters` (default: none) fills CONNS/BYTES in `status`.

mod http;
mod kernel;

pub use http::open_http_router;

use crate::admin::{DatapathStatus, SharedStatus};
use crate::config::{Config, DatapathKind};
use crate::nginx::Nginx;
use crate::routes::{HttpRouter, TcpForwarder};
use anyhow::{Context, Result, anyhow};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the daemon drives, built by the factories below (or by a test).
pub struct Parts {
    pub tcp: Box<dyn TcpForwarder>,
    pub http: Box<dyn HttpRouter>,
    pub datapath: DatapathStatus,
    /// Routers merged into the admin endpoint.
    pub admin_routes: Vec<axum::Router>,
}

/// What [`open_tcp_forwarder`] opened.
pub struct TcpParts {
    pub tcp: Box<dyn TcpForwarder>,
    pub status: DatapathStatus,
    /// The nginx it opened (the stream datapath), for the HTTP router to share.
    pub nginx: Option<Nginx>,
    /// The kernel datapath, for `/metrics` and `uninstall`.
    pub kernel: Option<Arc<Mutex<crate::datapath::Datapath>>>,
}

/// nginx `stream` servers: the fallback [`TcpForwarder`].
fn open_stream_forwarder(nginx: &Nginx) -> Result<Box<dyn TcpForwarder>> {
    Ok(Box::new(
        crate::nginx::NginxStreamForwarder::new(nginx.clone())
            .context("starting the nginx stream datapath")?,
    ))
}

/// The eBPF datapath as [`TcpParts`].
fn open_kernel_forwarder(cfg: &Config) -> Result<TcpParts> {
    let kernel = kernel::open(cfg)?;
    Ok(TcpParts {
        tcp: kernel.tcp,
        status: kernel.status,
        nginx: None,
        kernel: Some(kernel.datapath),
    })
}

/// The TCP datapath for `cfg.datapath`: the kernel programs, or nginx `stream` servers when
/// asked (`ROUTER_DATAPATH=nginx`) or when `auto` cannot load the programs (loudly: a warning
/// and `datapath.kind = "nginx (fallback)"` in status). Returns the nginx handle it opened, so
/// the HTTP router shares it.
pub fn open_tcp_forwarder(cfg: &Config) -> Result<TcpParts> {
    let nginx_parts = |tcp, kind: &str, nginx| TcpParts {
        tcp,
        status: DatapathStatus {
            kind: kind.to_string(),
            ..DatapathStatus::default()
        },
        nginx: Some(nginx),
        kernel: None,
    };
    match cfg.datapath.kind {
        DatapathKind::Nginx => {
            let nginx = Nginx::from_config(&cfg.nginx).context("starting nginx")?;
            let tcp = open_stream_forwarder(&nginx)?;
            Ok(nginx_parts(tcp, "nginx", nginx))
        }
        DatapathKind::Ebpf(crate::datapath::AttachMode::Auto) => match open_kernel_forwarder(cfg) {
            Ok(parts) => Ok(parts),
            // A pinned datapath is forwarding: the kernel did take programs, so a build whose
            // programs it refuses must not replace it with nginx (nor be half-applied).
            Err(e) if kernel::cannot_load(&e) && !kernel::pinned_datapath_exists(cfg) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "the eBPF datapath cannot load: FALLING BACK to nginx stream servers \
                     for TCP routes (slower; fix the cause to get line-rate forwarding)"
                );
                let nginx = Nginx::from_config(&cfg.nginx).context("starting nginx")?;
                let tcp = open_stream_forwarder(&nginx)
                    .with_context(|| format!("and the eBPF datapath failed: {e:#}"))?;
                Ok(nginx_parts(tcp, "nginx (fallback)", nginx))
            }
            Err(e) => Err(e),
        },
        DatapathKind::Ebpf(_) => open_kernel_forwarder(cfg),
    }
}

/// Routers merged into the admin endpoint: the auth check nginx's `auth_request` calls.
pub fn admin_extensions(cfg: &Config, _status: &SharedStatus) -> Result<Vec<axum::Router>> {
    if cfg.auth.enabled && cfg.auth.hmac_key.is_empty() {
        // No key means no HTTP route can be served (config refuses HTTP sources without it).
        return Ok(Vec::new());
    }
    let auth = crate::auth::Authenticator::shared(&cfg.auth)
        .map_err(|e| anyhow!("AUTH_* settings: {e}"))?;
    Ok(vec![crate::auth::router(auth)])
}

/// Everything the real daemon drives, from `cfg`; `admin_addr` from [`super::bind_admin`].
pub fn open_parts(cfg: &Config, status: &SharedStatus, admin_addr: SocketAddr) -> Result<Parts> {
    let TcpParts {
        tcp,
        status: datapath,
        nginx,
        kernel,
    } = open_tcp_forwarder(cfg)?;
    let metrics = crate::metrics::Sources {
        status: status.clone(),
        datapath: kernel,
        nginx: Arc::default(),
    };
    let http = open_http_router(cfg, nginx, admin_addr, Arc::clone(&metrics.nginx))
        .context("starting the HTTP router")?;
    let mut admin_routes = admin_extensions(cfg, status)?;
    admin_routes.push(crate::metrics::router(metrics));
    Ok(Parts {
        tcp,
        http,
        datapath,
        admin_routes,
    })
}
