//! A short cache of validated tokens: nginx asks once per proxied request (every asset, every
//! WebSocket), mostly with the same cookie. An entry lives a few seconds and never past the
//! token's own `exp`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Identity;

/// How long a validated token is trusted without checking it again.
pub const TTL: Duration = Duration::from_secs(10);
/// Entries kept at most; a flood of distinct tokens cannot grow memory past this.
const MAX_ENTRIES: usize = 4096;

struct Entry {
    identity: Identity,
    exp_unix: u64,
    until: SystemTime,
}

pub struct TokenCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(TTL, MAX_ENTRIES)
    }
}

impl TokenCache {
    pub fn new(ttl: Duration, max: usize) -> TokenCache {
        TokenCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The identity and `exp` of `token` if it was validated recently and its entry has not
    /// run out.
    pub fn get(&self, token: &str, now: SystemTime) -> Option<(Identity, u64)> {
        let mut entries = self.lock();
        match entries.get(token) {
            Some(e) if now < e.until => Some((e.identity.clone(), e.exp_unix)),
            Some(_) => {
                entries.remove(token);
                None
            }
            None => None,
        }
    }

    /// Remembers a validated token until `now + ttl` or its `exp`, whichever comes first.
    pub fn put(&self, token: &str, identity: Identity, exp_unix: u64, now: SystemTime) {
        let until = (now + self.ttl).min(UNIX_EPOCH + Duration::from_secs(exp_unix));
        if until <= now {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.retain(|_, e| now < e.until);
            if entries.len() >= self.max {
                entries.clear();
            }
        }
        entries.insert(
            token.to_string(),
            Entry {
                identity,
                exp_unix,
                until,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            user: "u".into(),
            company: "c".into(),
            user_name: None,
            company_name: None,
            role: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = TokenCache::new(Duration::from_secs(10), 100);
        c.put("t", id(), 1_000_000, at(1000));
        assert_eq!(c.get("t", at(1009)), Some((id(), 1_000_000)));
        assert_eq!(c.get("t", at(1010)), None);
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn entries_never_outlive_the_token() {
        let c = TokenCache::new(Duration::from_secs(10), 100);
        c.put("t", id(), 1003, at(1000));
        assert!(c.get("t", at(1002)).is_some());
        assert_eq!(c.get("t", at(1003)), None);
        // A token already at or past its exp (accepted within leeway) is not cached at all.
        c.put("late", id(), 999, at(1000));
        assert_eq!(c.get("late", at(1000)), None);
    }

    #[test]
    fn size_is_bounded() {
        let c = TokenCache::new(Duration::from_secs(10), 3);
        for i in 0..10 {
            c.put(&format!("t{i}"), id(), 1_000_000, at(1000));
        }
        assert!(c.len() <= 3);
        assert!(c.get("t9", at(1001)).is_some(), "the newest entry is kept");
    }
}
