//! Counters and latency histograms of the API calls, for `status` and `/metrics`.

use crate::clearml::error::ApiError;
use serde_json::{Map, Value};
use std::sync::atomic::AtomicU64;

/// Call counters for status and metrics.
#[derive(Debug, Default)]
pub struct ApiStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub logins: AtomicU64,
    pub last_latency_us: AtomicU64,
    /// Writes of the task seen between our reads and our write (each one handled: merged or
    /// repaired), for status and metrics.
    pub concurrent_writes: AtomicU64,
    /// Latency of every call by endpoint and outcome.
    latency: std::sync::Mutex<std::collections::BTreeMap<(String, String), ApiCallStats>>,
}

/// Upper bounds (seconds) of the API latency histogram's buckets (then +Inf).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Latency histogram of the calls to one endpoint with one outcome.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiCallStats {
    /// `tasks.get_all_ex`, `auth.login`, ...
    pub endpoint: String,
    /// The HTTP status answered, or `timeout`, `unreachable`, `malformed` when none was.
    pub status: String,
    pub count: u64,
    pub sum_seconds: f64,
    /// Calls per bucket of [`LATENCY_BUCKETS`], then the +Inf bucket (not cumulative).
    pub buckets: Vec<u64>,
}

impl ApiCallStats {
    fn observe(&mut self, seconds: f64) {
        if self.buckets.len() != LATENCY_BUCKETS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// The status label of a call's outcome.
pub(super) fn status_label(result: &Result<Map<String, Value>, ApiError>) -> String {
    match result {
        Ok(_) => "200".into(),
        Err(ApiError::Unauthorized { status, .. } | ApiError::Server { status, .. }) => {
            status.to_string()
        }
        Err(ApiError::Timeout { .. }) => "timeout".into(),
        Err(ApiError::Transport { .. }) => "unreachable".into(),
        Err(ApiError::Malformed { .. }) => "malformed".into(),
        Err(e) => e.class(),
    }
}

impl ApiStats {
    pub(super) fn observe(&self, endpoint: &str, status: String, seconds: f64) {
        if let Ok(mut map) = self.latency.lock() {
            let entry = map
                .entry((endpoint.to_string(), status))
                .or_insert_with_key(|(endpoint, status)| ApiCallStats {
                    endpoint: endpoint.clone(),
                    status: status.clone(),
                    ..ApiCallStats::default()
                });
            entry.observe(seconds);
        }
    }

    /// Every endpoint's latency histogram so far, by endpoint and status.
    pub fn latency(&self) -> Vec<ApiCallStats> {
        self.latency
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
