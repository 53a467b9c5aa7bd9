//! The token of the ClearML API: read from `auth.login`'s answer, kept for the calls, refreshed
//! before it expires.

use crate::clearml::error::ApiError;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A token is refreshed when less than this remains (the SDK's default threshold).
const REFRESH_THRESHOLD: Duration = Duration::from_secs(60);

/// The token in use and when to replace it.
pub(super) struct Token {
    jwt: String,
    /// Wall clock, since `exp` is.
    refresh_at: SystemTime,
    /// The server's highest API version, from the token's `api_version` claim (clearml-server
    /// `apiserver/bll/auth/__init__.py:61`); `None` when the token does not say.
    pub(super) api_version: Option<(u32, u32)>,
}

impl Token {
    /// Reads the `data` of an `auth.login` answer received at `now`.
    pub(super) fn from_login(
        data: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Token, ApiError> {
        let jwt = data
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Malformed {
                call: "auth.login".into(),
                reason: "no data.token in the answer".into(),
            })?
            .to_string();
        let claims = unverified_claims(&jwt);
        let refresh_at = refresh_time(claims.as_ref(), now);
        let api_version = claims
            .as_ref()
            .and_then(|c| c.get("api_version"))
            .and_then(Value::as_str)
            .and_then(parse_api_version);
        Ok(Token {
            jwt,
            refresh_at,
            api_version,
        })
    }
}

/// The token in use, shared by concurrent calls. It stays locked while a new one is fetched, so
/// concurrent calls wait for that one login instead of each logging in.
#[derive(Default)]
pub(super) struct TokenSlot(tokio::sync::Mutex<Option<Token>>);

impl TokenSlot {
    /// Replaces the token with the one `login` fetches.
    pub(super) async fn renew(
        &self,
        login: impl Future<Output = Result<Token, ApiError>>,
    ) -> Result<(), ApiError> {
        let mut slot = self.0.lock().await;
        *slot = Some(login.await?);
        Ok(())
    }

    /// A token that is not about to expire, fetched with `login` when needed.
    pub(super) async fn bearer(
        &self,
        login: impl Future<Output = Result<Token, ApiError>>,
    ) -> Result<String, ApiError> {
        let mut slot = self.0.lock().await;
        let fresh = slot
            .as_ref()
            .is_some_and(|t| SystemTime::now() < t.refresh_at);
        if !fresh {
            *slot = Some(login.await?);
        }
        Ok(slot.as_ref().map(|t| t.jwt.clone()).unwrap_or_default())
    }

    /// Forgets `jwt` (after a 401) unless another call already replaced it.
    pub(super) async fn invalidate(&self, jwt: &str) {
        let mut slot = self.0.lock().await;
        if slot.as_ref().is_some_and(|t| t.jwt == jwt) {
            *slot = None;
        }
    }
}

/// The claims of `jwt`, decoded without verifying it (as the SDK does: the client only reads
/// when to refresh and what the server is); `None` for an opaque token.
pub(super) fn unverified_claims(jwt: &str) -> Option<Value> {
    use base64::Engine as _;
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
}

/// `2.34` as `(2, 34)`.
pub(super) fn parse_api_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// When to refresh a token with `claims`: `exp` minus the threshold (a quarter of the lifetime
/// for short-lived tokens); an opaque token is refreshed every 10 minutes and on a 401.
pub(super) fn refresh_time(claims: Option<&Value>, now: SystemTime) -> SystemTime {
    let num = |k: &str| claims.and_then(|c| c.get(k)).and_then(Value::as_f64);
    let exp = num("exp").and_then(|e| Duration::try_from_secs_f64(e).ok());
    match exp.and_then(|e| UNIX_EPOCH.checked_add(e)) {
        Some(exp_at) => {
            let lifetime = num("iat")
                .and_then(|iat| Duration::try_from_secs_f64(num("exp").unwrap_or(0.0) - iat).ok())
                .unwrap_or(REFRESH_THRESHOLD * 4);
            let margin = REFRESH_THRESHOLD.min(lifetime / 4);
            exp_at.checked_sub(margin).unwrap_or(now)
        }
        None => now + Duration::from_secs(600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"HS256"}"#),
            e.encode(claims.to_string())
        )
    }

    fn refresh_time(jwt: &str, now: SystemTime) -> SystemTime {
        super::refresh_time(unverified_claims(jwt).as_ref(), now)
    }

    #[test]
    fn the_servers_api_version_is_read_from_the_token() {
        let login = |claims: Value| {
            let data = json!({ "token": jwt(claims) });
            Token::from_login(data.as_object().unwrap(), SystemTime::now()).unwrap()
        };
        assert_eq!(
            login(json!({"exp": 2_000_000_000u64, "api_version": "2.34"})).api_version,
            Some((2, 34))
        );
        assert_eq!(login(json!({"exp": 2_000_000_000u64})).api_version, None);
        assert_eq!(login(json!({"api_version": "two"})).api_version, None);
        assert_eq!(parse_api_version("2.9"), Some((2, 9)));
        assert!(parse_api_version("2.9") < parse_api_version("2.34"));
    }

    #[test]
    fn tokens_refresh_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        // A 30-day token: refreshed 60 s before it expires.
        let t = jwt(json!({"iat": 1_000_000, "exp": 1_000_000 + 2_592_000}));
        assert_eq!(
            refresh_time(&t, now),
            UNIX_EPOCH + Duration::from_secs(1_000_000 + 2_592_000 - 60)
        );
        // A 20 s token: refreshed with a quarter of its life left.
        let t = jwt(json!({"iat": 1_000_000, "exp": 1_000_020}));
        assert_eq!(
            refresh_time(&t, now),
            UNIX_EPOCH + Duration::from_secs(1_000_015)
        );
        // Opaque or absurd: ten minutes.
        assert_eq!(refresh_time("opaque", now), now + Duration::from_secs(600));
        let t = jwt(json!({"exp": 1e300}));
        assert_eq!(refresh_time(&t, now), now + Duration::from_secs(600));
        let t = jwt(json!({"exp": -5}));
        assert_eq!(refresh_time(&t, now), now + Duration::from_secs(600));
    }
}
