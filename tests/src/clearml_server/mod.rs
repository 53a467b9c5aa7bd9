//! A ClearML API server for tests: the part of the REST API that routers and the `clearml` SDK
//! use, faithful to the real server (`allegroai/clearml-server`, contract in
//! `shared/clearml-api.md`), with in-memory state and an admin side to set up tasks and
//! inject faults.
//!
//! # The API (what clients see)
//! - `/v<X.Y>/<service>.<action>` or `/<service>.<action>`, any HTTP method; the data is the JSON
//!   body, or the query string when the body is empty (`application/json-lines` = a batch).
//! - Envelope `{"meta": {id, trx, endpoint{name, requested_version, actual_version},
//!   result_code, result_subcode, result_msg, error_stack, error_data}, "data": {...}}`, HTTP
//!   status = `result_code`.
//! - Errors as the real server: 400/0 invalid request path (malformed path), 404/0 unknown
//!   endpoint name or version, 400/2 bad version, 400/11 missing required fields, 400/12
//!   validation, 400/101 invalid task id, 400/110 invalid task status, 400/701 invalid queue id,
//!   401/10 bad auth type, 401/20 no credentials, 401/21 malformed credentials, 401/22 invalid
//!   credentials (unknown key pair), 401/30 invalid or expired token.
//! - `auth.login` with HTTP Basic `access_key:secret_key` returns `{"token": JWT}` signed as the
//!   real server signs (PyJWT HS256, the bytes of `secure.auth.token_secret` as the key; the
//!   open-source default secret unless configured), with the real payload (`auth_type`,
//!   `identity{user, company, role, user_name, company_name}`, `iat`, `exp`, `env`,
//!   `session_id`, `api_version`, `server_version`, `server_build`, `feature_set` = `basic` as
//!   open source, `advanced` with [`ServerOptions::advanced`]) and sets the browser cookie
//!   (`clearml_token_basic` unless configured); other calls take `Authorization: Bearer`, the
//!   cookie, or Basic.
//! - Tasks belong to a company; a caller sees and edits only its own company's tasks.
//! - It poses as release 2.3.0 (API 2.34, with `tasks.edit_runtime`) unless told another
//!   ([`ServerRelease`]); plain HTTP unless [`ServerOptions::https`] (a CA made in the test,
//!   [`ClearmlServer::ca_pem`]).
//! - Services: see [`services::ENDPOINTS`].
//!
//! # Use from a test
//! ```no_run
//! use router_tests::clearml_server::{ClearmlServer, FaultKind, Identity, TaskSpec};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let server = ClearmlServer::start()?; // 127.0.0.1, ephemeral port, fresh key pair, OSS-like
//! let url = server.url(); // CLEARML_API_HOST
//! let keys = server.credentials(); // CLEARML_API_ACCESS_KEY / _SECRET_KEY
//! let admin = server.admin();
//! let gpu = admin.create_queue("gpu");
//! let id = admin.create_task(
//!     TaskSpec::new("app")
//!         .status("in_progress")
//!         .queue(&gpu)
//!         .system_tags(&["external_service"])
//!         .runtime(json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.5",
//!                         "external_tcp_port": 8888})),
//! );
//! admin.fail_next(3, Some("tasks.get_all")); // 500/0 on the next 3 get_all calls
//! admin.inject(FaultKind::Delay(Duration::from_secs(15)), 1, None); // a hanging call
//! admin.inject(FaultKind::Malformed, 1, None); // 200 with a body that is not JSON
//! admin.inject(FaultKind::Empty, 2, Some("tasks.get_all")); // "there are no tasks"
//! admin.expire_tokens(); // 401/30 until the client logs in again
//! let other = admin.issue_token_for(&Identity::in_company("c2"), Duration::from_secs(60));
//! admin.set_status(&id, "stopped");
//! let runtime = admin.runtime(&id); // what the router wrote back
//! let polls = admin.calls("tasks.get_all");
//! # let _ = (url, keys, runtime, polls, other);
//! # Ok::<(), anyhow::Error>(())
//! ```
//! Inside a network namespace: bind the listener there (`netns.enter(|| TcpListener::bind(..))`)
//! and pass it as [`ServerOptions::listener`]. The real SDK as a task: [`sdk::SdkTask`]. A
//! task as the open-source Kubernetes glue leaves it: [`Admin::k8s_glue_schedules`].
//! `CLEARML_TEST_SERVER_TRACE=1` prints every call with its body on stderr.
//!
//! # The admin side
//! In-process tests use [`Admin`] (from [`ClearmlServer::admin`]). Out of process (the demo, a
//! server started with the `clearml-test-server` binary), the same under `/_admin/`, JSON in
//! and out, no authorization:
//!
//! | request | does |
//! |---|---|
//! | `POST /_admin/tasks` [`TaskSpec`] | creates a task, answers `{"id"}` |
//! | `GET /_admin/tasks/<id>` | the task's raw document (404 if none) |
//! | `PATCH /_admin/tasks/<id>` `{"path.to.field": value, ...}` | sets fields as they are |
//! | `POST /_admin/tasks/<id>/status` `{"status"}` | changes the status |
//! | `DELETE /_admin/tasks/<id>` | deletes the task |
//! | `POST /_admin/queues` `{"name"}` | creates a queue, answers `{"id"}` |
//! | `POST /_admin/faults` [`FaultSpec`] | the next `count` calls (to `endpoint`, if given) fail |
//! | `DELETE /_admin/faults` | clears waiting faults |
//! | `POST /_admin/tokens/expire` | every token issued so far is refused (401/30) from now |
//! | `GET /_admin/calls` | `{"tasks.get_all": 12, ...}` calls per endpoint |

mod admin;
mod admin_http;
pub mod auth;
pub mod client;
pub mod error;
mod http;
pub mod k8s_glue;
pub mod options;
pub mod query;
pub mod sdk;
mod serve;
pub mod services;
pub mod spec;
pub mod store;
pub mod tls;

pub use admin::Admin;
pub use auth::Identity;
pub use options::{
    COMPOSE_COOKIE, Credentials, DEFAULT_TOKEN_SECRET, FEATURE_SET_ADVANCED, FEATURE_SET_BASIC,
    HELM_COOKIE, HELM_DEFAULT_TOKEN_SECRET, ServerOptions, ServerRelease,
};
pub use spec::{FaultSpec, TaskSpec};
pub use store::FaultKind;

/// The cookie a docker-compose install sets (the default of [`ServerOptions::cookie_name`]).
pub const AUTH_COOKIE: &str = COMPOSE_COOKIE;

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use store::State;
use tokio_rustls::rustls;

/// State shared by the HTTP handlers and the admin handle.
pub struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler must not take the fixture down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running server; stops (and frees its port) on drop.
pub struct ClearmlServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    credentials: Credentials,
    serving: Option<serve::Serving>,
    /// The CA and certificate of an HTTPS server (kept for its files and for [`Self::come_back`]).
    tls: Option<(tls::TestCa, Arc<rustls::ServerConfig>)>,
}

impl ClearmlServer {
    /// Starts a server on 127.0.0.1 with an ephemeral port and default options.
    pub fn start() -> Result<ClearmlServer> {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(opts: ServerOptions) -> Result<ClearmlServer> {
        let listener = match opts.listener {
            Some(l) => l,
            None => std::net::TcpListener::bind(opts.listen)
                .with_context(|| format!("cannot listen on {}", opts.listen))?,
        };
        let addr = listener.local_addr().context("listener address")?;
        let tls = match &opts.https {
            None => None,
            Some(extra) => {
                let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                if !addr.ip().is_unspecified() {
                    names.push(addr.ip().to_string());
                }
                names.extend(extra.iter().cloned());
                names.dedup();
                let ca = tls::TestCa::generate(&names)?;
                let config = ca.server_config()?;
                Some((ca, config))
            }
        };
        let identity = Identity {
            user: store::new_id(),
            // The open-source server's one company (`apiserver.default_company`, the Helm
            // chart's `clearml.defaultCompany`).
            company: "d1bd92a3b039400cbafc60a7a5b1e52b".into(),
            role: "admin".into(),
            user_name: "Test User".into(),
            company_name: "test-company".into(),
        };
        let mut state = State::new(
            vec![auth::Credential {
                access_key: opts.credentials.access_key.clone(),
                secret_key: opts.credentials.secret_key.clone(),
                identity,
            }],
            opts.token_secret,
            opts.feature_set,
            opts.token_lifetime.as_secs() as i64,
        );
        state.release = opts.release;
        state.cookie_name = opts.cookie_name;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        let serving = serve::serve(
            listener,
            Arc::clone(&shared),
            tls.as_ref().map(|(_, c)| Arc::clone(c)),
        )?;
        Ok(ClearmlServer {
            addr,
            shared,
            credentials: opts.credentials,
            serving: Some(serving),
            tls,
        })
    }

    /// The server goes away as if its process died: the listener closes (connecting is
    /// refused) and open connections are dropped. Its state is kept for [`Self::come_back`].
    pub fn go_down(&mut self) {
        if let Some(s) = self.serving.take() {
            let _ = s.shutdown.send(());
            let _ = s.thread.join();
        }
    }

    /// Answers again on the same address with the same state, from `listener` (bind it inside
    /// the namespace the server lived in) or a new one bound on the old address.
    pub fn come_back(&mut self, listener: Option<std::net::TcpListener>) -> Result<()> {
        self.go_down();
        let listener = match listener {
            Some(l) => l,
            None => std::net::TcpListener::bind(self.addr)
                .with_context(|| format!("cannot listen on {} again", self.addr))?,
        };
        let tls = self.tls.as_ref().map(|(_, c)| Arc::clone(c));
        self.serving = Some(serve::serve(listener, Arc::clone(&self.shared), tls)?);
        Ok(())
    }

    /// `http://ADDR:PORT` (`https://` in HTTPS mode), the value for `CLEARML_API_HOST`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }

    /// The CA bundle (PEM) that makes an HTTPS server's certificate trusted; `None` over HTTP.
    pub fn ca_pem(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|(ca, _)| ca.ca_pem())
    }

    pub fn admin(&self) -> Admin {
        Admin {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for ClearmlServer {
    fn drop(&mut self) {
        self.go_down();
    }
}
