//! The `auth_request` endpoint nginx calls: an axum router the admin server merges.
//!
//! Every answer says how long nginx may reuse it (`X-Accel-Expires`, see `nginx::http`, which
//! caches answers keyed by the request's whole `Cookie` and `Authorization` headers): a yes for
//! at most [`super::cache::TTL`] and never into the second its token's `exp` begins; a refusal
//! not at all (its login redirect depends on the URL, and a refusal is cheap to repeat).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AUTH_PATH, Authenticator, Request};

/// Response headers nginx reads with `auth_request_set` (see `nginx::http`).
pub const USER_HEADER: &str = "x-clearml-user";
pub const COMPANY_HEADER: &str = "x-clearml-company";
pub const COOKIE_HEADER: &str = "x-task-router-cookie";
pub const AUTHORIZATION_HEADER: &str = "x-task-router-authorization";
pub const LOGIN_HEADER: &str = "x-task-router-login";
/// How long nginx may serve the answer from its cache.
pub const CACHE_HEADER: &str = "x-accel-expires";

/// `GET {AUTH_PATH}` (any method): 200 with the identity and the credentials to forward, or 401
/// (with a login URL for browsers when one is configured). Merge it into the admin server:
/// `admin_router.merge(auth::router(auth))`.
pub fn router(auth: Arc<Authenticator>) -> axum::Router {
    axum::Router::new()
        .route(AUTH_PATH, axum::routing::any(check))
        .with_state(auth)
}

async fn check(State(auth): State<Arc<Authenticator>>, headers: HeaderMap) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let req = Request {
        cookies: headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect(),
        authorization: text("authorization"),
        accept: text("accept"),
        method: text("x-original-method"),
        uri: text("x-original-uri"),
        host: text("x-forwarded-host"),
        proto: text("x-forwarded-proto"),
    };
    let decision = auth.check(&req);
    let mut out = HeaderMap::new();
    let mut put = |name: &'static str, value: Option<&str>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            out.insert(HeaderName::from_static(name), v);
        }
    };
    put(COOKIE_HEADER, decision.forward_cookie.as_deref());
    put(
        AUTHORIZATION_HEADER,
        decision.forward_authorization.as_deref(),
    );
    if let Some(id) = &decision.identity {
        put(USER_HEADER, Some(&id.user));
        put(COMPANY_HEADER, Some(&id.company));
    }
    put("set-cookie", decision.set_cookie.as_deref());
    put(LOGIN_HEADER, decision.login.as_deref());
    let reuse = decision.expires.filter(|_| decision.allowed()).map_or_else(
        || "0".to_string(),
        |exp| reusable_until(exp, SystemTime::now()),
    );
    put(CACHE_HEADER, Some(&reuse));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let status = if decision.allowed() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    (status, out).into_response()
}

/// `X-Accel-Expires` for a yes whose token expires at `exp_unix`: `@T`, the last second nginx
/// may serve it in. nginx serves a cached answer while its clock's whole seconds are at most T,
/// so T is one before both the second of `exp` and the second [`super::cache::TTL`] from now
/// ends; `0` (do not cache) when no such second is left.
fn reusable_until(exp_unix: u64, now: SystemTime) -> String {
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let end = exp_unix.min(now_secs.saturating_add(super::cache::TTL.as_secs()));
    match end.checked_sub(1) {
        Some(last) if last >= now_secs => format!("@{last}"),
        _ => "0".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_yes_is_reused_for_at_most_the_ttl() {
        let ttl = super::super::cache::TTL.as_secs();
        // Served while nginx's clock reads 1000..=1009: never 10 s past 1000.0.
        assert_eq!(
            reusable_until(1_000_000, at(1000.0)),
            format!("@{}", 1000 + ttl - 1)
        );
        assert_eq!(
            reusable_until(1_000_000, at(1000.9)),
            format!("@{}", 1000 + ttl - 1)
        );
    }

    #[test]
    fn a_yes_is_never_reused_into_the_second_its_token_expires() {
        assert_eq!(reusable_until(1003, at(1000.5)), "@1002");
        // Valid for the rest of this second only: served while the clock still reads 1000.
        assert_eq!(reusable_until(1001, at(1000.2)), "@1000");
        assert_eq!(reusable_until(1000, at(999.99)), "@999");
        // Past its exp (the verifier refuses it anyway): never cached.
        assert_eq!(reusable_until(1000, at(1000.0)), "0");
        assert_eq!(reusable_until(0, at(1000.0)), "0");
    }
}
