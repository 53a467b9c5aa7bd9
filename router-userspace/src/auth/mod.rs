//! Authentication of routed HTTP requests (`AUTH_ENABLED`): nginx's `auth_request` asks
//! [`AUTH_PATH`] on the daemon's admin server before proxying, and this module answers from the
//! ClearML token in the cookie `AUTH_COOKIE_NAME` or in `Authorization: Bearer`.
//!
//! Answers: `200` with the identity (`X-ClearML-User`, `X-ClearML-Company`) and the credentials
//! to forward to the task, or `401` (with a login URL for browsers when `AUTH_LOGIN_URL` is
//! set; nginx turns it into a redirect). The ClearML token itself never reaches the task: the
//! ClearML cookie is cut from the forwarded `Cookie` header and a ClearML bearer token from
//! `Authorization`, so a task cannot replay its visitors' tokens against the ClearML API.
//! A request authenticated only by a bearer token gets the token back as the ClearML cookie
//! (`HttpOnly`, `SameSite=Lax`, `Secure` when `AUTH_SECURE_ENABLED`), so the browser's later
//! requests (assets, WebSockets, which cannot carry headers) pass too.

mod cache;
mod error;
#[cfg(test)]
mod fuzz;
mod identity;
mod jwt;
mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::AuthConfig;

pub use cache::{TTL as CACHE_TTL, TokenCache};
pub use error::AuthError;
pub use identity::Identity;
pub use jwt::{NBF_LEEWAY_SECS, Verifier, algorithm, decode_jwks_key};
pub use web::router;

/// The admin-server path nginx's `auth_request` subrequests go to.
pub const AUTH_PATH: &str = "/auth";

/// What the request to authorise carried (from nginx's subrequest headers).
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    /// Every `Cookie` header value.
    pub cookies: Vec<&'a str>,
    pub authorization: Option<&'a str>,
    pub accept: Option<&'a str>,
    /// The original request's method (`X-Original-Method`).
    pub method: Option<&'a str>,
    /// The original request's URI (`X-Original-URI`).
    pub uri: Option<&'a str>,
    /// `X-Forwarded-Host`, `X-Forwarded-Proto` as nginx saw them.
    pub host: Option<&'a str>,
    pub proto: Option<&'a str>,
}

/// How the request was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Cookie,
    Bearer,
    /// Authentication is off.
    Disabled,
}

/// The answer to one `auth_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `None`: refused.
    pub identity: Option<Identity>,
    pub via: Option<Via>,
    /// The `Cookie` header to forward to the task (the ClearML cookie removed).
    pub forward_cookie: Option<String>,
    /// The `Authorization` header to forward (`None` when it carried the ClearML token).
    pub forward_authorization: Option<String>,
    /// A `Set-Cookie` for the browser.
    pub set_cookie: Option<String>,
    /// Where to send a refused browser.
    pub login: Option<String>,
    /// The `exp` (seconds since the epoch) of the token that let the request through: the
    /// answer must not be reused past it.
    pub expires: Option<u64>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.via.is_some()
    }
}

/// Counters for the admin server's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuthStats {
    pub allowed: u64,
    pub denied: u64,
    pub cache_hits: u64,
}

/// Validates ClearML tokens for `auth_request`.
pub struct Authenticator {
    enabled: bool,
    cookie_name: String,
    secure_cookie: bool,
    login_url: Option<String>,
    verifier: Option<Verifier>,
    cache: TokenCache,
    allowed: AtomicU64,
    denied: AtomicU64,
    cache_hits: AtomicU64,
}

impl Authenticator {
    /// From `AuthConfig`; fails on a missing key or an unsupported algorithm when enabled.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, AuthError> {
        if !cookie_name_ok(&cfg.cookie_name) {
            return Err(AuthError::CookieName(cfg.cookie_name.clone()));
        }
        if let Some(url) = &cfg.login_url
            && !login_url_ok(url)
        {
            return Err(AuthError::LoginUrl(url.clone()));
        }
        let verifier = if cfg.enabled {
            Some(Verifier::new(&cfg.hmac_key, algorithm(&cfg.algorithm)?)?)
        } else {
            None
        };
        Ok(Authenticator {
            enabled: cfg.enabled,
            cookie_name: cfg.cookie_name.clone(),
            secure_cookie: cfg.secure_cookie,
            login_url: cfg.login_url.clone(),
            verifier,
            cache: TokenCache::default(),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// Shared state for [`router`].
    pub fn shared(cfg: &AuthConfig) -> Result<Arc<Authenticator>, AuthError> {
        Authenticator::new(cfg).map(Arc::new)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn stats(&self) -> AuthStats {
        AuthStats {
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// The identity in `token` and its `exp`, from the cache when it was seen moments ago.
    pub fn verify(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let verifier = self.verifier.as_ref().ok_or(AuthError::NoKey)?;
        let now = SystemTime::now();
        if let Some(hit) = self.cache.get(token, now) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let (id, exp) = verifier.verify(token)?;
        self.cache.put(token, id.clone(), exp, now);
        Ok((id, exp))
    }

    /// Decides one request.
    pub fn check(&self, req: &Request<'_>) -> Decision {
        let cookie_tokens: Vec<&str> = req
            .cookies
            .iter()
            .flat_map(|h| cookie_pairs(h))
            .filter(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value)
            .collect();
        let forward_cookie = strip_cookie(&req.cookies, &self.cookie_name);
        if !self.enabled {
            self.allowed.fetch_add(1, Ordering::Relaxed);
            return Decision {
                identity: None,
                via: Some(Via::Disabled),
                forward_cookie: join_cookies(&req.cookies),
                forward_authorization: req.authorization.map(str::to_string),
                set_cookie: None,
                login: None,
                expires: None,
            };
        }
        let bearer = req.authorization.and_then(bearer_token);
        let bearer_result = bearer.map(|t| self.verify(t));
        let bearer_is_clearml = matches!(bearer_result, Some(Ok(_)));
        let forward_authorization = if bearer_is_clearml {
            None
        } else {
            req.authorization.map(str::to_string)
        };

        let mut refusal: Option<AuthError> = None;
        let from_cookie = cookie_tokens
            .iter()
            .find_map(|t| self.verify(t).map_err(|e| refusal = Some(e)).ok());
        let mut decision = Decision {
            identity: None,
            via: None,
            forward_cookie,
            forward_authorization,
            set_cookie: None,
            login: None,
            expires: None,
        };
        if let Some((id, exp)) = from_cookie {
            decision.identity = Some(id);
            decision.via = Some(Via::Cookie);
            decision.expires = Some(exp);
        } else if let (Some(token), Some(Ok((id, exp)))) = (bearer, &bearer_result) {
            decision.set_cookie = self.session_cookie(token, *exp);
            decision.identity = Some(id.clone());
            decision.via = Some(Via::Bearer);
            decision.expires = Some(*exp);
        } else {
            let reason = match (&refusal, &bearer_result) {
                (_, Some(Err(e))) | (Some(e), _) => crate::error::error_chain(e),
                _ => "no ClearML token in the cookie or Authorization header".to_string(),
            };
            tracing::debug!(uri = req.uri.unwrap_or_default(), %reason, "routed HTTP request refused");
            decision.login = self.login_for(req);
        }
        let counter = if decision.allowed() {
            &self.allowed
        } else {
            &self.denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decision
    }

    /// `Set-Cookie` carrying `token` as the ClearML cookie until the token expires.
    pub fn session_cookie(&self, token: &str, exp_unix: u64) -> Option<String> {
        let max_age = exp_unix.saturating_sub(unix(SystemTime::now()));
        if max_age == 0 || !token.bytes().all(cookie_value_byte) {
            return None;
        }
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        Some(format!(
            "{}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
            self.cookie_name
        ))
    }

    /// The login URL for a refused browser navigation (`AUTH_LOGIN_URL`, its `{redirect}`
    /// replaced by the percent-encoded URL the user asked for); `None` for API clients.
    fn login_for(&self, req: &Request<'_>) -> Option<String> {
        let login = self.login_url.as_deref()?;
        let browser = req.accept.is_some_and(|a| a.contains("text/html"))
            && req
                .method
                .is_none_or(|m| m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("HEAD"));
        if !browser {
            return None;
        }
        if !login.contains("{redirect}") {
            return Some(login.to_string());
        }
        let uri = req.uri.filter(|u| u.starts_with('/')).unwrap_or("/");
        let proto = match req.proto {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let back = match req.host.filter(|h| host_ok(h)) {
            Some(host) => format!("{proto}://{host}{uri}"),
            None => uri.to_string(),
        };
        Some(login.replace("{redirect}", &percent_encode(&back)))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `Bearer <token>` (scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `name=value` pairs of one `Cookie` header (quotes around a value removed).
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name.trim(), value))
    })
}

/// The `Cookie` headers as one, without any cookie called `name`; `None` when nothing is left.
fn strip_cookie(headers: &[&str], name: &str) -> Option<String> {
    let kept: Vec<&str> = headers
        .iter()
        .flat_map(|h| h.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(pair.trim(), |(n, _)| n.trim()) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

fn join_cookies(headers: &[&str]) -> Option<String> {
    strip_cookie(headers, "")
}

/// RFC 6265 cookie-name: a token (visible ASCII, no separators).
fn cookie_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// RFC 6265 cookie-octet.
fn cookie_value_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\')
}

fn login_url_ok(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://") || url.starts_with('/'))
        && url.bytes().all(|b| b.is_ascii_graphic())
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::jwt::tests::{KEY, claims, sign, unsigned};
    use super::*;
    use jsonwebtoken::Algorithm;

    fn config() -> AuthConfig {
        AuthConfig {
            enabled: true,
            cookie_name: "clearml_token_basic".into(),
            secure_cookie: true,
            hmac_key: KEY.to_vec(),
            algorithm: "HS256".into(),
            login_url: Some("https://app.example.com/login?redirect={redirect}".into()),
        }
    }

    fn good() -> String {
        sign(&claims(3600), Algorithm::HS256, KEY)
    }

    #[test]
    fn cookie_token_passes_and_is_cut_from_the_forwarded_cookies() {
        let a = Authenticator::new(&config()).unwrap();
        let header = format!("theme=dark; clearml_token_basic={}; _xsrf=abc", good());
        let d = a.check(&Request {
            cookies: vec![&header],
            ..Request::default()
        });
        assert_eq!(d.via, Some(Via::Cookie));
        assert_eq!(d.identity.unwrap().company, "c1");
        assert_eq!(d.forward_cookie.as_deref(), Some("theme=dark; _xsrf=abc"));
        assert_eq!(d.set_cookie, None);
    }

    #[test]
    fn bearer_token_passes_is_not_forwarded_and_sets_a_secure_cookie() {
        let a = Authenticator::new(&config()).unwrap();
        let auth = format!("Bearer {}", good());
        let d = a.check(&Request {
            authorization: Some(&auth),
            ..Request::default()
        });
        assert_eq!(d.via, Some(Via::Bearer));
        assert_eq!(d.forward_authorization, None);
        let c = d.set_cookie.unwrap();
        assert!(c.starts_with(&format!("clearml_token_basic={}; Path=/;", good())));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax"));
        assert!(c.ends_with("; Secure"));

        let mut plain = config();
        plain.secure_cookie = false;
        let a = Authenticator::new(&plain).unwrap();
        let d = a.check(&Request {
            authorization: Some(&auth),
            ..Request::default()
        });
        assert!(!d.set_cookie.unwrap().contains("Secure"));
    }

    #[test]
    fn an_apps_own_authorization_is_forwarded() {
        let a = Authenticator::new(&config()).unwrap();
        let cookie = format!("clearml_token_basic={}", good());
        let d = a.check(&Request {
            cookies: vec![&cookie],
            authorization: Some("Basic dXNlcjpwYXNz"),
            ..Request::default()
        });
        assert!(d.allowed());
        assert_eq!(
            d.forward_authorization.as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert_eq!(d.forward_cookie, None);
    }

    #[test]
    fn bad_tokens_are_refused_and_browsers_sent_to_login() {
        let a = Authenticator::new(&config()).unwrap();
        for bad in [
            sign(&claims(-3600), Algorithm::HS256, KEY),
            sign(&claims(3600), Algorithm::HS256, b"wrong"),
            unsigned(&claims(3600)),
        ] {
            let cookie = format!("clearml_token_basic={bad}");
            let d = a.check(&Request {
                cookies: vec![&cookie],
                accept: Some("text/html,application/xhtml+xml"),
                method: Some("GET"),
                uri: Some("/service/t/lab?x=1&y=2"),
                host: Some("router.example.com"),
                proto: Some("https"),
                ..Request::default()
            });
            assert!(!d.allowed());
            assert_eq!(
                d.login.as_deref(),
                Some(
                    "https://app.example.com/login?redirect=https%3A%2F%2Frouter.example.com%2Fservice%2Ft%2Flab%3Fx%3D1%26y%3D2"
                )
            );
        }
        // API clients get a plain 401.
        let d = a.check(&Request {
            accept: Some("application/json"),
            ..Request::default()
        });
        assert!(!d.allowed() && d.login.is_none());
        assert_eq!(a.stats().denied, 4);
    }

    #[test]
    fn a_stale_cookie_beside_a_valid_one_still_passes() {
        let a = Authenticator::new(&config()).unwrap();
        let stale = sign(&claims(-3600), Algorithm::HS256, KEY);
        let header = format!(
            "clearml_token_basic={stale}; clearml_token_basic={}",
            good()
        );
        let d = a.check(&Request {
            cookies: vec![&header],
            ..Request::default()
        });
        assert!(d.allowed());
        assert_eq!(d.forward_cookie, None);
    }

    #[test]
    fn repeated_tokens_come_from_the_cache() {
        let a = Authenticator::new(&config()).unwrap();
        let t = good();
        a.verify(&t).unwrap();
        a.verify(&t).unwrap();
        assert_eq!(a.stats().cache_hits, 1);
    }

    #[test]
    fn disabled_auth_allows_and_forwards_everything() {
        let mut cfg = config();
        cfg.enabled = false;
        cfg.hmac_key.clear();
        let a = Authenticator::new(&cfg).unwrap();
        let d = a.check(&Request {
            cookies: vec!["a=1", "clearml_token_basic=x"],
            authorization: Some("Bearer x"),
            ..Request::default()
        });
        assert_eq!(d.via, Some(Via::Disabled));
        assert_eq!(
            d.forward_cookie.as_deref(),
            Some("a=1; clearml_token_basic=x")
        );
        assert_eq!(d.forward_authorization.as_deref(), Some("Bearer x"));
    }

    #[test]
    fn configuration_is_checked() {
        let mut c = config();
        c.hmac_key.clear();
        assert!(matches!(Authenticator::new(&c), Err(AuthError::NoKey)));
        let mut c = config();
        c.algorithm = "none".into();
        assert!(matches!(
            Authenticator::new(&c),
            Err(AuthError::Algorithm(_))
        ));
        let mut c = config();
        c.cookie_name = "a;b".into();
        assert!(Authenticator::new(&c).is_err());
        let mut c = config();
        c.login_url = Some("javascript:alert(1)".into());
        assert!(Authenticator::new(&c).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(
            strip_cookie(&["x=1; c=2", "y=3"], "c").as_deref(),
            Some("x=1; y=3")
        );
        assert!(!host_ok("a b") && host_ok("[::1]:8080"));
    }
}
