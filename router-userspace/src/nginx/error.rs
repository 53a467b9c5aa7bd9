//! What can go wrong driving nginx.

use std::path::{Path, PathBuf};

use super::command::CommandError;
use super::names::NameError;

/// A failed step of driving nginx, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "nginx rejected the generated {slot} configuration (the previous one stays live): {error}"
    )]
    Rejected { slot: &'static str, error: String },
    #[error("the {slot} configuration passed the test but reloading nginx failed: {error}")]
    Reload { slot: &'static str, error: String },
    #[error("starting nginx failed: {0}")]
    Start(String),
    #[error("nginx master {pid} did not take the new configuration: {reason}")]
    ReloadNotTaken { pid: u32, reason: String },
    #[error("{0} has no stream module (Debian: libnginx-mod-stream)")]
    NoStream(String),
    #[error("nginx configuration value")]
    Name(#[from] NameError),
    #[error("running an nginx command")]
    Command(#[from] CommandError),
}

/// The error of file operation `op` on `path`.
pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NginxError {
    let path = path.to_path_buf();
    move |source| NginxError::Io { op, path, source }
}
