//! How long to wait before retrying a failing ClearML call.

use std::time::Duration;

/// The longest wait between two attempts, whatever the poll interval.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `poll × 2^(n-1)`, capped, with ±10 % jitter so several routers do not retry in step.
pub fn backoff(poll: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    let base = poll.saturating_mul(1 << exp).min(MAX_BACKOFF.max(poll));
    let jitter: f64 = rand::random_range(0.9..1.1);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let poll = Duration::from_secs(2);
        let b1 = backoff(poll, 1);
        assert!(b1 >= Duration::from_millis(1800) && b1 <= Duration::from_millis(2200));
        let b3 = backoff(poll, 3);
        assert!(b3 >= Duration::from_millis(7200) && b3 <= Duration::from_millis(8800));
        let b20 = backoff(poll, 20);
        assert!(b20 <= MAX_BACKOFF.mul_f64(1.1));
    }
}
