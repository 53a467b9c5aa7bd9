//! What `ROUTER_STATE_DIR` keeps between runs: the port allocator (`ports.json`) and the last
//! good ClearML route set (`routes.json`), what forwards while the API is unreachable after a
//! restart.

use crate::config::Config;
use crate::ports::PortAllocator;
use crate::routes::{HttpRoute, RouteSet, TcpRoute};
use crate::validate::{self, UpstreamPolicy};
use anyhow::{Context, Result, anyhow};
use std::path::{Path, PathBuf};

/// The persisted ClearML route set.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct PersistedRoutes {
    tcp: Vec<TcpRoute>,
    http: Vec<HttpRoute>,
}

/// What a start finds of the previous run.
pub(super) struct Restored {
    pub ports: PortAllocator,
    /// The ClearML routes of the previous run, forwarding until the first sync.
    pub routes: RouteSet,
    /// Where the ClearML route set is saved (`None` without ClearML: nothing to keep).
    pub routes_path: Option<PathBuf>,
}

/// Opens the state of `cfg` (an in-memory allocator and nothing else without ClearML).
pub(super) fn restore(cfg: &Config, policy: &UpstreamPolicy) -> Result<Restored> {
    if !cfg.clearml_enabled() {
        return Ok(Restored {
            ports: PortAllocator::in_memory(
                cfg.tcp.port_start,
                cfg.tcp.port_end,
                cfg.tcp.port_grace,
            ),
            routes: RouteSet::default(),
            routes_path: None,
        });
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create ROUTER_STATE_DIR={}", cfg.state_dir.display()))?;
    let ports = open_ports(cfg, &cfg.state_dir.join("ports.json"))?;
    let routes_path = cfg.state_dir.join("routes.json");
    let routes = load_routes(&routes_path, policy);
    if !routes.tcp.is_empty() || !routes.http.is_empty() {
        tracing::info!(
            tcp = routes.tcp.len(),
            http = routes.http.len(),
            "routes of the previous run kept until the first ClearML sync"
        );
    }
    Ok(Restored {
        ports,
        routes,
        routes_path: Some(routes_path),
    })
}

/// Saves the port allocator and, when given, `routes` to `routes_path`; what failed, if
/// anything.
pub(super) fn save(
    ports: &mut PortAllocator,
    routes_path: Option<&Path>,
    routes: Option<&RouteSet>,
) -> Option<String> {
    let mut errors = Vec::new();
    if let Err(e) = ports.save() {
        errors.push(format!("port state: {}", crate::error::error_chain(&e)));
    }
    if let (Some(path), Some(routes)) = (routes_path, routes)
        && let Err(e) = save_routes(path, routes)
    {
        errors.push(format!("route state {}: {e}", path.display()));
    }
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Written whole to a temporary file, synced and renamed over the old one: a full or read-only
/// disk leaves the previous file intact, never a torn one. An unchanged set is not rewritten.
fn save_routes(path: &Path, routes: &RouteSet) -> std::io::Result<()> {
    let persisted = PersistedRoutes {
        tcp: routes.tcp.values().cloned().collect(),
        http: routes.http.values().cloned().collect(),
    };
    let data = serde_json::to_vec(&persisted).map_err(std::io::Error::other)?;
    let unchanged = std::fs::read(path).is_ok_and(|old| old == data);
    if unchanged {
        Ok(())
    } else {
        crate::fsutil::write_atomic(path, &data)
    }
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

/// The routes saved at `path` whose upstreams `policy` still allows (none if the file is
/// missing or unreadable).
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
