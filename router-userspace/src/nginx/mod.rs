//! HTTP routes through nginx, and the nginx fallback for TCP routes.
//!
//! The daemon never proxies HTTP itself: it generates nginx configuration ([`http`] for HTTP
//! routes, [`stream`] for TCP routes on the fallback datapath) and installs it safely
//! ([`install`]: tested before it is renamed into place, reloaded only on change, a rejected
//! candidate never installed). Everything a task controls is validated ([`names`]) and never
//! quoted into the text.
//!
//! Files in `NGINX_CONF_DIR`: `task-router-http.conf` (for an `http {}` context; a packaged
//! nginx's `include conf.d/*.conf;` picks it up) and `task-router-stream.inc` (for a `stream {}`
//! context: an existing nginx needs `stream { include <NGINX_CONF_DIR>/task-router-stream.inc; }`
//! at the top level of its nginx.conf for the nginx TCP datapath). A managed nginx also keeps
//! its main file `task-router-nginx.main`, `nginx.pid`, `error.log` and `tmp/` there, so give it
//! a directory of its own (not a system nginx's conf.d).
//!
//! Wiring (daemon): one [`Nginx`] from [`Nginx::from_config`]; an [`NginxHttpRouter`] on it for
//! HTTP routes; on the nginx datapath an [`NginxStreamForwarder`] on the same handle; and
//! [`crate::auth::router`] merged into the admin server when authentication is on.

pub mod command;
mod diff;
mod error;
mod files;
pub mod http;
pub mod install;
pub mod managed;
pub mod names;
mod status;
pub mod stream;
mod uninstall;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;

use crate::config::{AuthConfig, HttpConfig, RouterConfig};
use crate::routes::{ApplyReport, HttpRoute, HttpRouter};

use diff::diff;
pub use error::NginxError;
pub use files::Slot;
pub use http::HttpSettings;
pub use install::{Installed, Nginx};
pub use status::{NginxStatus, Rejection};
pub use stream::NginxStreamForwarder;
pub use uninstall::uninstall;

/// HTTP routes as generated nginx configuration: the [`HttpRouter`] of the daemon.
pub struct NginxHttpRouter {
    nginx: Nginx,
    settings: HttpSettings,
    programmed: BTreeMap<String, HttpRoute>,
}

impl NginxHttpRouter {
    /// A router writing the HTTP slot of `nginx`. `admin_addr` is where the daemon serves
    /// [`crate::auth::router`] (nginx's `auth_request` goes there when `AUTH_ENABLED`).
    pub fn new(
        nginx: Nginx,
        http: &HttpConfig,
        auth: &AuthConfig,
        router: &RouterConfig,
        admin_addr: SocketAddr,
    ) -> anyhow::Result<NginxHttpRouter> {
        let settings = HttpSettings::from_config(http, auth, router, admin_addr)
            .context("HTTP routing settings (ROUTER__WEBSERVER__SERVER_PORT, ROUTER_DOMAIN, ROUTER_HTTP_MODE)")?;
        Ok(NginxHttpRouter::with_settings(nginx, settings))
    }

    /// A router with settings built by the caller (tests, benchmarks).
    pub fn with_settings(nginx: Nginx, settings: HttpSettings) -> NginxHttpRouter {
        NginxHttpRouter {
            nginx,
            settings,
            programmed: BTreeMap::new(),
        }
    }

    /// The routes nginx serves now.
    pub fn programmed(&self) -> &BTreeMap<String, HttpRoute> {
        &self.programmed
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The nginx this router writes to (status for health).
    pub fn nginx(&self) -> &Nginx {
        &self.nginx
    }
}

impl HttpRouter for NginxHttpRouter {
    fn apply(&mut self, wanted: &BTreeMap<String, HttpRoute>) -> anyhow::Result<ApplyReport> {
        let rendered = http::render(&self.settings, wanted);
        for (key, reason) in &rendered.failed {
            tracing::warn!(route = %key, reason = %reason, "HTTP route left out of the nginx configuration");
        }
        self.nginx
            .install(Slot::Http, &rendered.text)
            .context("installing the nginx HTTP configuration (the previous one stays live)")?;
        // Only what reaches nginx counts as a change (not the task's name, say).
        let report = diff(
            &self.programmed,
            &rendered.accepted,
            rendered.failed,
            |a, b| a.upstream == b.upstream && a.mode == b.mode,
        );
        self.programmed = rendered.accepted;
        Ok(report)
    }
}
