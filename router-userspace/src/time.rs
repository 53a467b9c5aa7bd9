//! The wall clock the persisted state uses (milliseconds survive restarts, unlike `Instant`).

/// Milliseconds since the Unix epoch (the persisted clock; survives restarts).
pub type Millis = u64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
