//! Cookie authentication of HTTP routes (`AUTH_ENABLED`): nginx's `auth_request` asks the
//! daemon's auth endpoint (served on loopback in the test namespace) before proxying. A valid
//! ClearML token passes by cookie or bearer header and never reaches the task; expired, forged,
//! unsigned and wrong-key tokens are refused, browsers are sent to the login page.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use router_tests::http_client::{get, websocket, ws_roundtrip};
use router_tests::nginx::{ManagedDir, Rig, http_addr, in_netns, route, settings, wanted};
use router_tests::wait::until;
use router_userspace::config::AuthConfig;
use router_userspace::nginx::{Nginx, NginxHttpRouter};
use router_userspace::routes::{HttpMode, HttpRouter};
use serde_json::{Value, json};

const KEY: &[u8] = b"clearml-server-token-secret";
const COOKIE: &str = "clearml_token_basic";

fn auth_config() -> AuthConfig {
    AuthConfig {
        enabled: true,
        cookie_name: COOKIE.into(),
        secure_cookie: true,
        hmac_key: KEY.to_vec(),
        algorithm: "HS256".into(),
        login_url: Some("https://app.clearml.test/login?redirect={redirect}".into()),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims shaped like the ClearML server's `auth.login` token.
fn claims(exp_in: i64) -> Value {
    json!({
        "identity": {"user": "u-1234", "company": "c-5678", "role": "user",
                     "user_name": "Ada", "company_name": "Acme"},
        "iat": now(), "exp": now() + exp_in, "session_id": "s-1",
        "api_version": "2.31", "feature_set": "basic"
    })
}

fn sign(claims: &Value, alg: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

fn valid() -> String {
    sign(&claims(3600), Algorithm::HS256, KEY)
}

/// Tokens that must be refused, named.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let good = valid();
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims(3600);
    admin["identity"]["role"] = json!("admin");
    admin["identity"]["company"] = json!("other-company");
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(3600)).unwrap());
    let mut no_company = claims(3600);
    no_company["identity"]
        .as_object_mut()
        .unwrap()
        .remove("company");
    vec![
        ("expired", sign(&claims(-600), Algorithm::HS256, KEY)),
        (
            "forged payload",
            format!("{}.{forged_payload}.{}", parts[0], parts[2]),
        ),
        ("alg=none", format!("{none_header}.{payload}.")),
        (
            "alg=none with the old signature",
            format!("{none_header}.{payload}.{}", parts[2]),
        ),
        (
            "wrong key",
            sign(&claims(3600), Algorithm::HS256, b"another server's secret"),
        ),
        (
            "HS512 when HS256 is configured",
            sign(&claims(3600), Algorithm::HS512, KEY),
        ),
        ("no company", sign(&no_company, Algorithm::HS256, KEY)),
        ("garbage", "not.a.jwt".into()),
    ]
}

fn served(r: &router_tests::http_client::Response) -> bool {
    r.status == 200 && r.echo().is_ok()
}

#[test]
fn valid_tokens_pass_and_the_clearml_token_never_reaches_the_task() {
    in_netns("thaa", || {
        let mut rig = Rig::managed(Some(auth_config())).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        let token = valid();
        let cookie = format!("theme=dark; {COOKIE}={token}; _xsrf=2|abc");
        let r = until(
            "route served with a cookie",
            Duration::from_secs(15),
            || {
                get(
                    http_addr(),
                    "/service/taska/lab",
                    &[("Cookie", &cookie), ("X-ClearML-User", "spoofed")],
                )
                .ok()
                .filter(served)
            },
        );
        let e = r.echo().unwrap();
        assert_eq!(e.uri, "/lab");
        assert_eq!(
            e.headers.get("x-clearml-user").map(String::as_str),
            Some("u-1234")
        );
        assert_eq!(
            e.headers.get("x-clearml-company").map(String::as_str),
            Some("c-5678")
        );
        assert_eq!(
            e.headers.get("cookie").map(String::as_str),
            Some("theme=dark; _xsrf=2|abc"),
            "the ClearML cookie must be cut, the app's own kept"
        );
        assert_eq!(r.header("set-cookie"), None);

        // Bearer: passes, is not forwarded, and the browser gets the cookie (Secure).
        let bearer = format!("Bearer {token}");
        let r = get(
            http_addr(),
            "/service/taska/api",
            &[("Authorization", &bearer)],
        )
        .unwrap();
        assert!(served(&r), "{} {}", r.status, r.text());
        let e = r.echo().unwrap();
        assert_eq!(e.headers.get("authorization"), None);
        assert_eq!(
            e.headers.get("x-clearml-user").map(String::as_str),
            Some("u-1234")
        );
        let set = r
            .header("set-cookie")
            .expect("Set-Cookie for a bearer request");
        assert!(set.starts_with(&format!("{COOKIE}={token};")), "{set}");
        assert!(
            set.contains("HttpOnly") && set.ends_with("; Secure"),
            "{set}"
        );

        // The app's own Authorization passes untouched beside the ClearML cookie.
        let only_ours = format!("{COOKIE}={token}");
        let r = get(
            http_addr(),
            "/service/taska/",
            &[("Cookie", &only_ours), ("Authorization", "Basic YXBwOnB3")],
        )
        .unwrap();
        let e = r.echo().unwrap();
        assert_eq!(
            e.headers.get("authorization").map(String::as_str),
            Some("Basic YXBwOnB3")
        );
        assert_eq!(e.headers.get("cookie"), None);

        // WebSockets authenticate by cookie too (browsers cannot add headers to them).
        let mut ws = websocket(http_addr(), "/service/taska/ws", &[("Cookie", &only_ours)])
            .expect("handshake with cookie");
        assert_eq!(ws_roundtrip(&mut ws, "hello").unwrap(), "hello");
        match websocket(http_addr(), "/service/taska/ws", &[]) {
            Ok(_) => panic!("a WebSocket without a token was let through"),
            Err(e) => assert!(format!("{e:#}").contains("401"), "{e:#}"),
        }
    });
}

#[test]
fn expired_forged_unsigned_and_wrong_key_tokens_are_refused() {
    in_netns("thab", || {
        let mut rig = Rig::managed(Some(auth_config())).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        let good = format!("{COOKIE}={}", valid());
        until("route served", Duration::from_secs(15), || {
            get(http_addr(), "/service/taska/", &[("Cookie", &good)])
                .ok()
                .filter(served)
        });

        for (what, token) in bad_tokens() {
            let cookie = format!("{COOKIE}={token}");
            let bearer = format!("Bearer {token}");
            for header in [
                ("Cookie", cookie.as_str()),
                ("Authorization", bearer.as_str()),
            ] {
                let r = get(
                    http_addr(),
                    "/service/taska/",
                    &[header, ("Accept", "application/json")],
                )
                .unwrap();
                assert_eq!(r.status, 401, "{what} token in {}: {}", header.0, r.text());
                assert!(r.echo().is_err(), "{what}: the task was reached");
                assert!(
                    r.text().contains("ClearML sign-in required"),
                    "{}",
                    r.text()
                );
                assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer realm=\"task-router\"")
                );
            }
        }
        // No token at all.
        assert_eq!(
            get(http_addr(), "/service/taska/", &[]).unwrap().status,
            401
        );

        // A browser is sent to the ClearML login, with the way back.
        let r = get(
            http_addr(),
            "/service/taska/lab?x=1",
            &[
                ("Host", "router.example.com"),
                ("Accept", "text/html,application/xhtml+xml"),
            ],
        )
        .unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(
            r.header("location"),
            Some(
                "https://app.clearml.test/login?redirect=https%3A%2F%2Frouter.example.com%2Fservice%2Ftaska%2Flab%3Fx%3D1"
            )
        );
    });
}

#[test]
fn an_unreachable_auth_endpoint_lets_nothing_through() {
    in_netns("thac", || {
        let servers = router_tests::http_backend::Servers::new().expect("servers");
        let a = servers.backend("A").expect("backend");
        // Nothing listens on port 1 of the namespace's loopback.
        let dir = ManagedDir::new().expect("dir");
        let nginx = Nginx::managed(&dir.config()).expect("nginx");
        let mut router = NginxHttpRouter::with_settings(
            nginx.clone(),
            settings(Some("127.0.0.1:1".parse().unwrap())),
        );
        router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        let cookie = format!("{COOKIE}={}", valid());
        let r = until(
            "the route's location is live",
            Duration::from_secs(15),
            || {
                get(http_addr(), "/service/taska/", &[("Cookie", &cookie)])
                    .ok()
                    .filter(|r| r.status != 404)
            },
        );
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(r.echo().is_err());
    });
}

/// With authentication on, removing the last route must leave a configuration nginx accepts:
/// the route's URL stops serving (404), and a later route is served again. (The 401 location
/// reads a variable only the route locations define; a server without routes must not keep it,
/// or nginx refuses the file and the removed route stays live.)
#[test]
fn removing_the_last_route_with_auth_on_stops_serving_it() {
    in_netns("thad", || {
        let mut rig = Rig::managed(Some(auth_config())).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        let cookie = format!("{COOKIE}={}", valid());
        let served_at = |path: &str| {
            get(http_addr(), path, &[("Cookie", &cookie)])
                .ok()
                .filter(served)
        };
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply one route");
        until("the route is served", Duration::from_secs(15), || {
            served_at("/service/taska/")
        });

        rig.router
            .apply(&wanted(&[]))
            .expect("nginx accepts the configuration without routes");
        let gone = until("the route stops serving", Duration::from_secs(15), || {
            get(http_addr(), "/service/taska/", &[("Cookie", &cookie)])
                .ok()
                .filter(|r| !served(r))
        });
        assert_eq!(gone.status, 404, "{}", gone.text());

        rig.router
            .apply(&wanted(&[route("taskb", a.addr, HttpMode::Path)]))
            .expect("apply a route again");
        until("the new route is served", Duration::from_secs(15), || {
            served_at("/service/taskb/")
        });
    });
}

/// nginx with the auth check, and the authenticator behind it: its counters say which requests
/// reached the daemon and which nginx answered from its cache of the daemon's answers.
struct CachingRig {
    router: NginxHttpRouter,
    auth: std::sync::Arc<router_userspace::auth::Authenticator>,
    servers: router_tests::http_backend::Servers,
    /// Last: stops nginx (on drop) after everything else is gone.
    _dir: ManagedDir,
}

impl CachingRig {
    fn new() -> CachingRig {
        let servers = router_tests::http_backend::Servers::new().expect("servers");
        let auth = router_userspace::auth::Authenticator::shared(&auth_config()).expect("auth");
        let auth_addr = servers
            .serve(router_userspace::auth::router(auth.clone()))
            .expect("auth endpoint");
        let dir = ManagedDir::new().expect("dir");
        let nginx = Nginx::managed(&dir.config()).expect("nginx");
        let router = NginxHttpRouter::with_settings(nginx, settings(Some(auth_addr)));
        CachingRig {
            router,
            auth,
            servers,
            _dir: dir,
        }
    }

    /// The rig serving route `taska` (an echo backend), once a valid cookie reaches it.
    fn serving_a_route() -> CachingRig {
        let mut rig = CachingRig::new();
        let a = rig.servers.backend("A").expect("backend");
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        let warm = format!("{COOKIE}={}", valid());
        until("route served", Duration::from_secs(15), || {
            get(http_addr(), "/service/taska/", &[("Cookie", &warm)])
                .ok()
                .filter(served)
        });
        rig
    }

    /// `/auth` requests the daemon has answered.
    fn daemon_calls(&self) -> u64 {
        let s = self.auth.stats();
        s.allowed + s.denied
    }

    /// GET `path` with `headers`, and whether the daemon was asked.
    fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (router_tests::http_client::Response, bool) {
        let before = self.daemon_calls();
        let r = get(http_addr(), path, headers).expect("request");
        (r, self.daemon_calls() > before)
    }
}

fn token_for(user: &str, exp_in: i64) -> String {
    let mut c = claims(exp_in);
    c["identity"]["user"] = json!(user);
    sign(&c, Algorithm::HS256, KEY)
}

fn user_seen(r: &router_tests::http_client::Response) -> Option<String> {
    r.echo().ok()?.headers.get("x-clearml-user").cloned()
}

/// nginx reuses the daemon's yes only for a request carrying exactly the same credentials: a
/// forged token of the same user, asked right after the valid one was cached, is refused; a new
/// token is checked and passes with its own identity; the forwarded cookie is always the
/// request's own, the ClearML cookie cut, also when the answer comes from the cache.
#[test]
fn cached_answers_serve_only_the_same_credentials() {
    in_netns("thae", || {
        let rig = CachingRig::serving_a_route();
        let token = token_for("u-1234", 3600);
        let cookie = format!("theme=dark; {COOKIE}={token}");
        let (r, asked) = rig.get("/service/taska/", &[("Cookie", &cookie)]);
        assert!(served(&r), "{} {}", r.status, r.text());
        assert!(asked, "a new token was decided without the daemon");

        // The same request again: nginx answers from its cache, and still cuts the token.
        let (r, asked) = rig.get("/service/taska/x", &[("Cookie", &cookie)]);
        assert!(served(&r), "{} {}", r.status, r.text());
        assert!(
            !asked,
            "the same cookie again should be answered from nginx's cache"
        );
        let e = r.echo().unwrap();
        assert_eq!(user_seen(&r).as_deref(), Some("u-1234"));
        assert_eq!(
            e.headers.get("cookie").map(String::as_str),
            Some("theme=dark")
        );

        // Same user, not signed by the server: refused, right after the valid one was cached.
        let parts: Vec<&str> = token.split('.').collect();
        let mut admin = claims(3600);
        admin["identity"]["role"] = json!("admin");
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        for (what, forged) in [
            (
                "payload swapped",
                format!("{}.{payload}.{}", parts[0], parts[2]),
            ),
            (
                "wrong key",
                sign(&claims(3600), Algorithm::HS256, b"not the server's"),
            ),
            ("alg=none", format!("{none_header}.{}.", parts[1])),
            ("signature cut", format!("{}.{}.", parts[0], parts[1])),
        ] {
            let forged_cookie = format!("theme=dark; {COOKIE}={forged}");
            let (r, asked) = rig.get(
                "/service/taska/x",
                &[("Cookie", &forged_cookie), ("Accept", "application/json")],
            );
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            assert!(r.echo().is_err(), "{what}: the task was reached");
            assert!(asked, "{what}: decided without the daemon");
            let bearer = format!("Bearer {forged}");
            let (r, _) = rig.get("/service/taska/x", &[("Authorization", &bearer)]);
            assert_eq!(r.status, 401, "{what} as a bearer token: {}", r.text());
        }
        // Refusals are never reused: asked again, the daemon is asked again.
        let (r, asked) = rig.get("/service/taska/", &[]);
        assert_eq!(r.status, 401);
        assert!(asked, "a refusal was answered from the cache");

        // A new token: checked by the daemon, passes with its own identity.
        let other = format!("theme=dark; {COOKIE}={}", token_for("u-9999", 3600));
        let (r, asked) = rig.get("/service/taska/x", &[("Cookie", &other)]);
        assert!(served(&r), "{} {}", r.status, r.text());
        assert!(asked, "a new token was decided without the daemon");
        assert_eq!(user_seen(&r).as_deref(), Some("u-9999"));

        // The same token beside other cookies: the task gets this request's cookies.
        let light = format!("theme=light; {COOKIE}={token}; _xsrf=1");
        let (r, _) = rig.get("/service/taska/x", &[("Cookie", &light)]);
        assert_eq!(
            r.echo().unwrap().headers.get("cookie").map(String::as_str),
            Some("theme=light; _xsrf=1")
        );

        // A bearer answer comes from the cache whole: identity, the token cut, the cookie set.
        let bearer = format!("Bearer {token}");
        for round in ["first", "cached"] {
            let (r, asked) = rig.get("/service/taska/api", &[("Authorization", &bearer)]);
            assert!(served(&r), "{round}: {} {}", r.status, r.text());
            assert_eq!(asked, round == "first", "{round}: daemon asked = {asked}");
            assert_eq!(user_seen(&r).as_deref(), Some("u-1234"), "{round}");
            assert_eq!(
                r.echo().unwrap().headers.get("authorization"),
                None,
                "{round}"
            );
            let set = r.header("set-cookie").unwrap_or_default();
            assert!(
                set.starts_with(&format!("{COOKIE}={token};")),
                "{round}: {set}"
            );
        }
    });
}

/// A token accepted and cached a moment ago is refused once its `exp` has passed: nginx never
/// reuses a yes into the second the token expires, and the daemon allows no leeway on `exp`.
#[test]
fn a_token_that_just_expired_is_refused_though_its_yes_was_cached() {
    in_netns("thaf", || {
        let rig = CachingRig::serving_a_route();

        // Valid for 3 more seconds: accepted, then answered from nginx's cache.
        let mut short = claims(3);
        short["identity"]["user"] = json!("u-short");
        let exp = short["exp"].as_i64().unwrap();
        let cookie = format!("{COOKIE}={}", sign(&short, Algorithm::HS256, KEY));
        let (r, asked) = rig.get("/service/taska/", &[("Cookie", &cookie)]);
        assert!(served(&r), "{} {}", r.status, r.text());
        assert!(asked);
        let (r, asked) = rig.get("/service/taska/", &[("Cookie", &cookie)]);
        assert!(served(&r), "{} {}", r.status, r.text());
        assert!(!asked, "the yes was not cached");

        until(
            "the token's exp has passed",
            Duration::from_secs(10),
            || (now() >= exp).then_some(()),
        );
        let (r, asked) = rig.get(
            "/service/taska/",
            &[("Cookie", &cookie), ("Accept", "application/json")],
        );
        assert_eq!(r.status, 401, "an expired token passed: {}", r.text());
        assert!(r.echo().is_err());
        assert!(asked, "nginx decided on an expired token by itself");
    });
}
