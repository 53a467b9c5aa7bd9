//! Whether this connection's ClearML server has `tasks.edit_runtime` (learnt once per
//! connection), and which keys it stores under their own name (see `runtime_edit` for the call
//! and its sources).

use std::sync::atomic::{AtomicU8, Ordering};

/// The first API version with `tasks.edit_runtime` (server 2.3.0).
pub const EDIT_RUNTIME_SINCE: (u32, u32) = (2, 34);

/// Whether `key` is stored under its own name by `tasks.edit_runtime`: the server escapes
/// `%`, `.`, `$`, `__` and a leading `_` and strips surrounding spaces, and reads return the
/// escaped key, so any other key would land where neither the SDK nor this router reads it
/// (`_ROUTER_NAME` as `%_ROUTER_NAME`, `endpoint__ui` as `endpoint%_%_ui`).
pub fn written_as_is(key: &str) -> bool {
    !key.is_empty()
        && key.trim() == key
        && !key.starts_with('_')
        && !key.contains("__")
        && !key.contains(['%', '.', '$'])
}

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
    fn only_keys_the_server_keeps_as_they_are_go_through_the_atomic_call() {
        for key in [
            "endpoint",
            "browser_endpoint",
            "external_address",
            "external_tcp_port",
            "upstream_task_address",
            "upstream_task_port",
            "a_b",
        ] {
            assert!(written_as_is(key), "{key}");
        }
        for key in [
            "_ROUTER_NAME",
            "endpoint__ui",
            "a.b",
            "$x",
            "50%",
            " endpoint",
            "endpoint ",
            "",
        ] {
            assert!(!written_as_is(key), "{key}");
        }
    }

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
