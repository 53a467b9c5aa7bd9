//! What health, `status` and `/metrics` show about nginx.

use std::time::{SystemTime, UNIX_EPOCH};

use super::files::Slot;

/// A candidate nginx refused, kept for health and `status` until a later one is installed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub slot: &'static str,
    pub error: String,
    pub at_unix: u64,
}

/// What health and `status` show about nginx.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NginxStatus {
    pub managed: bool,
    /// The managed master's PID.
    pub pid: Option<u32>,
    /// Whether the managed nginx runs; `None` for an external nginx.
    pub running: Option<bool>,
    /// Reloads done since start.
    pub reloads: u64,
    /// Times the supervisor had to start a managed nginx that had died.
    pub restarts: u64,
    pub last_reload_unix: Option<u64>,
    /// The most recent rejected candidate per slot, until a good one replaces it.
    pub rejected: Vec<Rejection>,
    /// The most recent reload or start failure, until a reload succeeds.
    pub last_error: Option<String>,
}

impl NginxStatus {
    /// Healthy: running (when managed), nothing rejected, no pending failure.
    pub fn healthy(&self) -> bool {
        self.running != Some(false) && self.rejected.is_empty() && self.last_error.is_none()
    }
}

/// Records (`Some`) or clears (`None`) the rejection of `slot`'s latest candidate.
pub(super) fn set_rejection(status: &mut NginxStatus, slot: Slot, error: Option<&str>) {
    status.rejected.retain(|r| r.slot != slot.name());
    if let Some(error) = error {
        status.rejected.push(Rejection {
            slot: slot.name(),
            error: error.to_string(),
            at_unix: unix_now(),
        });
    }
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
