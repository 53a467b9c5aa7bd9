//! The server's thread: a tokio runtime serving the API and the admin side on one listener,
//! over plain HTTP or TLS, until told to stop.

use super::Shared;
use super::tls::TlsListener;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A serving thread; the sender stops it (the listener closes, connections are dropped).
pub struct Serving {
    pub shutdown: tokio::sync::oneshot::Sender<()>,
    pub thread: std::thread::JoinHandle<()>,
}

enum Listening {
    Plain(tokio::net::TcpListener),
    Tls(TlsListener),
}

/// Serves on `listener` (TLS with `tls`) from a thread of its own; returns once it accepts.
pub fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Serving> {
    listener
        .set_nonblocking(true)
        .context("set the listener non-blocking")?;
    let app = axum::Router::new()
        .nest("/_admin", super::admin_http::router())
        .fallback(super::http::api)
        .with_state(shared);
    let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let thread = std::thread::Builder::new()
        .name("clearml-test-server".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e).context("tokio runtime"));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e).context("tokio listener"));
                        return;
                    }
                };
                let listener = match tls {
                    None => Listening::Plain(listener),
                    Some(config) => match TlsListener::new(listener, config) {
                        Ok(l) => Listening::Tls(l),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    },
                };
                let _ = ready_tx.send(Ok(()));
                // Not a graceful shutdown: a dead server does not finish its answers, and
                // dropping the runtime below closes every connection it held.
                let served = async move {
                    match listener {
                        Listening::Plain(l) => axum::serve(l, app).await,
                        Listening::Tls(l) => axum::serve(l, app).await,
                    }
                };
                tokio::select! {
                    served = served => {
                        if let Err(e) = served {
                            eprintln!("clearml test server: {e}");
                        }
                    }
                    _ = rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .context("spawn the server thread")?;
    ready_rx
        .recv()
        .context("the server thread died before it was ready")??;
    Ok(Serving { shutdown, thread })
}
