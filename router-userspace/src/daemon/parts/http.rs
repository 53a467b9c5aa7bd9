//! The daemon's [`HttpRouter`]: nginx, opened on the first non-empty route set so a TCP-only
//! router never touches an nginx it has no business with.

use crate::config::Config;
use crate::nginx::{Nginx, NginxHttpRouter};
use crate::routes::{ApplyReport, HttpRoute, HttpRouter};
use anyhow::{Context, Result, anyhow};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The nginx HTTP router, opened on first use.
struct LazyHttpRouter {
    cfg: Config,
    admin_addr: SocketAddr,
    nginx: Option<Nginx>,
    router: Option<NginxHttpRouter>,
    /// Where `/metrics` finds nginx once it is opened.
    opened: Arc<OnceLock<Nginx>>,
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
                    let n = Nginx::from_config(&self.cfg.nginx)
                        .context("starting nginx for HTTP routes")?;
                    self.nginx = Some(n.clone());
                    let _ = self.opened.set(n.clone());
                    n
                }
            };
            self.router = Some(NginxHttpRouter::new(
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
    nginx: Option<Nginx>,
    admin_addr: SocketAddr,
    opened: Arc<OnceLock<Nginx>>,
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
