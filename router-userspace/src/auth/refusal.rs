//! Why routed HTTP requests are refused, counted by reason for `/metrics`
//! (`task_router_auth_refusals_total{reason}`), and the one refusal an operator can fix: a key
//! that matches no token the server signs, logged with the fix at most once a minute.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// No ClearML token in the cookies or `Authorization`.
    Missing,
    /// Not a token this router can read: not a JWT, another algorithm, no `identity.company`,
    /// not valid yet, too long.
    Malformed,
    /// Signed right, but past its `exp`.
    Expired,
    /// The signature matches neither form of `AUTH_BASE64_JWKS_KEY`.
    BadSignature,
    /// A valid token of another company than the task's.
    WrongCompany,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 5] = [
        RefusalReason::Missing,
        RefusalReason::Malformed,
        RefusalReason::Expired,
        RefusalReason::BadSignature,
        RefusalReason::WrongCompany,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::Missing => "missing",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Expired => "expired",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::WrongCompany => "wrong_company",
        }
    }
}

/// How often the key mismatch is logged at most.
pub const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(60);

/// The hint the mismatch log line carries.
pub const MISMATCH_HINT: &str = "AUTH_BASE64_JWKS_KEY does not match the server's token_secret \
     (CLEARML__secure__auth__token_secret; set it as written, or its base64url JWKS `k`)";

/// Refusals so far, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; 5],
    last_mismatch_log: Mutex<Option<Instant>>,
}

impl Refusals {
    pub fn count(&self, reason: RefusalReason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
        if reason == RefusalReason::BadSignature && self.mismatch_log_due(Instant::now()) {
            tracing::warn!(
                hint = MISMATCH_HINT,
                "routed HTTP request refused: the token's signature matches neither \
                 AUTH_BASE64_JWKS_KEY as written nor its base64url decoding"
            );
        }
    }

    /// Every reason with its count.
    pub fn counts(&self) -> Vec<(RefusalReason, u64)> {
        RefusalReason::ALL
            .iter()
            .map(|r| (*r, self.counts[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// Whether the mismatch may be logged at `now` (and if so, that it was).
    fn mismatch_log_due(&self, now: Instant) -> bool {
        let mut last = self
            .last_mismatch_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| now.duration_since(at) >= MISMATCH_LOG_EVERY);
        if due {
            *last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason() {
        let r = Refusals::default();
        r.count(RefusalReason::Expired);
        r.count(RefusalReason::Expired);
        r.count(RefusalReason::WrongCompany);
        assert_eq!(r.get(RefusalReason::Expired), 2);
        let labels: Vec<_> = r.counts().iter().map(|(r, n)| (r.label(), *n)).collect();
        assert_eq!(
            labels,
            [
                ("missing", 0),
                ("malformed", 0),
                ("expired", 2),
                ("bad_signature", 0),
                ("wrong_company", 1)
            ]
        );
    }

    #[test]
    fn the_key_mismatch_is_logged_at_most_once_a_minute() {
        let r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.mismatch_log_due(t0));
        assert!(!r.mismatch_log_due(t0 + Duration::from_secs(59)));
        assert!(r.mismatch_log_due(t0 + MISMATCH_LOG_EVERY));
    }
}
