//! Real HTTP servers for the HTTP-route tests, on a tokio runtime the fixture owns: a task's
//! app (echoes what it received as JSON, streams on demand, echoes WebSocket messages), and the
//! daemon's auth endpoint. Bound to loopback of whatever network namespace the creating thread
//! is in (build the [`Servers`] inside the test's namespace).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt;
use tokio::sync::Notify;

/// A tokio runtime serving test servers; they stop when it drops.
pub struct Servers {
    runtime: tokio::runtime::Runtime,
}

/// One echo backend.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddrV4,
    /// Releases the second half of a `/stream` response.
    pub release: Arc<Notify>,
}

#[derive(Clone)]
struct AppState {
    name: String,
    release: Arc<Notify>,
}

/// What the echo backend saw.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub backend: String,
    pub method: String,
    /// The request target exactly as received.
    pub uri: String,
    pub headers: BTreeMap<String, String>,
}

impl Servers {
    pub fn new() -> Result<Servers> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("test server runtime")?;
        Ok(Servers { runtime })
    }

    /// Serves `router` on 127.0.0.1 (ephemeral port).
    pub fn serve(&self, router: axum::Router) -> Result<SocketAddr> {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .context("bind a test server")?;
        let addr = listener.local_addr()?;
        self.runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(addr)
    }

    /// An app named `name`: `/ws` echoes WebSocket messages, `/stream` sends `first` then waits
    /// for [`Backend::release`] before `second`, `/bench` answers `ok` (the cheapest reply, for
    /// load tests), anything else answers an [`Echo`] as JSON.
    pub fn backend(&self, name: &str) -> Result<Backend> {
        let release = Arc::new(Notify::new());
        let state = AppState {
            name: name.to_string(),
            release: Arc::clone(&release),
        };
        let router = axum::Router::new()
            .route("/ws", get(ws))
            .route("/stream", get(stream))
            .route("/bench", get(|| async { "ok" }))
            .fallback(any(echo))
            .with_state(state);
        let addr = match self.serve(router)? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => anyhow::bail!("IPv6 test server address {a}"),
        };
        Ok(Backend { addr, release })
    }

    /// A plain TCP echo server (for stream routes).
    pub fn tcp_echo(&self) -> Result<SocketAddrV4> {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .context("bind the TCP echo server")?;
        let addr = match listener.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => anyhow::bail!("IPv6 test server address {a}"),
        };
        self.runtime.spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

async fn echo(State(state): State<AppState>, req: Request) -> Response {
    let mut headers = BTreeMap::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e: &mut String| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    axum::Json(serde_json::json!({
        "backend": state.name,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    }))
    .into_response()
}

async fn stream(State(state): State<AppState>) -> Response {
    let release = Arc::clone(&state.release);
    let body = futures_util::stream::once(async { Ok::<_, std::io::Error>("first\n".to_string()) })
        .chain(futures_util::stream::once(async move {
            release.notified().await;
            Ok("second\n".to_string())
        }));
    axum::body::Body::from_stream(body).into_response()
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.next().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}
