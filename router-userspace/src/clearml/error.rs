//! Typed API errors, each naming the call that failed.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("building the HTTP client for the ClearML API failed")]
    ClientSetup(#[source] reqwest::Error),
    #[error("{var}={}: the CA bundle {reason}", path.display())]
    CaBundle {
        var: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{call}: cannot reach the ClearML API server")]
    Transport {
        call: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{call}: no answer from the ClearML API server within {timeout:?}")]
    Timeout { call: String, timeout: Duration },
    #[error("{call}: credentials refused (HTTP {status}, {code}/{subcode}: {message})")]
    Unauthorized {
        call: String,
        status: u16,
        code: i64,
        subcode: i64,
        message: String,
    },
    #[error("{call}: the ClearML API server answered HTTP {status} ({code}/{subcode}: {message})")]
    Server {
        call: String,
        status: u16,
        code: i64,
        subcode: i64,
        message: String,
    },
    #[error("{call}: malformed answer from the ClearML API server: {reason}")]
    Malformed { call: String, reason: String },
    #[error("queue {name:?} (LISTEN_QUEUE_NAME) does not exist on the ClearML server")]
    UnknownQueue { name: String },
}

impl ApiError {
    /// Whether retrying later may help (server down, slow, overloaded or answering garbage),
    /// as opposed to an answer that will not change by itself (bad credentials, unknown queue,
    /// a request the server refuses).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::Timeout { .. } | ApiError::Malformed { .. } => {
                true
            }
            ApiError::Server { status, .. } => *status >= 500 || *status == 429 || *status == 409,
            ApiError::ClientSetup(_)
            | ApiError::CaBundle { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::UnknownQueue { .. } => false,
        }
    }

    /// A short class for "log once per state change": two errors of the same class are the
    /// same state.
    pub fn class(&self) -> String {
        match self {
            ApiError::ClientSetup(_) | ApiError::CaBundle { .. } => "client setup".into(),
            ApiError::Transport { .. } => "unreachable".into(),
            ApiError::Timeout { .. } => "timeout".into(),
            ApiError::Unauthorized { .. } => "unauthorized".into(),
            ApiError::Server { status, .. } => format!("HTTP {status}"),
            ApiError::Malformed { .. } => "malformed answer".into(),
            ApiError::UnknownQueue { .. } => "unknown queue".into(),
        }
    }

    /// The ClearML result code and subcode, when the server sent an error envelope.
    pub fn codes(&self) -> Option<(i64, i64)> {
        match self {
            ApiError::Unauthorized { code, subcode, .. }
            | ApiError::Server { code, subcode, .. } => Some((*code, *subcode)),
            _ => None,
        }
    }
}
