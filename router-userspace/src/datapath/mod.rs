//! The kernel side as the daemon sees it: the embedded object, attaching its programs, and one
//! module per map owner.

pub mod attach;
pub mod kernel_log;
pub mod object;
pub mod stats;

pub use attach::{AttachMode, Attached, ResolvedMode};
pub use object::{DatapathError, load};

/// An error with its sources, one line: what a user reads in the log.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
