//! The HTTP client of the ClearML API: one connection (base URL, credentials, token) and
//! authenticated calls, each answer read through the response envelope. The calls the router
//! makes are beside it: `tasks` (list, look up, edit), `runtime_edit` (the atomic per-key call
//! of newer servers), `write` (writing runtime keys back: atomically where the server can,
//! read-merge-write otherwise), `queues` (names to ids).

mod auth;
mod envelope;
mod queues;
mod runtime_capability;
mod runtime_edit;
mod stats;
mod tasks;
mod tls;
mod write;

pub use queues::regex_escape;
pub use runtime_capability::{EDIT_RUNTIME_SINCE, written_as_is};
pub use stats::{ApiCallStats, ApiStats, LATENCY_BUCKETS};
pub use tls::ca_bundle;
pub use write::{SETTLE, SETTLE_ROUNDS, WRITE_ATTEMPTS, WriteOutcome};

use super::error::ApiError;
use crate::config::ClearmlConfig;
use auth::{Token, TokenSlot};
use envelope::parse_envelope;
use runtime_capability::RuntimeEdits;
use serde_json::{Map, Value, json};
use stats::status_label;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// The API version put in request paths (`/v2.31/tasks.get_all`). Servers resolve the highest
/// endpoint version at or below it, and accept higher versions unless configured not to.
pub const API_VERSION: &str = "2.31";
/// The server clamps pages to 500 without saying so; never ask for more.
pub const MAX_PAGE_SIZE: usize = 500;

/// A connection to one ClearML API server, shared by the calls (one token for all).
pub struct Client {
    http: reqwest::Client,
    base: String,
    access_key: String,
    secret_key: String,
    timeout: Duration,
    page_size: usize,
    token: TokenSlot,
    /// Whether the server has `tasks.edit_runtime`, learnt at each login.
    runtime_edits: RuntimeEdits,
    pub stats: ApiStats,
}

impl Client {
    /// A client for `cfg.api_host` (which must be set), trusting the system store, the
    /// built-in roots and the CA bundles `cfg` names (a missing or bad one is an error).
    pub fn new(cfg: &ClearmlConfig) -> Result<Client, ApiError> {
        let base = cfg.api_host.clone().unwrap_or_default();
        let builder = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("task-router/", env!("CARGO_PKG_VERSION")));
        let http = tls::trust(builder, cfg)?
            .build()
            .map_err(ApiError::ClientSetup)?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            access_key: cfg.access_key.clone(),
            secret_key: cfg.secret_key.clone(),
            timeout: cfg.request_timeout,
            page_size: MAX_PAGE_SIZE,
            token: TokenSlot::default(),
            runtime_edits: RuntimeEdits::default(),
            stats: ApiStats::default(),
        })
    }

    /// Uses pages of `size` (≤ 500) instead of 500; for tests and benchmarks.
    pub fn with_page_size(mut self, size: usize) -> Client {
        self.page_size = size.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// Logs in with the access/secret key (HTTP Basic) and keeps the token.
    pub async fn login(&self) -> Result<(), ApiError> {
        self.token.renew(self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<Token, ApiError> {
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let data = self.send("auth.login", &json!({}), Auth::Basic).await?;
        let token = Token::from_login(&data, SystemTime::now())?;
        self.runtime_edits.learn(token.api_version);
        Ok(token)
    }

    /// One authenticated call; on a 401 the token is refreshed once and the call retried.
    pub async fn call(&self, endpoint: &str, body: &Value) -> Result<Map<String, Value>, ApiError> {
        let jwt = self.token.bearer(self.fetch_token()).await?;
        match self.send(endpoint, body, Auth::Bearer(&jwt)).await {
            Err(ApiError::Unauthorized { .. }) => {
                tracing::debug!(endpoint, "401: refreshing the token once");
                self.token.invalidate(&jwt).await;
                let jwt = self.token.bearer(self.fetch_token()).await?;
                self.send(endpoint, body, Auth::Bearer(&jwt)).await
            }
            other => other,
        }
    }

    async fn send(
        &self,
        endpoint: &str,
        body: &Value,
        auth: Auth<'_>,
    ) -> Result<Map<String, Value>, ApiError> {
        let started = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.send_inner(endpoint, body, auth).await;
        let took = started.elapsed();
        self.stats
            .last_latency_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.stats
            .observe(endpoint, status_label(&result), took.as_secs_f64());
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn send_inner(
        &self,
        endpoint: &str,
        body: &Value,
        auth: Auth<'_>,
    ) -> Result<Map<String, Value>, ApiError> {
        let url = format!("{}/v{API_VERSION}/{endpoint}", self.base);
        let request = self.http.post(&url).json(body).header(
            "X-ClearML-Client",
            concat!("task-router-", env!("CARGO_PKG_VERSION")),
        );
        let request = match auth {
            Auth::Basic => request.basic_auth(&self.access_key, Some(&self.secret_key)),
            Auth::Bearer(jwt) => request.bearer_auth(jwt),
        };
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                ApiError::Timeout {
                    call: endpoint.to_string(),
                    timeout: self.timeout,
                }
            } else {
                ApiError::Transport {
                    call: endpoint.to_string(),
                    source: e,
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        parse_envelope(endpoint, status, &bytes)
    }
}

/// How a call authenticates: the key pair (to log in) or the token.
enum Auth<'a> {
    Basic,
    Bearer(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearml::mock::{Fault, MockServer, client_config as config};

    #[tokio::test]
    async fn an_expired_token_is_refreshed_once() {
        let server = MockServer::start().await;
        server.add_task("a", json!({}));
        let client = Client::new(&config(&server.url)).unwrap();
        client.login().await.unwrap();
        server.fault(Fault::Expired);
        assert!(client.get_task("a").await.unwrap().is_some());
        assert_eq!(server.calls("auth.login"), 2);
        // Refused twice in a row: the error comes out after one retry, no loop.
        server.fault(Fault::Expired);
        server.fault(Fault::Expired);
        let e = client.get_task("a").await.unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized { .. }), "{e}");
        assert_eq!(server.calls("auth.login"), 3);
    }

    #[tokio::test]
    async fn faults_are_typed() {
        let server = MockServer::start().await;
        let client = Client::new(&config(&server.url)).unwrap();
        server.fault(Fault::Status500);
        let e = client
            .tasks_requesting_endpoints(&[], &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::Server {
                    status: 500,
                    code: 500,
                    subcode: 102,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_transient());
        server.fault(Fault::Garbage);
        let e = client
            .tasks_requesting_endpoints(&[], &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Malformed { .. }), "{e}");
        server.fault(Fault::Hang(Duration::from_secs(3)));
        let e = client
            .tasks_requesting_endpoints(&[], &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("tasks.get_all"), "{e}");
        assert!(client.get_task("nope").await.unwrap().is_none());
        let down = Client::new(&config("http://127.0.0.1:1")).unwrap();
        let e = down.login().await.unwrap_err();
        assert!(
            matches!(e, ApiError::Transport { .. }) && e.is_transient(),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refused_requests_are_not_transient() {
        let server = MockServer::start().await;
        let client = Client::new(&config(&server.url)).unwrap();
        let e = client.call("no.such", &json!({})).await.unwrap_err();
        assert!(matches!(e, ApiError::Server { status: 404, .. }), "{e}");
        assert!(!e.is_transient(), "{e}");
    }
}

#[cfg(test)]
mod fuzz;
