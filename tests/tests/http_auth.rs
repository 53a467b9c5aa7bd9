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
