//! `task-router run`: the wiring of sources, reconciler, owners, write-back and admin.
//!
//! Every cycle (`ROUTER_POLL_INTERVAL`): reload the routes file if it changed; list the ClearML
//! tasks that asked for endpoints; plan the wanted routes; apply the merged set through the
//! [`TcpForwarder`] and [`HttpRouter`] (only when it changed, after a failure, or once a minute
//! to heal drift); publish the status (so it lists every route before its task can read the
//! endpoint); write endpoints back for routes that were programmed; persist; publish the
//! status again. A failed listing changes no route (the last good set stays in force) and the loop
//! backs off.
//!
//! Start-up order (`main.rs`): config → the instance locks (`crate::instance_lock`) →
//! `EXTRA_BASH_COMMAND` ([`run_extra_command`]) → [`new_status`] → [`bind_admin`] →
//! [`open_parts`] → [`start`] (state, routes file, first ClearML connection, admin server, loop)
//! → [`Running::run_until`] a signal.
//!
//! The rooms: `parts` (the owners the daemon drives, and the nginx fallback), `engine` (the loop
//! and its cycle), `sync` (the ClearML source), `apply` (the owners and what they took),
//! `serving` (whether what they took can be served now), `write_back` (endpoints, or why not,
//! written to the tasks), `guard` (the mass-removal guard), `state` (`ROUTER_STATE_DIR`),
//! `report` (sync health, readiness and the published status).
//!
//! [`TcpForwarder`]: crate::routes::TcpForwarder
//! [`HttpRouter`]: crate::routes::HttpRouter

mod apply;
mod engine;
mod extra_command;
mod guard;
mod parts;
mod report;
mod serving;
mod state;
mod sync;
mod write_back;

pub use engine::{CycleOutcome, Engine};
pub use extra_command::run_extra_command;
pub use parts::{
    Parts, TcpParts, admin_extensions, open_http_router, open_parts, open_tcp_forwarder,
};
pub use report::new_status;

use crate::admin::{self, SharedStatus};
use crate::config::Config;
use anyhow::{Context, Result, anyhow};
use std::net::SocketAddr;

/// The exit code for an error that stopped the start: 2 when the configured datapath cannot
/// run on this host (as `check-config` answers a bad value), else 1.
pub fn exit_code(e: &anyhow::Error) -> std::process::ExitCode {
    if e.chain()
        .any(|c| c.is::<crate::datapath::capability::ModeRefused>())
    {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The daemon, started.
pub struct Running {
    /// Where the admin endpoint listens (the port is known even for `:0`).
    pub admin_addr: SocketAddr,
    pub status: SharedStatus,
    stop: tokio::sync::watch::Sender<bool>,
    sync: tokio::task::JoinHandle<Result<()>>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `ROUTER_ADMIN_ADDR` (before the owners open, so they know the real address even for
/// port 0).
pub async fn bind_admin(cfg: &Config) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(cfg.admin.addr)
        .await
        .with_context(|| format!("cannot listen on ROUTER_ADMIN_ADDR={}", cfg.admin.addr))?;
    let addr = listener.local_addr().context("admin listener address")?;
    Ok((listener, addr))
}

/// Starts the daemon: state, routes file, ClearML client and first connection, admin endpoint
/// on `listener`, sync loop. Any problem found here fails the start (nothing keeps running).
pub async fn start(
    cfg: Config,
    parts: Parts,
    status: SharedStatus,
    listener: tokio::net::TcpListener,
) -> Result<Running> {
    let Parts {
        tcp,
        http,
        datapath,
        admin_routes,
    } = parts;
    if let Ok(mut s) = status.write() {
        s.datapath = datapath;
    }
    let mut engine = Engine::new(cfg.clone(), tcp, http, status.clone())?;
    engine.connect_at_start().await?;

    let admin_addr = listener.local_addr().context("admin listener address")?;
    tracing::info!(addr = %admin_addr, "admin endpoint listening");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_stop = stop_rx.clone();
    let app = admin::router(status.clone(), admin_routes);
    let admin = tokio::spawn(admin::serve(
        listener,
        app,
        cfg.admin.allow.clone(),
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    let sync = tokio::spawn(engine.run(stop_rx));
    Ok(Running {
        admin_addr,
        status,
        stop,
        sync,
        admin,
    })
}

impl Running {
    /// Stops the loop (routes stay as programmed; the owners are dropped) and the admin endpoint.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let sync = self.sync.await.context("the sync loop panicked")?;
        let _ = self.admin.await;
        sync
    }

    /// Runs until `shutdown` completes (then stops cleanly) or the loop ends on its own (an
    /// error).
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::select! {
            () = shutdown => self.stop().await,
            ended = &mut self.sync => {
                let _ = self.stop.send(true);
                let _ = self.admin.await;
                match ended {
                    Ok(Ok(())) => Err(anyhow!("the sync loop ended unexpectedly")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow!("the sync loop panicked: {e}")),
                }
            }
        }
    }
}
