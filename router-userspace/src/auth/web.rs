//! The `auth_request` endpoint nginx calls: an axum router the admin server merges.

use std::sync::Arc;

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
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let status = if decision.allowed() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    (status, out).into_response()
}
