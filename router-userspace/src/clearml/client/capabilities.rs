//! What the server of this connection can do, learnt at each login (the token's `api_version`,
//! clearml-server `apiserver/bll/auth/__init__.py:61`) or from the first call a release lacks
//! (404/0): so far, whether it has `tasks.edit_runtime`.

use std::sync::atomic::{AtomicU8, Ordering};

/// The first API version with `tasks.edit_runtime` (server 2.3.0).
pub const EDIT_RUNTIME_SINCE: (u32, u32) = (2, 34);

/// Whether the server of this connection has `tasks.edit_runtime`.
#[derive(Debug, Default)]
pub(super) struct RuntimeEdits(AtomicU8);

const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const ABSENT: u8 = 2;

impl RuntimeEdits {
    /// A new connection: what its token says (`None`: find out with the first call).
    pub(super) fn learn(&self, api_version: Option<(u32, u32)>) {
        let state = match api_version {
            Some(v) if v >= EDIT_RUNTIME_SINCE => PRESENT,
            Some(_) => ABSENT,
            None => UNKNOWN,
        };
        let before = self.0.swap(state, Ordering::Relaxed);
        if before != state && state == PRESENT {
            tracing::info!(
                "the ClearML server has tasks.edit_runtime: runtime keys without `_` or `__` are written atomically"
            );
        }
    }

    /// Worth trying: present, or not known yet.
    pub(super) fn usable(&self) -> bool {
        self.0.load(Ordering::Relaxed) != ABSENT
    }

    /// The server answered 404/0: it has no such call.
    pub(super) fn mark_absent(&self) {
        if self.0.swap(ABSENT, Ordering::Relaxed) != ABSENT {
            tracing::info!(
                "the ClearML server has no tasks.edit_runtime (before 2.3.0): runtime keys are written with read-merge-write"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_tells_whether_the_call_exists() {
        let edits = RuntimeEdits::default();
        assert!(edits.usable(), "unknown: worth a try");
        edits.learn(Some((2, 33)));
        assert!(!edits.usable());
        edits.learn(Some((2, 34)));
        assert!(edits.usable());
        edits.mark_absent();
        assert!(!edits.usable());
        edits.learn(None);
        assert!(edits.usable(), "a new connection finds out again");
    }
}
