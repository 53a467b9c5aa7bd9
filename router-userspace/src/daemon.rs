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
//! Start-up order (`main.rs`): config → `EXTRA_BASH_COMMAND` ([`run_extra_command`]) →
//! [`new_status`] → [`bind_admin`] → [`open_parts`] (the factories below) → [`start`] (state,
//! routes file, first ClearML connection, admin server, loop) → [`Running::run_until`] a signal.
//!
//! ## Merge points for other owners
//! - [`open_tcp_forwarder`]: returns the TCP datapath for `cfg.datapath` (eBPF `Datapath`, or the
//!   nginx stream fallback when `ROUTER_DATAPATH=nginx` / `auto` cannot load the programs).
//! - [`open_http_router`]: returns the nginx HTTP router; gets the bound admin address.
//! - [`admin_extensions`]: axum routers merged into the admin endpoint (`auth::router(...)` at
//!   `/auth`); the loopback guard covers them. [`open_parts`] adds `metrics::router` at
//!   `/metrics`, reading the kernel datapath, nginx and the status when scraped.
//! - [`TcpForwarder::counters`] (default: none) fills CONNS/BYTES in `status`.

use crate::admin::{self, ClearmlStatus, DatapathStatus, RouteStatus, SharedStatus, Status};
use crate::backoff::{MAX_BACKOFF, backoff};
use crate::clearml::{ApiError, Client, WriteOutcome};
use crate::config::{Config, DatapathKind};
use crate::ports::{EndpointKey, PortAllocator};
use crate::reconcile::{self, Kind, Plan, Reconciler, Refusal, RouteRef, Settings, WriteBack};
use crate::routes::{
    ApplyReport, HttpRoute, HttpRouter, RouteCounters, RouteSet, TcpForwarder, TcpRoute,
};
use crate::routes_file::RoutesFile;
use crate::time::now_millis;
use crate::validate::{self, UpstreamPolicy};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Write-backs in flight at once.
const WRITE_CONCURRENCY: usize = 16;
/// Apply the whole set at least this often, even unchanged, so drift heals.
const REAPPLY_EVERY: Duration = Duration::from_secs(60);
/// The longest back-off between failed syncs.
/// Log routes one by one up to this many changes per cycle; a summary above.
const LOG_EACH_UP_TO: usize = 50;
/// The mass-removal guard: one ClearML answer that would remove the routes of at least this
/// share (numerator, denominator) of the routed tasks is not believed until the next answer
/// agrees (see [`MassRemovalGuard`]).
const MASS_REMOVAL_SHARE: (usize, usize) = (1, 2);

/// What the daemon drives, built by the factories below (or by a test).
pub struct Parts {
    pub tcp: Box<dyn TcpForwarder>,
    pub http: Box<dyn HttpRouter>,
    pub datapath: DatapathStatus,
    /// Routers merged into the admin endpoint.
    pub admin_routes: Vec<axum::Router>,
}

// ------------------------------------------------------------------------------------------
// Factories: the owners the daemon drives.

/// The eBPF datapath with its conntrack sweeper: the [`TcpForwarder`] of `auto|xdp|tc`.
/// Its maps and links are pinned: dropping it leaves forwarding in place (hitless restart)
/// unless `detach_on_exit`.
struct KernelForwarder {
    datapath: crate::datapath::SharedDatapath,
    _sweeper: crate::datapath::sweeper::Sweeper,
    _kernel_log: Option<tokio::task::JoinHandle<()>>,
    detach_on_exit: bool,
}

impl Drop for KernelForwarder {
    fn drop(&mut self) {
        if !self.detach_on_exit {
            tracing::info!(
                "leaving the datapath attached and pinned: forwarding goes on until the next daemon adopts it"
            );
            return;
        }
        match self.datapath.lock().map(|mut dp| dp.unpin_all()) {
            Ok(Ok(removed)) => {
                for what in removed {
                    tracing::info!(removed = %what, "detach on exit");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error::error_chain(&e), "detaching on exit failed")
            }
            Err(e) => tracing::error!(error = %e, "detaching on exit failed"),
        }
    }
}

/// Logs what the datapath took over from an earlier daemon's pins.
fn log_adoption(dp: &crate::datapath::Datapath) {
    use crate::datapath::LinkChange;
    let adoption = dp.adoption();
    let dir = dp
        .pin_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    if adoption.adopted() {
        tracing::info!(
            pins = %dir,
            maps = %adoption.maps.join(","),
            routes = adoption.routes,
            connections = adoption.connections,
            "adopted the pinned datapath"
        );
    } else {
        tracing::info!(pins = %dir, "pinned a new datapath");
    }
    for (interface, change) in &adoption.links {
        match change {
            LinkChange::Attached { kind, program_id } => tracing::info!(
                %interface, hook = kind.as_str(), program_id, "attached and pinned"
            ),
            LinkChange::Replaced {
                kind,
                link_id,
                old_program_id,
                new_program_id,
            } => tracing::info!(
                %interface, hook = kind.as_str(), link_id, old_program_id, new_program_id,
                "replaced the program in the pinned link"
            ),
            LinkChange::Removed { kind } => tracing::info!(
                %interface, hook = kind.as_str(), "detached the pinned link of another mode"
            ),
        }
    }
    for (interface, kind) in &adoption.removed_links {
        tracing::info!(%interface, hook = kind.as_str(), "detached the pinned link of an interface no longer configured");
    }
}

impl TcpForwarder for KernelForwarder {
    fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> Result<ApplyReport> {
        self.datapath.apply(wanted)
    }

    fn counters(&self) -> BTreeMap<u16, RouteCounters> {
        match self.datapath.lock() {
            Ok(dp) => dp
                .route_counters()
                .into_iter()
                .map(|(port, (_, c))| {
                    let counters = RouteCounters {
                        connections: c.active,
                        bytes: c.to_backend.bytes + c.to_client.bytes,
                    };
                    (port, counters)
                })
                .collect(),
            Err(_) => BTreeMap::new(),
        }
    }
}

/// Context marking an error as "the kernel cannot take the programs" (fallback allowed).
const CANNOT_LOAD: &str = "the kernel cannot load the task-router programs";

/// Loads and attaches the kernel programs for `cfg.datapath`.
fn open_kernel_forwarder(cfg: &Config) -> Result<TcpParts> {
    if cfg.datapath.interfaces.is_empty() {
        bail!(
            "ROUTER_INTERFACES (or --interface) is empty: the eBPF datapath needs at least one \
             interface to attach to"
        );
    }
    let mut dp = crate::datapath::Datapath::open_pinned(&cfg.datapath).map_err(|e| {
        use crate::datapath::DatapathError as E;
        // Only a kernel that cannot take the programs justifies the nginx fallback; a wrong
        // interface name or an attach refusal is the operator's to fix.
        let cannot_load = matches!(
            e,
            E::Load(_) | E::Verify { .. } | E::MissingProgram(_) | E::MissingMap(_)
        );
        let err = anyhow!(crate::error::error_chain(&e)).context("starting the eBPF datapath");
        if cannot_load {
            err.context(CANNOT_LOAD)
        } else {
            err
        }
    })?;
    log_adoption(&dp);
    let kernel_log = dp.spawn_kernel_log();
    let mut status = DatapathStatus {
        kind: cfg.datapath.kind.to_string(),
        interfaces: Vec::new(),
    };
    for attached in dp.attached() {
        tracing::info!(interface = %attached.interface, mode = %attached.mode, "attached");
        status
            .interfaces
            .push(format!("{} {}", attached.interface, attached.mode));
    }
    tracing::info!(
        interfaces = dp.peer_devs().len(),
        "TC hands packets straight to the peer of interfaces whose peer is in another namespace \
         (container links; refreshed every sweep)"
    );
    let datapath = crate::datapath::SharedDatapath::new(dp);
    let sweeper = crate::datapath::sweeper::Sweeper::spawn(
        datapath.clone(),
        crate::datapath::sweeper::DEFAULT_INTERVAL,
        |_| {},
    )
    .context("starting the conntrack sweeper")?;
    Ok(TcpParts {
        tcp: Box::new(KernelForwarder {
            datapath: datapath.clone(),
            _sweeper: sweeper,
            _kernel_log: kernel_log,
            detach_on_exit: cfg.detach_on_exit,
        }),
        status,
        nginx: None,
        kernel: Some(datapath.0),
    })
}

/// Whether an earlier daemon's datapath is pinned (and so forwarding) under `ROUTER_BPFFS`.
fn pinned_datapath_exists(cfg: &Config) -> bool {
    cfg.datapath
        .bpffs
        .join(crate::datapath::pins::layout_dir_name(
            router_common::LAYOUT_VERSION,
        ))
        .exists()
}

/// nginx `stream` servers: the fallback [`TcpForwarder`].
fn open_stream_forwarder(nginx: &crate::nginx::Nginx) -> Result<Box<dyn TcpForwarder>> {
    Ok(Box::new(
        crate::nginx::NginxStreamForwarder::new(nginx.clone())
            .context("starting the nginx stream datapath")?,
    ))
}

/// What [`open_tcp_forwarder`] opened.
pub struct TcpParts {
    pub tcp: Box<dyn TcpForwarder>,
    pub status: DatapathStatus,
    /// The nginx it opened (the stream datapath), for the HTTP router to share.
    pub nginx: Option<crate::nginx::Nginx>,
    /// The kernel datapath, for `/metrics` and `uninstall`.
    pub kernel: Option<Arc<Mutex<crate::datapath::Datapath>>>,
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
            interfaces: Vec::new(),
        },
        nginx: Some(nginx),
        kernel: None,
    };
    match cfg.datapath.kind {
        DatapathKind::Nginx => {
            let nginx = crate::nginx::Nginx::from_config(&cfg.nginx).context("starting nginx")?;
            let tcp = open_stream_forwarder(&nginx)?;
            Ok(nginx_parts(tcp, "nginx", nginx))
        }
        DatapathKind::Ebpf(crate::datapath::AttachMode::Auto) => match open_kernel_forwarder(cfg) {
            Ok(parts) => Ok(parts),
            // A pinned datapath is forwarding: the kernel did take programs, so a build whose
            // programs it refuses must not replace it with nginx (nor be half-applied).
            Err(e)
                if e.chain().any(|c| c.to_string() == CANNOT_LOAD)
                    && !pinned_datapath_exists(cfg) =>
            {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "the eBPF datapath cannot load: FALLING BACK to nginx stream servers \
                     for TCP routes (slower; fix the cause to get line-rate forwarding)"
                );
                let nginx =
                    crate::nginx::Nginx::from_config(&cfg.nginx).context("starting nginx")?;
                let tcp = open_stream_forwarder(&nginx)
                    .with_context(|| format!("and the eBPF datapath failed: {e:#}"))?;
                Ok(nginx_parts(tcp, "nginx (fallback)", nginx))
            }
            Err(e) => Err(e),
        },
        DatapathKind::Ebpf(_) => open_kernel_forwarder(cfg),
    }
}

/// The nginx HTTP router, opened on the first non-empty route set so a TCP-only router never
/// touches an nginx it has no business with.
struct LazyHttpRouter {
    cfg: Config,
    admin_addr: SocketAddr,
    nginx: Option<crate::nginx::Nginx>,
    router: Option<crate::nginx::NginxHttpRouter>,
    /// Where `/metrics` finds nginx once it is opened.
    opened: Arc<std::sync::OnceLock<crate::nginx::Nginx>>,
}

impl HttpRouter for LazyHttpRouter {
    fn apply(&mut self, wanted: &BTreeMap<String, HttpRoute>) -> Result<ApplyReport> {
        if self.router.is_none() {
            if wanted.is_empty() {
                return Ok(ApplyReport::default());
            }
            let nginx = match &self.nginx {
                Some(n) => n.clone(),
                None => {
                    let n = crate::nginx::Nginx::from_config(&self.cfg.nginx)
                        .context("starting nginx for HTTP routes")?;
                    self.nginx = Some(n.clone());
                    let _ = self.opened.set(n.clone());
                    n
                }
            };
            self.router = Some(crate::nginx::NginxHttpRouter::new(
                nginx,
                &self.cfg.http,
                &self.cfg.auth,
                &self.cfg.router,
                self.admin_addr,
            )?);
        }
        match self.router.as_mut() {
            Some(router) => router.apply(wanted),
            None => Err(anyhow!("the HTTP router is not open")),
        }
    }
}

/// The HTTP router for `cfg`; `admin_addr` is where the admin endpoint really listens (nginx's
/// `auth_request` goes there).
/// `opened` gets the nginx handle once there is one (for `/metrics`).
pub fn open_http_router(
    cfg: &Config,
    nginx: Option<crate::nginx::Nginx>,
    admin_addr: SocketAddr,
    opened: Arc<std::sync::OnceLock<crate::nginx::Nginx>>,
) -> Result<Box<dyn HttpRouter>> {
    if let Some(n) = &nginx {
        let _ = opened.set(n.clone());
    }
    Ok(Box::new(LazyHttpRouter {
        cfg: cfg.clone(),
        admin_addr,
        nginx,
        router: None,
        opened,
    }))
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

/// Everything the real daemon drives, from `cfg`; `admin_addr` from [`bind_admin`].
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

// ------------------------------------------------------------------------------------------
// Start-up.

/// What a second daemon, or `uninstall`, is told to do about the one running.
const STOP_THE_DAEMON: &str = "stop the daemon first (e.g. `systemctl stop task-router`)";

/// The locks of one router instance (see [`crate::instance_lock`]), held until dropped: the
/// state directory's and, when pins are in play, the pin directory's.
#[derive(Debug)]
pub struct InstanceLocks {
    pub state: Option<crate::instance_lock::InstanceLock>,
    pub pins: Option<crate::instance_lock::PinDirLock>,
}

/// Takes this router instance's locks for the daemon's lifetime:
/// `<ROUTER_STATE_DIR>/task-router.lock` and, for an eBPF datapath, the `ROUTER_BPFFS` directory
/// itself (see [`crate::instance_lock`]). The first thing `run` does, so a second daemon on the
/// same state directory or the same pins stops before it touches pins, maps, nginx files or
/// ClearML.
pub fn lock_instance(cfg: &Config) -> Result<InstanceLocks> {
    use crate::instance_lock::{InstanceLock, LockError, lock_path};
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create ROUTER_STATE_DIR={}", cfg.state_dir.display()))?;
    let path = lock_path(&cfg.state_dir);
    let state = InstanceLock::acquire(&path).map_err(|e| match e {
        LockError::Held { .. } => anyhow!(
            "another task-router daemon already runs this router instance ({e}; \
             ROUTER_STATE_DIR={}): {STOP_THE_DAEMON}, or give this one its own \
             ROUTER_STATE_DIR and ROUTER_BPFFS",
            cfg.state_dir.display()
        ),
        e => anyhow!(e),
    })?;
    tracing::info!(lock = %path.display(), pid = std::process::id(), "instance lock taken");
    let pins = match cfg.datapath.kind {
        // No pins: ROUTER_BPFFS is not this daemon's business.
        DatapathKind::Nginx => None,
        DatapathKind::Ebpf(_) => lock_pin_dir(cfg)?,
    };
    Ok(InstanceLocks {
        state: Some(state),
        pins,
    })
}

/// The daemon's lock on `ROUTER_BPFFS` (created if missing). `None` when it is not on bpffs:
/// no pins can live there to be shared, nothing is created outside bpffs, and the datapath
/// refuses the directory when it opens, with its own message and in its own order (a missing
/// interface is said first).
fn lock_pin_dir(cfg: &Config) -> Result<Option<crate::instance_lock::PinDirLock>> {
    use crate::instance_lock::PinDirLock;
    let root = &cfg.datapath.bpffs;
    if let Err(e) = crate::datapath::pins::check_bpffs(root) {
        tracing::debug!(error = %crate::error::error_chain(&e), "pin directory not locked");
        return Ok(None);
    }
    let lock = PinDirLock::acquire(root).map_err(|e| {
        if e.is_held() {
            anyhow!(
                "another task-router daemon already uses the pinned datapath in \
                 ROUTER_BPFFS={} ({e}; it may have another ROUTER_STATE_DIR): \
                 {STOP_THE_DAEMON}, or give this one its own ROUTER_BPFFS",
                root.display()
            )
        } else {
            anyhow!(e)
        }
    })?;
    tracing::info!(lock = %root.display(), "pin directory lock taken");
    Ok(Some(lock))
}

/// `uninstall`'s side of the locks, held while it removes: each is taken unless no daemon can
/// hold it — no state directory, or no lock file and none can be created (a daemon always has
/// one); no pin directory. Refuses, removing nothing, while a daemon runs on the same state
/// directory or the same `ROUTER_BPFFS` (whatever its state directory).
pub fn lock_for_uninstall(cfg: &Config) -> Result<InstanceLocks> {
    use crate::instance_lock::{InstanceLock, LockError, PinDirLock, lock_path};
    let state = if cfg.state_dir.is_dir() {
        let path = lock_path(&cfg.state_dir);
        match InstanceLock::acquire(&path) {
            Ok(lock) => Some(lock),
            Err(e @ LockError::Held { .. }) => bail!(
                "a task-router daemon is running on this router instance ({e}): \
                 {STOP_THE_DAEMON}; nothing was removed"
            ),
            Err(e) if !path.exists() => {
                tracing::warn!(error = %e, "no instance lock file and none can be created: no daemon holds it");
                None
            }
            Err(e) => return Err(anyhow!(e)),
        }
    } else {
        None
    };
    let root = &cfg.datapath.bpffs;
    let pins = PinDirLock::acquire_existing(root).map_err(|e| {
        if e.is_held() {
            anyhow!(
                "a task-router daemon is using the pinned datapath in ROUTER_BPFFS={} ({e}; \
                 it may have another ROUTER_STATE_DIR): {STOP_THE_DAEMON}; nothing was removed",
                root.display()
            )
        } else {
            anyhow!(e).context("nothing was removed")
        }
    })?;
    Ok(InstanceLocks { state, pins })
}

/// Runs `EXTRA_BASH_COMMAND` once; its failure stops start-up with its output.
pub fn run_extra_command(cfg: &Config) -> Result<()> {
    let Some(cmd) = &cfg.extra_bash_command else {
        return Ok(());
    };
    tracing::info!(command = %cmd, "running EXTRA_BASH_COMMAND");
    let out = std::process::Command::new("bash")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run EXTRA_BASH_COMMAND with bash")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "EXTRA_BASH_COMMAND failed ({}); its output:\n{}",
            out.status,
            text.trim_end()
        );
    }
    for line in text.lines() {
        tracing::info!(output = line, "EXTRA_BASH_COMMAND");
    }
    Ok(())
}

/// A fresh status for `cfg`.
pub fn new_status(cfg: &Config) -> SharedStatus {
    Arc::new(RwLock::new(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        router_name: cfg.router.name.clone(),
        pid: std::process::id(),
        started_at_ms: now_millis(),
        ready_reason: "starting".into(),
        heartbeat_limit_ms: (cfg.clearml.poll_interval.max(MAX_BACKOFF) * 4
            + cfg.clearml.request_timeout * 8)
            .as_millis() as u64,
        clearml: ClearmlStatus {
            enabled: cfg.clearml_enabled(),
            state: if cfg.clearml_enabled() {
                "connecting"
            } else {
                "disabled"
            }
            .into(),
            since_ms: now_millis(),
            ..ClearmlStatus::default()
        },
        ..Status::default()
    }))
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

// ------------------------------------------------------------------------------------------
// The engine.

#[derive(Clone, Debug, PartialEq, Eq)]
enum ApiState {
    Connecting,
    Ok,
    Error { class: String },
}

/// One sync cycle's outcome, for the loop's pacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CycleOutcome {
    /// Everything went through (write-back failures aside).
    Synced,
    /// The ClearML API failed: back off.
    ApiFailed,
}

pub struct Engine {
    cfg: Config,
    settings: Settings,
    policy: UpstreamPolicy,
    reconciler: Reconciler,
    client: Option<Arc<Client>>,
    connected: bool,
    tcp: Arc<Mutex<Box<dyn TcpForwarder>>>,
    http: Arc<Mutex<Box<dyn HttpRouter>>>,
    routes_file: Option<RoutesFile>,
    /// The last good ClearML route set (seeded from local state at start).
    clearml_routes: RouteSet,
    clearml_synced: bool,
    /// What the owners were last given, and whether they took all of it.
    applied: Option<RouteSet>,
    apply_clean: bool,
    applied_at: Instant,
    tcp_failed: HashMap<String, String>,
    http_failed: HashMap<String, String>,
    tcp_error: Option<String>,
    http_error: Option<String>,
    /// Endpoints whose write-back is pending or failed, with the state to show.
    write_state: HashMap<(EndpointKey, Kind), String>,
    refused: Vec<Refusal>,
    logged_refusals: HashMap<(EndpointKey, String), String>,
    api_state: ApiState,
    api_error: Option<String>,
    api_since: u64,
    failures_in_row: u32,
    tasks: usize,
    foreign: usize,
    cycles: u64,
    failed_cycles: u64,
    last_sync_ms: Option<u64>,
    last_sync_duration: Duration,
    routes_state: Option<PathBuf>,
    status: SharedStatus,
    was_ready: bool,
    counters: BTreeMap<u16, RouteCounters>,
    guard: MassRemovalGuard,
    /// The last failure to save the state files (`None` once a save succeeds).
    state_error: Option<String>,
}

/// One bad answer must not tear down all routes: a listing (after the by-id confirmation of
/// missing tasks) whose plan would remove every route of half or more of the routed tasks is
/// held (the routes in force and the port allocator stay as they were, the plan is dropped)
/// until the next cycle's answer drops the same tasks (or a subset of them). A server that lost
/// its database, a wrong company, or a proxy answering an empty list thus costs nothing; a real
/// mass stop costs one poll interval.
#[derive(Debug, Default)]
struct MassRemovalGuard {
    /// The tasks a held answer dropped; the next answer must drop no others to be believed.
    pending: Option<HashSet<String>>,
    /// Cycles held so far (the `task_router_clearml_removals_held_total` counter).
    held_total: u64,
}

/// What [`MassRemovalGuard::check`] decided.
#[derive(Debug, PartialEq, Eq)]
enum GuardVerdict {
    /// Believe the answer: plan from it.
    Proceed,
    /// Do not believe it yet: keep the routes in force.
    Hold { gone: usize, routed: usize },
}

impl MassRemovalGuard {
    /// `routed`: tasks with ClearML routes in force; `kept`: tasks that still have a route in
    /// the plan made from the answer (after the by-id confirmation of missing tasks). A task
    /// counts as dropped whether the answer lost it, stopped it or emptied its runtime.
    fn check(&mut self, routed: &HashSet<String>, kept: &HashSet<&str>) -> GuardVerdict {
        let gone: HashSet<String> = routed
            .iter()
            .filter(|id| !kept.contains(id.as_str()))
            .cloned()
            .collect();
        let (num, den) = MASS_REMOVAL_SHARE;
        let mass = !gone.is_empty() && gone.len() * den >= routed.len() * num;
        if !mass {
            self.pending = None;
            return GuardVerdict::Proceed;
        }
        let confirmed = self
            .pending
            .as_ref()
            .is_some_and(|pending| gone.is_subset(pending));
        if confirmed {
            self.pending = None;
            return GuardVerdict::Proceed;
        }
        let verdict = GuardVerdict::Hold {
            gone: gone.len(),
            routed: routed.len(),
        };
        self.pending = Some(gone);
        self.held_total += 1;
        verdict
    }

    /// How many routed tasks a held answer dropped (0 when nothing is held).
    fn held(&self) -> usize {
        self.pending.as_ref().map_or(0, HashSet::len)
    }
}

/// What one ClearML sync produced.
enum Synced {
    Plan(Plan),
    /// The mass-removal guard held the answer.
    Held {
        gone: usize,
        routed: usize,
    },
}

/// Persisted ClearML route set (`ROUTER_STATE_DIR/routes.json`): what forwards while the API
/// is unreachable after a restart.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct PersistedRoutes {
    tcp: Vec<TcpRoute>,
    http: Vec<HttpRoute>,
}

impl Engine {
    pub fn new(
        cfg: Config,
        tcp: Box<dyn TcpForwarder>,
        http: Box<dyn HttpRouter>,
        status: SharedStatus,
    ) -> Result<Engine> {
        let mut policy = UpstreamPolicy::new(cfg.tcp.allowed_upstreams.clone(), []);
        policy.set_own(own_addresses(&cfg));
        let settings = Settings::from_config(&cfg);
        let routes_file = match &cfg.routes_file {
            Some(path) => Some(
                RoutesFile::load(path, &policy, cfg.http.domain.is_some())
                    .map_err(|e| anyhow!(crate::error::error_chain(&e)))?,
            ),
            None => None,
        };
        let (ports, routes_state, seeded) = if cfg.clearml_enabled() {
            std::fs::create_dir_all(&cfg.state_dir).with_context(|| {
                format!("cannot create ROUTER_STATE_DIR={}", cfg.state_dir.display())
            })?;
            let ports_path = cfg.state_dir.join("ports.json");
            let ports = open_ports(&cfg, &ports_path)?;
            let routes_path = cfg.state_dir.join("routes.json");
            let seeded = load_routes(&routes_path, &policy);
            (ports, Some(routes_path), seeded)
        } else {
            (
                PortAllocator::in_memory(cfg.tcp.port_start, cfg.tcp.port_end, cfg.tcp.port_grace),
                None,
                RouteSet::default(),
            )
        };
        if !seeded.tcp.is_empty() || !seeded.http.is_empty() {
            tracing::info!(
                tcp = seeded.tcp.len(),
                http = seeded.http.len(),
                "routes of the previous run kept until the first ClearML sync"
            );
        }
        let client = match &cfg.clearml.api_host {
            Some(_) => Some(Arc::new(
                Client::new(&cfg.clearml).context("setting up the ClearML client")?,
            )),
            None => None,
        };
        Ok(Engine {
            settings,
            policy,
            reconciler: Reconciler::new(ports),
            client,
            connected: false,
            tcp: Arc::new(Mutex::new(tcp)),
            http: Arc::new(Mutex::new(http)),
            routes_file,
            clearml_routes: seeded,
            clearml_synced: false,
            applied: None,
            apply_clean: false,
            applied_at: Instant::now(),
            tcp_failed: HashMap::new(),
            http_failed: HashMap::new(),
            tcp_error: None,
            http_error: None,
            write_state: HashMap::new(),
            refused: Vec::new(),
            logged_refusals: HashMap::new(),
            api_state: ApiState::Connecting,
            api_error: None,
            api_since: now_millis(),
            failures_in_row: 0,
            tasks: 0,
            foreign: 0,
            cycles: 0,
            failed_cycles: 0,
            last_sync_ms: None,
            last_sync_duration: Duration::ZERO,
            routes_state,
            status,
            was_ready: false,
            counters: BTreeMap::new(),
            guard: MassRemovalGuard::default(),
            state_error: None,
            cfg,
        })
    }

    /// The first login and queue resolution. Answers that will not change by themselves (bad
    /// credentials, an unknown queue) fail the start; an unreachable server does not (the
    /// routes of the previous run keep forwarding while the loop retries).
    pub async fn connect_at_start(&mut self) -> Result<()> {
        match self.connect().await {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => {
                self.note_api_error(&e);
                Ok(())
            }
            Err(e) => Err(anyhow!(crate::error::error_chain(&e)))
                .context("connecting to the ClearML API server"),
        }
    }

    async fn connect(&mut self) -> Result<(), ApiError> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        if self.connected {
            return Ok(());
        }
        client.login().await?;
        let ids = client.queue_ids(&self.cfg.clearml.listen_queues).await?;
        if !self.cfg.clearml.listen_queues.is_empty() {
            tracing::info!(
                queues = %self.cfg.clearml.listen_queues.join(","),
                ids = %ids.join(","),
                "listening to queues"
            );
        }
        self.settings.queue_ids = ids;
        self.connected = true;
        Ok(())
    }

    /// The loop: a cycle now, then every poll interval (backing off while the API fails),
    /// until `stop` turns true.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        loop {
            let outcome = self.cycle().await;
            let delay = match outcome {
                CycleOutcome::Synced => self.cfg.clearml.poll_interval,
                CycleOutcome::ApiFailed => {
                    backoff(self.cfg.clearml.poll_interval, self.failures_in_row)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.save_state();
        tracing::info!("sync loop stopped; routes stay as programmed");
        Ok(())
    }

    /// One cycle: sources → plan → apply → status → write-back → persist → status.
    pub async fn cycle(&mut self) -> CycleOutcome {
        let started = Instant::now();
        self.cycles += 1;
        self.policy.set_own(own_addresses(&self.cfg));
        if let Some(file) = &mut self.routes_file {
            match file.reload(&self.policy) {
                Ok(true) => tracing::info!(path = %file.path().display(), "routes file reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    error = %crate::error::error_chain(&e),
                    "routes file not reloaded; its previous routes stay"
                ),
            }
        }
        let mut outcome = CycleOutcome::Synced;
        let mut writes = None;
        if self.client.is_some() {
            match self.sync_clearml().await {
                Ok(Synced::Held { gone, routed }) => {
                    self.note_api_ok();
                    tracing::warn!(
                        gone,
                        routed,
                        held_cycles = self.guard.held_total,
                        "ClearML's answer drops the routes of {gone} of {routed} routed tasks at \
                         once; keeping them until the next answer agrees"
                    );
                    self.last_sync_ms = Some(now_millis());
                }
                Ok(Synced::Plan(plan)) => {
                    self.note_api_ok();
                    self.log_route_changes(&plan.routes);
                    self.tasks = plan.tasks;
                    self.foreign = plan.foreign;
                    self.log_refusals(&plan.refused);
                    self.refused = plan.refused;
                    self.clearml_routes = plan.routes;
                    self.clearml_synced = true;
                    self.last_sync_ms = Some(now_millis());
                    writes = Some(plan.writes);
                }
                Err(e) => {
                    self.note_api_error(&e);
                    self.failed_cycles += 1;
                    outcome = CycleOutcome::ApiFailed;
                }
            }
        }
        self.apply().await;
        // Publish what is programmed before any task reads its endpoint: once `tasks.edit`
        // lands, the task (and whoever it hands the endpoint to) may ask `status` at once, and
        // the write-back, the state files' fsync and the counters can take a while.
        if let Some(writes) = &writes {
            self.mark_writes_pending(writes);
        }
        self.publish();
        self.write_back(writes).await;
        self.save_state();
        self.read_counters().await;
        self.last_sync_duration = started.elapsed();
        self.publish();
        outcome
    }

    async fn sync_clearml(&mut self) -> Result<Synced, ApiError> {
        self.connect().await?;
        let client = self.client.clone().ok_or_else(|| ApiError::Malformed {
            call: "sync".into(),
            reason: "no client".into(),
        })?;
        let (mut tasks, skipped) = client
            .tasks_requesting_endpoints(&self.settings.queue_ids)
            .await?;
        if skipped > 0 {
            tracing::debug!(skipped, "task entries without an id skipped");
        }
        // A task that had a route but is missing from the listing is looked up by id before
        // its route goes: paging over a changing list can skip an entry.
        let listed: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let mut missing: Vec<String> = self
            .clearml_routes
            .tcp
            .values()
            .map(|r| &r.owner.task_id)
            .chain(self.clearml_routes.http.values().map(|r| &r.owner.task_id))
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let found = client.tasks_by_id(&missing).await?;
            tasks.extend(
                found
                    .into_iter()
                    .filter(|t| t.wants_routes(&self.settings.queue_ids)),
            );
        }
        let routed = route_owners(&self.clearml_routes);
        let statics = self
            .routes_file
            .as_ref()
            .map(|f| f.routes().clone())
            .unwrap_or_default();
        // Planning moves ports (releases, new claims): keep the allocator as it was in case the
        // guard does not believe this answer.
        let ports_before = self.reconciler.ports.clone();
        let plan = self.reconciler.plan(
            &tasks,
            &statics,
            &self.clearml_routes,
            &self.settings,
            &self.policy,
            now_millis(),
        );
        let kept = route_owners(&plan.routes);
        let kept: HashSet<&str> = kept.iter().map(String::as_str).collect();
        if let GuardVerdict::Hold { gone, routed } = self.guard.check(&routed, &kept) {
            self.reconciler.ports = ports_before;
            return Ok(Synced::Held { gone, routed });
        }
        Ok(Synced::Plan(plan))
    }

    /// The set the owners should serve: static routes, then ClearML routes (ports and keys of
    /// static routes are never planned for tasks, so nothing is overwritten).
    fn wanted(&self) -> RouteSet {
        let mut set = self.clearml_routes.clone();
        if let Some(file) = &self.routes_file {
            for (port, r) in &file.routes().tcp {
                set.tcp.insert(*port, r.clone());
            }
            for (key, r) in &file.routes().http {
                set.http.insert(key.clone(), r.clone());
            }
        }
        set
    }

    async fn apply(&mut self) {
        let wanted = self.wanted();
        let due = !self.apply_clean
            || self.applied.as_ref() != Some(&wanted)
            || self.applied_at.elapsed() >= REAPPLY_EVERY;
        if !due {
            return;
        }
        let tcp = self.tcp.clone();
        let http = self.http.clone();
        let tcp_routes = wanted.tcp.clone();
        let http_routes = wanted.http.clone();
        // The owners may block (map updates, nginx -t and reload): off the async threads.
        let joined = tokio::task::spawn_blocking(move || {
            let t = tcp
                .lock()
                .map_err(|_| anyhow!("the TCP forwarder panicked earlier"))
                .and_then(|mut f| f.apply(&tcp_routes));
            let h = http
                .lock()
                .map_err(|_| anyhow!("the HTTP router panicked earlier"))
                .and_then(|mut r| r.apply(&http_routes));
            (t, h)
        })
        .await;
        let (t, h) = match joined {
            Ok(pair) => pair,
            Err(e) => (
                Err(anyhow!("applying routes panicked: {e}")),
                Err(anyhow!("applying routes panicked: {e}")),
            ),
        };
        let mut clean = true;
        let mut note = |kind: &str,
                        result: Result<ApplyReport>,
                        failed: &mut HashMap<String, String>,
                        error: &mut Option<String>| {
            match result {
                Ok(report) => {
                    if !report.is_noop() {
                        tracing::debug!(kind, ?report, "applied");
                    }
                    let now: HashMap<String, String> = report.failed.into_iter().collect();
                    for (id, reason) in &now {
                        if failed.get(id) != Some(reason) {
                            tracing::warn!(kind, route = %id, reason = %reason, "route not programmed");
                        }
                    }
                    clean &= now.is_empty();
                    *failed = now;
                    if error.take().is_some() {
                        tracing::info!(kind, "routes applied again");
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if error.as_deref() != Some(text.as_str()) {
                        tracing::error!(kind, error = %text, "applying routes failed; the previous ones stay");
                    }
                    clean = false;
                    *error = Some(text);
                }
            }
        };
        note("tcp", t, &mut self.tcp_failed, &mut self.tcp_error);
        note("http", h, &mut self.http_failed, &mut self.http_error);
        self.apply_clean = clean;
        self.applied = Some(wanted);
        self.applied_at = Instant::now();
    }

    async fn read_counters(&mut self) {
        let tcp = self.tcp.clone();
        let read = tokio::task::spawn_blocking(move || tcp.lock().map(|f| f.counters()).ok()).await;
        self.counters = read.ok().flatten().unwrap_or_default();
    }

    /// Whether `route` is programmed (its owner applied it without failure).
    fn programmed(&self, route: &RouteRef) -> bool {
        match route {
            RouteRef::Tcp(_) => {
                self.tcp_error.is_none() && !self.tcp_failed.contains_key(&route.id())
            }
            RouteRef::Http(_) => {
                self.http_error.is_none() && !self.http_failed.contains_key(&route.id())
            }
        }
    }

    /// Shows the endpoints about to be written back as `writing back` (a state from an earlier
    /// attempt, e.g. a failed write, stays until this attempt ends).
    fn mark_writes_pending(&mut self, writes: &[WriteBack]) {
        for wb in writes {
            if self.programmed(&wb.route) {
                self.write_state
                    .entry((wb.key.clone(), wb.want.kind()))
                    .or_insert_with(|| "writing back".into());
            }
        }
    }

    /// Writes endpoints back for the routes that were programmed. `None`: no plan this cycle
    /// (the listing failed), so the pending states stay as they are.
    async fn write_back(&mut self, writes: Option<Vec<WriteBack>>) {
        let Some(writes) = writes else {
            return;
        };
        let live: HashSet<(EndpointKey, Kind)> = writes
            .iter()
            .map(|w| (w.key.clone(), w.want.kind()))
            .collect();
        self.write_state.retain(|k, _| live.contains(k));
        let Some(client) = self.client.clone() else {
            return;
        };
        let settings = Arc::new(self.settings.clone());
        let policy = Arc::new(self.policy.clone());
        let gate = Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY));
        // One job per task, its endpoints written one after the other: two concurrent
        // read-merge-writes of the same runtime dict would each drop the other's keys.
        let mut by_task: BTreeMap<String, Vec<WriteBack>> = BTreeMap::new();
        for wb in writes {
            if !self.programmed(&wb.route) {
                self.write_state.insert(
                    (wb.key.clone(), wb.want.kind()),
                    "waiting for the route to be programmed".into(),
                );
                continue;
            }
            by_task.entry(wb.key.task_id.clone()).or_default().push(wb);
        }
        let mut jobs = tokio::task::JoinSet::new();
        for (task_id, wbs) in by_task {
            let (client, settings, policy, gate) = (
                client.clone(),
                settings.clone(),
                policy.clone(),
                gate.clone(),
            );
            jobs.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let mut done = Vec::with_capacity(wbs.len());
                for wb in wbs {
                    let outcome = client
                        .update_runtime(&task_id, |task| {
                            reconcile::recheck(task, &wb, &settings, &policy)
                        })
                        .await;
                    done.push((wb, outcome));
                }
                done
            });
        }
        let mut finished = Vec::new();
        while let Some(joined) = jobs.join_next().await {
            if let Ok(done) = joined {
                finished.extend(done);
            }
        }
        for (wb, outcome) in finished {
            let state_key = (wb.key.clone(), wb.want.kind());
            let endpoint = wb
                .patch
                .iter()
                .find(|(k, _)| k.starts_with("endpoint") || k.starts_with("external_tcp_port"))
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            match outcome {
                Ok(WriteOutcome::Written { attempts }) => {
                    tracing::info!(
                        task = %wb.key.task_id, endpoint = %wb.key.endpoint, name = ?wb.task_name,
                        route = %wb.route.id(), written = %endpoint, attempts,
                        "endpoint written back"
                    );
                    self.write_state.remove(&state_key);
                }
                Ok(WriteOutcome::Unchanged) => {
                    self.write_state.remove(&state_key);
                }
                Ok(WriteOutcome::Skipped(reason)) => {
                    tracing::debug!(task = %wb.key.task_id, endpoint = %wb.key.endpoint, reason, "write-back skipped");
                    self.write_state
                        .insert(state_key, format!("writing back ({reason})"));
                }
                Ok(WriteOutcome::Gone) => {
                    self.write_state.remove(&state_key);
                }
                Ok(WriteOutcome::Lost { attempts }) => {
                    tracing::warn!(task = %wb.key.task_id, endpoint = %wb.key.endpoint, attempts,
                        "write-back overwritten by concurrent writers; retrying next cycle");
                    self.write_state.insert(
                        state_key,
                        format!(
                            "write-back failed: overwritten {attempts} times by concurrent writers"
                        ),
                    );
                }
                Err(e) => {
                    let text = crate::error::error_chain(&e);
                    if e.is_transient() {
                        self.note_api_error(&e);
                    }
                    tracing::debug!(task = %wb.key.task_id, error = %text, "write-back failed");
                    self.write_state
                        .insert(state_key, format!("write-back failed: {text}"));
                }
            }
        }
    }

    fn note_api_ok(&mut self) {
        if self.api_state != ApiState::Ok {
            if matches!(self.api_state, ApiState::Error { .. }) {
                tracing::info!("ClearML API reachable again");
            } else {
                tracing::info!("ClearML API connected");
            }
            self.api_state = ApiState::Ok;
            self.api_since = now_millis();
        }
        self.api_error = None;
        self.failures_in_row = 0;
    }

    fn note_api_error(&mut self, e: &ApiError) {
        let class = e.class();
        let text = crate::error::error_chain(e);
        if matches!(
            e,
            ApiError::Unauthorized { .. } | ApiError::UnknownQueue { .. }
        ) {
            // Log in and resolve queues again on the next attempt.
            self.connected = false;
        }
        let state = ApiState::Error { class };
        if self.api_state != state {
            tracing::warn!(error = %text, "ClearML API unavailable; routes stay as they are, retrying with back-off");
            self.api_state = state;
            self.api_since = now_millis();
        }
        self.api_error = Some(text);
        self.failures_in_row = self.failures_in_row.saturating_add(1);
    }

    fn log_refusals(&mut self, refused: &[Refusal]) {
        let mut now = HashMap::new();
        for r in refused {
            let key = (
                EndpointKey::new(r.task_id.clone(), r.endpoint.clone()),
                r.kind.clone(),
            );
            if self.logged_refusals.get(&key) != Some(&r.reason) {
                tracing::warn!(task = %r.task_id, endpoint = %r.endpoint, kind = %r.kind,
                    name = ?r.task_name, reason = %r.reason, "endpoint request refused");
            }
            now.insert(key, r.reason.clone());
        }
        self.logged_refusals = now;
    }

    fn log_route_changes(&self, new: &RouteSet) {
        let old = &self.clearml_routes;
        let mut lines = Vec::new();
        for (port, r) in &new.tcp {
            match old.tcp.get(port) {
                None => lines.push(format!(
                    "+ tcp {port} -> {} ({})",
                    r.upstream,
                    owner_text(&r.owner)
                )),
                Some(o) if o != r => lines.push(format!(
                    "~ tcp {port} -> {} ({})",
                    r.upstream,
                    owner_text(&r.owner)
                )),
                _ => {}
            }
        }
        for (port, r) in &old.tcp {
            if !new.tcp.contains_key(port) {
                lines.push(format!("- tcp {port} ({})", owner_text(&r.owner)));
            }
        }
        for (key, r) in &new.http {
            match old.http.get(key) {
                None => lines.push(format!("+ http {key} -> {}", r.upstream)),
                Some(o) if o != r => lines.push(format!("~ http {key} -> {}", r.upstream)),
                _ => {}
            }
        }
        for key in old.http.keys() {
            if !new.http.contains_key(key) {
                lines.push(format!("- http {key}"));
            }
        }
        if lines.len() <= LOG_EACH_UP_TO {
            for l in lines {
                tracing::info!(change = %l, "route");
            }
        } else {
            tracing::info!(
                changes = lines.len(),
                tcp = new.tcp.len(),
                http = new.http.len(),
                "routes changed"
            );
        }
    }

    fn save_state(&mut self) {
        let mut errors = Vec::new();
        if let Err(e) = self.reconciler.ports.save() {
            errors.push(format!("port state: {}", crate::error::error_chain(&e)));
        }
        if let Some(path) = &self.routes_state
            && self.clearml_synced
        {
            let persisted = PersistedRoutes {
                tcp: self.clearml_routes.tcp.values().cloned().collect(),
                http: self.clearml_routes.http.values().cloned().collect(),
            };
            // Written whole to a temporary file, synced and renamed over the old one: a full or
            // read-only disk leaves the previous file intact, never a torn one.
            let result = serde_json::to_vec(&persisted)
                .map_err(std::io::Error::other)
                .and_then(|data| {
                    let unchanged = std::fs::read(path).is_ok_and(|old| old == data);
                    if unchanged {
                        Ok(())
                    } else {
                        crate::fsutil::write_atomic(path, &data)
                    }
                });
            if let Err(e) = result {
                errors.push(format!("route state {}: {e}", path.display()));
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        match (&self.state_error, &error) {
            (None, Some(e)) => {
                tracing::warn!(error = %e, "state not saved; forwarding continues, retrying every cycle")
            }
            (Some(_), None) => tracing::info!("state saved again"),
            _ => {}
        }
        self.state_error = error;
    }

    /// The readiness and its reason.
    fn readiness(&self) -> (bool, String) {
        if let Some(e) = &self.tcp_error {
            return (false, format!("the TCP datapath failed: {e}"));
        }
        if self.client.is_some() && !self.clearml_synced {
            return (
                false,
                match &self.api_error {
                    Some(e) => format!("waiting for the first ClearML sync: {e}"),
                    None => "waiting for the first ClearML sync".into(),
                },
            );
        }
        if self.applied.is_none() {
            return (false, "routes not applied yet".into());
        }
        (true, String::new())
    }

    /// What is wrong while forwarding continues (shown by `/readyz` and `status`).
    fn degraded(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.clearml_synced
            && let (ApiState::Error { .. }, Some(e)) = (&self.api_state, &self.api_error)
        {
            let since = now_millis().saturating_sub(self.api_since) / 1000;
            out.push(format!(
                "ClearML API failing for {since} s (routes of the last good sync stay in force): {e}"
            ));
        }
        let held = self.guard.held();
        if held > 0 {
            out.push(format!(
                "ClearML's last answer drops {held} routed tasks at once; their routes stay until \
                 the next answer agrees"
            ));
        }
        if let Some(e) = &self.state_error {
            out.push(format!("state not saved: {e}"));
        }
        if let Some(e) = &self.http_error {
            out.push(format!("the HTTP router failed: {e}"));
        }
        out
    }

    fn route_status(&self) -> Vec<RouteStatus> {
        let empty = RouteSet::default();
        let wanted = self.applied.as_ref().unwrap_or(&empty);
        let mut out = Vec::with_capacity(wanted.tcp.len() + wanted.http.len());
        let state = |failed: Option<&String>, error: &Option<String>, key: (EndpointKey, Kind)| {
            if let Some(e) = error {
                format!("failed: {e}")
            } else if let Some(reason) = failed {
                format!("failed: {reason}")
            } else if let Some(w) = self.write_state.get(&key) {
                w.clone()
            } else {
                "active".to_string()
            }
        };
        for (port, r) in &wanted.tcp {
            let key = EndpointKey::new(r.owner.task_id.clone(), r.owner.endpoint.clone());
            out.push(RouteStatus {
                task_id: r.owner.task_id.clone(),
                task_name: r.owner.task_name.clone(),
                endpoint: r.owner.endpoint.clone(),
                kind: "tcp".into(),
                router: port.to_string(),
                upstream: r.upstream.to_string(),
                state: state(
                    self.tcp_failed.get(&port.to_string()),
                    &self.tcp_error,
                    (key, Kind::Tcp),
                ),
                connections: self.counters.get(port).map(|c| c.connections),
                bytes: self.counters.get(port).map(|c| c.bytes),
            });
        }
        for (k, r) in &wanted.http {
            let key = EndpointKey::new(r.owner.task_id.clone(), r.owner.endpoint.clone());
            let url = if r.owner.task_id.starts_with("file:") {
                reconcile::endpoint_url(&self.settings, &EndpointKey::new(k.clone(), ""), r.mode)
            } else {
                reconcile::endpoint_url(&self.settings, &key, r.mode)
            };
            out.push(RouteStatus {
                task_id: r.owner.task_id.clone(),
                task_name: r.owner.task_name.clone(),
                endpoint: r.owner.endpoint.clone(),
                kind: "http".into(),
                router: url,
                upstream: r.upstream.to_string(),
                state: state(self.http_failed.get(k), &self.http_error, (key, Kind::Http)),
                connections: None,
                bytes: None,
            });
        }
        out
    }

    fn publish(&mut self) {
        let (ready, reason) = self.readiness();
        if ready && !self.was_ready {
            tracing::info!(
                tcp = self.applied.as_ref().map(|s| s.tcp.len()).unwrap_or(0),
                http = self.applied.as_ref().map(|s| s.http.len()).unwrap_or(0),
                "ready"
            );
        }
        self.was_ready |= ready;
        let routes = self.route_status();
        let api_stats = self.client.as_ref().map(|c| {
            (
                c.stats.calls.load(std::sync::atomic::Ordering::Relaxed),
                c.stats.failures.load(std::sync::atomic::Ordering::Relaxed),
                c.stats
                    .concurrent_writes
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
        });
        let degraded = self.degraded();
        let Ok(mut s) = self.status.write() else {
            return;
        };
        s.ready = ready;
        s.ready_reason = reason;
        s.degraded = degraded;
        s.heartbeat_ms = now_millis();
        s.clearml.state = match (&self.client, &self.api_state) {
            (None, _) => "disabled",
            (_, ApiState::Connecting) => "connecting",
            (_, ApiState::Ok) => "ok",
            (_, ApiState::Error { .. }) => "error",
        }
        .into();
        s.clearml.error = self.api_error.clone();
        s.clearml.since_ms = self.api_since;
        s.clearml.last_sync_ms = self.last_sync_ms;
        s.clearml.last_sync_duration_ms = self.last_sync_duration.as_millis() as u64;
        s.clearml.tasks = self.tasks;
        s.clearml.foreign = self.foreign;
        s.clearml.cycles = self.cycles;
        s.clearml.failed_cycles = self.failed_cycles;
        s.clearml.held_removals = self.guard.held();
        s.clearml.held_cycles = self.guard.held_total;
        if let Some((calls, failures, concurrent)) = api_stats {
            s.clearml.api_calls = calls;
            s.clearml.api_failures = failures;
            s.clearml.concurrent_writes = concurrent;
        }
        if let Some(c) = &self.client {
            s.clearml.api_latency = c.stats.latency();
        }
        s.routes_file = self.routes_file.as_ref().map(|f| admin::RoutesFileStatus {
            path: f.path().display().to_string(),
            routes: f.routes().tcp.len() + f.routes().http.len(),
            error: f.error.clone(),
        });
        s.ports = self.reconciler.ports.stats();
        s.routes = routes;
        s.refused = self.refused.clone();
        s.tcp_error = self.tcp_error.clone();
        s.http_error = self.http_error.clone();
        s.state_error = self.state_error.clone();
    }
}

/// The tasks that own at least one route of `set`.
fn route_owners(set: &RouteSet) -> HashSet<String> {
    set.tcp
        .values()
        .map(|r| r.owner.task_id.clone())
        .chain(set.http.values().map(|r| r.owner.task_id.clone()))
        .collect()
}

fn owner_text(o: &crate::routes::RouteOwner) -> String {
    if o.endpoint.is_empty() {
        format!("{} {:?}", o.task_id, o.task_name)
    } else {
        format!("{}__{} {:?}", o.task_id, o.endpoint, o.task_name)
    }
}

/// The router's own addresses: configured, discovered, and `TCP_ROUTER_ADDRESS` if it is one.
fn own_addresses(cfg: &Config) -> Vec<std::net::Ipv4Addr> {
    let mut own = cfg.datapath.router_addresses.clone();
    own.extend(validate::local_addresses());
    if let Ok(IpAddr::V4(a)) = cfg.tcp.router_address.parse::<IpAddr>() {
        own.push(a);
    }
    own
}

fn open_ports(cfg: &Config, path: &Path) -> Result<PortAllocator> {
    let (start, end, grace) = (cfg.tcp.port_start, cfg.tcp.port_end, cfg.tcp.port_grace);
    match PortAllocator::open(start, end, grace, path) {
        Ok(p) => Ok(p),
        Err(e @ crate::ports::PortsError::Corrupt { .. }) => {
            // The server holds the truth (ports are written on the tasks): start over, keeping
            // the bad file for a person to look at.
            let aside = path.with_extension("json.corrupt");
            tracing::warn!(
                error = %crate::error::error_chain(&e),
                moved_to = %aside.display(),
                "port state unreadable; rebuilding it from the tasks"
            );
            std::fs::rename(path, &aside)
                .with_context(|| format!("moving {} aside", path.display()))?;
            let mut p = PortAllocator::open(start, end, grace, path)?;
            p.save()?;
            Ok(p)
        }
        Err(e) => Err(anyhow!(crate::error::error_chain(&e))),
    }
}

fn load_routes(path: &Path, policy: &UpstreamPolicy) -> RouteSet {
    let Ok(data) = std::fs::read(path) else {
        return RouteSet::default();
    };
    let persisted: PersistedRoutes = match serde_json::from_slice(&data) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "route state unreadable; ignored");
            return RouteSet::default();
        }
    };
    let mut set = RouteSet::default();
    let ok = |u: &std::net::SocketAddrV4| {
        policy
            .upstream(&u.ip().to_string(), &u.port().to_string())
            .is_ok()
    };
    for r in persisted.tcp {
        if ok(&r.upstream) {
            set.tcp.insert(r.port, r);
        }
    }
    for r in persisted.http {
        if ok(&r.upstream) && validate::task_id(&r.key.replace("__", "_")).is_ok() {
            set.http.insert(r.key.clone(), r);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearml::mock::{Fault, MockServer};
    use serde_json::json;

    /// A TCP forwarder that records what it was given; `fail` makes it refuse routes.
    #[derive(Clone, Default)]
    struct Recorder {
        programmed: Arc<Mutex<BTreeMap<u16, TcpRoute>>>,
        applies: Arc<Mutex<usize>>,
        fail: Arc<Mutex<Option<String>>>,
    }

    impl TcpForwarder for Recorder {
        fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> Result<ApplyReport> {
            *self.applies.lock().unwrap() += 1;
            if let Some(reason) = self.fail.lock().unwrap().clone() {
                return Ok(ApplyReport {
                    failed: wanted
                        .keys()
                        .map(|p| (p.to_string(), reason.clone()))
                        .collect(),
                    ..ApplyReport::default()
                });
            }
            *self.programmed.lock().unwrap() = wanted.clone();
            Ok(ApplyReport::default())
        }

        fn counters(&self) -> BTreeMap<u16, RouteCounters> {
            self.programmed
                .lock()
                .unwrap()
                .keys()
                .map(|p| {
                    (
                        *p,
                        RouteCounters {
                            connections: 1,
                            bytes: u64::from(*p),
                        },
                    )
                })
                .collect()
        }
    }

    #[derive(Clone, Default)]
    struct HttpRecorder {
        programmed: Arc<Mutex<BTreeMap<String, HttpRoute>>>,
    }

    impl HttpRouter for HttpRecorder {
        fn apply(&mut self, wanted: &BTreeMap<String, HttpRoute>) -> Result<ApplyReport> {
            *self.programmed.lock().unwrap() = wanted.clone();
            Ok(ApplyReport::default())
        }
    }

    fn config(api: &str, state: &Path) -> Config {
        let env = [
            ("CLEARML_API_HOST", api.to_string()),
            ("CLEARML_API_ACCESS_KEY", "ak".into()),
            ("CLEARML_API_SECRET_KEY", "sk".into()),
            ("TCP_ROUTER_ADDRESS", "203.0.113.7".into()),
            ("TCP_PORT_START", "31000".into()),
            ("TCP_PORT_END", "31009".into()),
            ("ROUTER_NAME", "r1".into()),
            ("ROUTER_URL", "https://router.example.com".into()),
            ("AUTH_ENABLED", "false".into()),
            ("ROUTER_STATE_DIR", state.display().to_string()),
            ("ROUTER_API_TIMEOUT", "1s".into()),
            ("ROUTER_PORT_GRACE", "0s".into()),
        ];
        let sources = crate::config::Sources::new(
            Vec::new(),
            env.iter().map(|(k, v)| (k.to_string(), v.clone())),
            None,
        )
        .unwrap();
        Config::from_sources(&sources).unwrap()
    }

    fn engine(cfg: &Config, tcp: &Recorder, http: &HttpRecorder) -> (Engine, SharedStatus) {
        let status = new_status(cfg);
        let e = Engine::new(
            cfg.clone(),
            Box::new(tcp.clone()),
            Box::new(http.clone()),
            status.clone(),
        )
        .unwrap();
        (e, status)
    }

    fn ssh_request(addr: &str) -> serde_json::Value {
        json!({"_SERVICE": "EXTERNAL_TCP", "external_address": addr, "external_tcp_port": 22,
               "upstream_task_port": 22, "progress": "1"})
    }

    #[tokio::test]
    async fn requests_are_served_written_back_and_removed() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        api.add_task("t1", ssh_request("10.1.0.5"));
        api.add_task(
            "h1",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.1.0.6", "_PORT": 7860}),
        );
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let cfg = config(&api.url, state.path());
        let (mut e, status) = engine(&cfg, &tcp, &http);
        e.connect_at_start().await.unwrap();
        assert_eq!(e.cycle().await, CycleOutcome::Synced);

        let programmed = tcp.programmed.lock().unwrap().clone();
        assert_eq!(programmed.len(), 1);
        assert_eq!(programmed[&31000].upstream, "10.1.0.5:22".parse().unwrap());
        let rt = api.task("t1")["runtime"].clone();
        assert_eq!(rt["external_address"], json!("203.0.113.7"));
        assert_eq!(rt["external_tcp_port"], json!(31000));
        assert_eq!(rt["upstream_task_address"], json!("10.1.0.5"));
        assert_eq!(rt["_ROUTER_NAME"], json!("r1"));
        assert_eq!(rt["progress"], json!("1"), "other keys kept");
        assert_eq!(
            http.programmed.lock().unwrap()["h1"].upstream,
            "10.1.0.6:7860".parse().unwrap()
        );
        assert_eq!(
            api.task("h1")["runtime"]["endpoint"],
            json!("https://router.example.com/service/h1/")
        );
        {
            let s = status.read().unwrap();
            assert!(s.ready, "{}", s.ready_reason);
            assert_eq!(s.clearml.state, "ok");
            assert_eq!(s.routes.len(), 2);
            assert!(
                s.routes.iter().all(|r| r.state == "active"),
                "{:?}",
                s.routes
            );
            let tcp_row = s.routes.iter().find(|r| r.kind == "tcp").unwrap();
            assert_eq!((tcp_row.connections, tcp_row.bytes), (Some(1), Some(31000)));
        }

        // Steady state: no write, no re-apply.
        let (edits, applies) = (api.calls("tasks.edit"), *tcp.applies.lock().unwrap());
        e.cycle().await;
        assert_eq!(api.calls("tasks.edit"), edits);
        assert_eq!(*tcp.applies.lock().unwrap(), applies);

        // The task stops: its route goes once a second answer agrees (one of two routed tasks
        // is half of them: the mass-removal guard holds the first answer).
        api.set("t1", "status", json!("stopped"));
        e.cycle().await;
        assert_eq!(tcp.programmed.lock().unwrap().len(), 1, "held");
        e.cycle().await;
        assert!(tcp.programmed.lock().unwrap().is_empty());
        assert_eq!(status.read().unwrap().ports.resting, 1);
        // Deleted: gone too.
        api.state.lock().unwrap().tasks.retain(|t| t["id"] != "h1");
        e.cycle().await;
        e.cycle().await;
        assert!(http.programmed.lock().unwrap().is_empty());
    }

    /// The e2e flake (`clearml_e2e::e2e_sdk_2_0_tcp_and_http_through_the_router`): the SDK saw
    /// its HTTP endpoint, the test used it and ran `task-router status` before the cycle that
    /// wrote it had published, so the table still said "1 tasks". When the endpoint lands on
    /// the task, the status must already list its route and count its task.
    #[tokio::test]
    async fn the_status_lists_a_route_before_its_endpoint_reaches_the_task() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        api.add_task("t1", ssh_request("10.1.0.5"));
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let cfg = config(&api.url, state.path());
        let (mut e, status) = engine(&cfg, &tcp, &http);
        e.connect_at_start().await.unwrap();
        assert_eq!(e.cycle().await, CycleOutcome::Synced);
        assert_eq!(status.read().unwrap().clearml.tasks, 1);

        api.add_task(
            "h1",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.1.0.6", "_PORT": 7860}),
        );
        // What `status` showed at the moment each write-back carrying `endpoint` was stored.
        type Seen = (usize, Vec<(String, String, String)>);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (seen_in_hook, status_in_hook) = (seen.clone(), status.clone());
        api.state.lock().unwrap().after_edit = Some(Box::new(move |rt| {
            if rt.contains_key("endpoint") {
                let s = status_in_hook.read().unwrap();
                let rows = s
                    .routes
                    .iter()
                    .map(|r| (r.task_id.clone(), r.kind.clone(), r.state.clone()))
                    .collect();
                seen_in_hook.lock().unwrap().push((s.clearml.tasks, rows));
            }
        }));
        assert_eq!(e.cycle().await, CycleOutcome::Synced);
        assert_eq!(
            api.task("h1")["runtime"]["endpoint"],
            json!("https://router.example.com/service/h1/")
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "one write-back of h1: {seen:?}");
        let (tasks, rows) = &seen[0];
        assert_eq!(
            *tasks, 2,
            "both tasks counted when h1's endpoint landed: {rows:?}"
        );
        assert!(
            rows.contains(&("h1".into(), "http".into(), "writing back".into())),
            "h1's route listed (being written back) when its endpoint landed: {rows:?}"
        );
        assert!(
            rows.contains(&("t1".into(), "tcp".into(), "active".into())),
            "{rows:?}"
        );
        // Once written, the end of the cycle shows it active.
        let s = status.read().unwrap();
        assert_eq!(s.clearml.tasks, 2);
        assert!(
            s.routes.iter().all(|r| r.state == "active"),
            "{:?}",
            s.routes
        );
    }

    #[tokio::test]
    async fn api_faults_change_nothing_that_forwards() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        api.add_task("t1", ssh_request("10.1.0.5"));
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let cfg = config(&api.url, state.path());
        let (mut e, status) = engine(&cfg, &tcp, &http);
        e.connect_at_start().await.unwrap();
        e.cycle().await;
        let before = tcp.programmed.lock().unwrap().clone();
        assert_eq!(before.len(), 1);
        let applies = *tcp.applies.lock().unwrap();

        for fault in [
            Fault::Status500,
            Fault::Garbage,
            Fault::Hang(Duration::from_secs(3)),
        ] {
            api.fault(fault.clone());
            assert_eq!(e.cycle().await, CycleOutcome::ApiFailed, "{fault:?}");
            assert_eq!(*tcp.programmed.lock().unwrap(), before, "{fault:?}");
            assert_eq!(*tcp.applies.lock().unwrap(), applies, "{fault:?}");
            let s = status.read().unwrap();
            assert_eq!(s.clearml.state, "error");
            assert!(s.ready, "still ready: forwarding continues");
            assert_eq!(s.routes.len(), 1);
        }
        // The task vanishes from the listing and the by-id confirmation fails: kept.
        let hidden = api.task("t1");
        api.state.lock().unwrap().tasks.retain(|t| t["id"] != "t1");
        api.fault(Fault::Pass);
        api.fault(Fault::Status500);
        assert_eq!(e.cycle().await, CycleOutcome::ApiFailed);
        assert_eq!(*tcp.programmed.lock().unwrap(), before);
        // An expired token is refreshed within the cycle; the confirmation now says the task
        // is gone, so its route goes.
        api.fault(Fault::Expired);
        assert_eq!(e.cycle().await, CycleOutcome::Synced);
        assert_eq!(*tcp.programmed.lock().unwrap(), before, "held: one answer");
        assert_eq!(e.cycle().await, CycleOutcome::Synced);
        assert!(tcp.programmed.lock().unwrap().is_empty());
        // Back: routed again, on its old port (it is written on the task).
        api.state.lock().unwrap().tasks.push(hidden);
        assert_eq!(e.cycle().await, CycleOutcome::Synced);
        assert_eq!(*tcp.programmed.lock().unwrap(), before);
        assert_eq!(status.read().unwrap().clearml.state, "ok");
    }

    #[tokio::test]
    async fn routes_not_programmed_are_not_written_back() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        api.add_task("t1", ssh_request("10.1.0.5"));
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        *tcp.fail.lock().unwrap() = Some("map full".into());
        let cfg = config(&api.url, state.path());
        let (mut e, status) = engine(&cfg, &tcp, &http);
        e.cycle().await;
        assert_eq!(api.calls("tasks.edit"), 0);
        assert_eq!(
            api.task("t1")["runtime"]["external_address"],
            json!("10.1.0.5")
        );
        assert!(status.read().unwrap().routes[0].state.contains("map full"));
        // Fixed: programmed on the next cycle (the failed apply is retried), then written.
        *tcp.fail.lock().unwrap() = None;
        e.cycle().await;
        assert_eq!(api.task("t1")["runtime"]["external_tcp_port"], json!(31000));
    }

    #[tokio::test]
    async fn a_restart_keeps_ports_and_forwards_while_the_api_is_down() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        for i in 0..3 {
            api.add_task(&format!("t{i}"), ssh_request(&format!("10.1.0.{}", 10 + i)));
        }
        let cfg = config(&api.url, state.path());
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let (mut e, _) = engine(&cfg, &tcp, &http);
        e.cycle().await;
        let before = tcp.programmed.lock().unwrap().clone();
        assert_eq!(before.len(), 3);
        drop(e);

        // Restart against an unreachable API: the last routes are applied at once.
        let down = config("http://127.0.0.1:1", state.path());
        let (tcp2, http2) = (Recorder::default(), HttpRecorder::default());
        let (mut e, status) = engine(&down, &tcp2, &http2);
        e.connect_at_start().await.unwrap();
        assert_eq!(e.cycle().await, CycleOutcome::ApiFailed);
        assert_eq!(*tcp2.programmed.lock().unwrap(), before);
        assert!(!status.read().unwrap().ready);
        assert!(
            status
                .read()
                .unwrap()
                .ready_reason
                .contains("first ClearML sync")
        );
        drop(e);

        // Restart with the API up and the local state lost: the ports written on the tasks win.
        std::fs::remove_file(state.path().join("ports.json")).unwrap();
        let (tcp3, http3) = (Recorder::default(), HttpRecorder::default());
        let (mut e, _) = engine(&cfg, &tcp3, &http3);
        e.cycle().await;
        assert_eq!(*tcp3.programmed.lock().unwrap(), before);
    }

    #[tokio::test]
    async fn unknown_queue_and_bad_credentials_stop_the_start() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        let mut cfg = config(&api.url, state.path());
        cfg.clearml.listen_queues = vec!["gpu".into()];
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let (mut e, _) = engine(&cfg, &tcp, &http);
        let err = format!("{:#}", e.connect_at_start().await.unwrap_err());
        assert!(err.contains("queue \"gpu\""), "{err}");
        api.state.lock().unwrap().queues = vec![("qid".into(), "gpu".into())];
        let (mut e, _) = engine(&cfg, &tcp, &http);
        e.connect_at_start().await.unwrap();
        assert_eq!(e.settings.queue_ids, ["qid"]);
        cfg.clearml.secret_key = "wrong".into();
        let (mut e, _) = engine(&cfg, &tcp, &http);
        let err = format!("{:#}", e.connect_at_start().await.unwrap_err());
        assert!(err.contains("credentials refused"), "{err}");
    }

    fn ids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_mass_removal_guard_wants_two_agreeing_answers() {
        let mut g = MassRemovalGuard::default();
        let routed = ids(&["a", "b", "c", "d"]);
        // One of four going: believed at once.
        assert_eq!(
            g.check(&routed, &["a", "b", "c"].into()),
            GuardVerdict::Proceed
        );
        // Every task missing: held, then believed when the next answer agrees.
        assert_eq!(
            g.check(&routed, &HashSet::new()),
            GuardVerdict::Hold { gone: 4, routed: 4 }
        );
        assert_eq!(g.held(), 4);
        assert_eq!(g.check(&routed, &HashSet::new()), GuardVerdict::Proceed);
        assert_eq!(g.held(), 0);
        // Half going, then the answer recovers: nothing goes, the pending drop is forgotten.
        assert_eq!(
            g.check(&routed, &["a", "b"].into()),
            GuardVerdict::Hold { gone: 2, routed: 4 }
        );
        assert_eq!(
            g.check(&routed, &["a", "b", "c", "d"].into()),
            GuardVerdict::Proceed
        );
        assert_eq!(g.held(), 0);
        assert_eq!(
            g.check(&routed, &["a", "b"].into()),
            GuardVerdict::Hold { gone: 2, routed: 4 }
        );
        // A second answer dropping others than the first: held again, on the new set.
        assert_eq!(
            g.check(&routed, &["c", "d"].into()),
            GuardVerdict::Hold { gone: 2, routed: 4 }
        );
        // A subset of what was held: believed.
        assert_eq!(
            g.check(&routed, &["a", "c", "d"].into()),
            GuardVerdict::Proceed
        );
        assert_eq!(g.held_total, 4);
        // Nothing routed: nothing to guard.
        assert_eq!(
            g.check(&HashSet::new(), &HashSet::new()),
            GuardVerdict::Proceed
        );
    }

    #[tokio::test]
    async fn an_answer_that_drops_every_task_is_held_until_confirmed() {
        let api = MockServer::start().await;
        let state = tempfile::tempdir().unwrap();
        for i in 0..4 {
            api.add_task(&format!("t{i}"), ssh_request(&format!("10.1.0.{}", 10 + i)));
        }
        let (tcp, http) = (Recorder::default(), HttpRecorder::default());
        let cfg = config(&api.url, state.path());
        let (mut e, status) = engine(&cfg, &tcp, &http);
        e.connect_at_start().await.unwrap();
        e.cycle().await;
        let before = tcp.programmed.lock().unwrap().clone();
        assert_eq!(before.len(), 4);

        // The server loses every task (an empty database behind it): the listing and the
        // by-id confirmation both say so. One answer: held, and every surface says why.
        let saved = std::mem::take(&mut api.state.lock().unwrap().tasks);
        assert_eq!(e.cycle().await, CycleOutcome::Synced);
        assert_eq!(*tcp.programmed.lock().unwrap(), before);
        {
            let s = status.read().unwrap();
            assert!(s.ready);
            assert_eq!(s.clearml.held_removals, 4);
            assert_eq!(s.clearml.held_cycles, 1);
            assert!(
                s.degraded
                    .iter()
                    .any(|d| d.contains("drops 4 routed tasks")),
                "{:?}",
                s.degraded
            );
        }
        // The tasks come back: nothing was lost, nothing rewritten.
        api.state.lock().unwrap().tasks = saved.clone();
        let edits = api.calls("tasks.edit");
        e.cycle().await;
        assert_eq!(*tcp.programmed.lock().unwrap(), before);
        assert_eq!(api.calls("tasks.edit"), edits);
        assert_eq!(status.read().unwrap().clearml.held_removals, 0);
        assert!(status.read().unwrap().degraded.is_empty());

        // Gone for real: two agreeing answers remove every route.
        api.state.lock().unwrap().tasks.clear();
        e.cycle().await;
        assert_eq!(*tcp.programmed.lock().unwrap(), before);
        e.cycle().await;
        assert!(tcp.programmed.lock().unwrap().is_empty());
        assert_eq!(status.read().unwrap().clearml.held_cycles, 2);
    }
}
