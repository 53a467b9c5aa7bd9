//! The eBPF datapath as the daemon's [`TcpForwarder`] (`ROUTER_DATAPATH=auto|xdp|tc`): checks
//! what each interface can do in its mode (refusing what cannot work before anything is
//! attached), loads and attaches the kernel programs (adopting an earlier daemon's pins) and
//! runs the conntrack sweeper beside them.

use crate::admin::DatapathStatus;
use crate::config::{Config, DatapathKind};
use crate::datapath::{Attached, Datapath, SharedDatapath, capability, sweeper::Sweeper};
use crate::routes::{ApplyReport, RouteCounters, ServeCheck, TcpForwarder, TcpRoute};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Context marking an error as "the kernel cannot take the programs" (fallback allowed).
const CANNOT_LOAD: &str = "the kernel cannot load the task-router programs";

/// Whether `e` (from [`open`]) says the kernel cannot take the programs, the one failure that
/// justifies the nginx fallback.
pub(super) fn cannot_load(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == CANNOT_LOAD)
}

/// What [`open`] opened.
pub(super) struct KernelParts {
    pub tcp: Box<dyn TcpForwarder>,
    pub status: DatapathStatus,
    /// For `/metrics` and `uninstall`.
    pub datapath: Arc<Mutex<Datapath>>,
}

/// The eBPF datapath with its conntrack sweeper.
/// Its maps and links are pinned: dropping it leaves forwarding in place (hitless restart)
/// unless `detach_on_exit`.
struct KernelForwarder {
    datapath: SharedDatapath,
    /// Each attached interface with its index at attach time (a deleted and recreated
    /// interface has another one, and none of the programs).
    attached: Vec<(Attached, u32)>,
    _sweeper: Sweeper,
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

    /// Every route goes through the attached interfaces: one gone or down serves none.
    fn check_serving(&self) -> ServeCheck {
        ServeCheck {
            all: capability::undeliverable(&self.attached),
            ..ServeCheck::default()
        }
    }
}

/// Logs what the datapath took over from an earlier daemon's pins.
fn log_adoption(dp: &Datapath) {
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

/// Loads and attaches the kernel programs for `cfg.datapath`.
pub(super) fn open(cfg: &Config) -> Result<KernelParts> {
    if cfg.datapath.interfaces.is_empty() {
        bail!(
            "ROUTER_INTERFACES (or --interface) is empty: the eBPF datapath needs at least one \
             interface to attach to"
        );
    }
    let checked = check_modes(cfg)?;
    let mut dp = Datapath::open_pinned(&cfg.datapath).map_err(|e| {
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
    if !checked.xdp_redirects {
        dp.keep_xdp_from_redirecting()
            .map_err(|e| anyhow!(crate::error::error_chain(&e)))
            .context("handing XDP's packets to TC")?;
    }
    log_adoption(&dp);
    let kernel_log = dp.spawn_kernel_log();
    let mut status = DatapathStatus {
        kind: cfg.datapath.kind.to_string(),
        interfaces: Vec::new(),
        degraded: checked.degraded,
    };
    let mut attached = Vec::new();
    for a in dp.attached() {
        tracing::info!(interface = %a.interface, mode = %a.mode, "attached");
        status
            .interfaces
            .push(format!("{} {}", a.interface, a.mode));
        let index = crate::datapath::attach::ifindex(&a.interface)
            .map_err(|e| anyhow!(crate::error::error_chain(&e)))?;
        attached.push((a.clone(), index));
    }
    tracing::info!(
        interfaces = dp.peer_devs().len(),
        "TC hands packets straight to the peer of interfaces whose peer is in another namespace \
         (container links; refreshed every sweep)"
    );
    let datapath = SharedDatapath::new(dp);
    let sweeper = Sweeper::spawn(
        datapath.clone(),
        crate::datapath::sweeper::DEFAULT_INTERVAL,
        |_| {},
    )
    .context("starting the conntrack sweeper")?;
    Ok(KernelParts {
        tcp: Box::new(KernelForwarder {
            datapath: datapath.clone(),
            attached,
            _sweeper: sweeper,
            _kernel_log: kernel_log,
            detach_on_exit: cfg.detach_on_exit,
        }),
        status,
        datapath: datapath.0,
    })
}

/// What each configured interface can do in its mode, asked before anything is attached: an
/// impossible combination stops the start ([`capability::ModeRefused`], exit 2); the degraded
/// ones are returned for the status and `/metrics`.
fn check_modes(cfg: &Config) -> Result<capability::Checked> {
    let DatapathKind::Ebpf(default_mode) = cfg.datapath.kind else {
        return Ok(capability::Checked::nothing_found());
    };
    let wanted: Vec<(&str, crate::datapath::AttachMode)> = cfg
        .datapath
        .interfaces
        .iter()
        .map(|(name, mode)| (name.as_str(), mode.unwrap_or(default_mode)))
        .collect();
    Ok(capability::check(&wanted)?)
}

/// Whether an earlier daemon's datapath is pinned (and so forwarding) under `ROUTER_BPFFS`.
pub(super) fn pinned_datapath_exists(cfg: &Config) -> bool {
    cfg.datapath
        .bpffs
        .join(crate::datapath::pins::layout_dir_name(
            router_common::LAYOUT_VERSION,
        ))
        .exists()
}
