//! Formatting of error chains for logs and user messages (used by every room, so it lives
//! one floor below them all).

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
