//! Property tests of the authentication input (JWT cookies and bearer tokens, `Cookie`
//! headers, the redirect target) against hostile values: no input panics; a token is accepted
//! only when it is exactly a validly signed one (any changed character is refused with a typed
//! error); what the router sends on (forwarded cookies, `Set-Cookie`, the login redirect) never
//! carries the ClearML token or header-breaking bytes.

use super::jwt::tests::{KEY, claims, now, sign};
use super::*;
use crate::proptest_config as config;
use jsonwebtoken::Algorithm;
use proptest::prelude::*;
use serde_json::json;

const COOKIE: &str = "clearml_token_basic";

fn authenticator() -> Authenticator {
    Authenticator::new(&AuthConfig {
        enabled: true,
        cookie_name: COOKIE.into(),
        secure_cookie: true,
        hmac_key: KEY.to_vec(),
        algorithm: "HS256".into(),
        login_url: Some("https://app.example.com/login?redirect={redirect}".into()),
    })
    .expect("authenticator")
}

fn verifier() -> Verifier {
    Verifier::new(KEY, Algorithm::HS256).expect("verifier")
}

/// Text that looks like a JWT: three dot-separated base64url-ish parts, or anything.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "(?s).{0,200}",
        "[A-Za-z0-9_=-]{0,60}\\.[A-Za-z0-9_=+/-]{0,120}\\.[A-Za-z0-9_=-]{0,60}",
        "eyJ[A-Za-z0-9_-]{0,40}(\\.[A-Za-z0-9_-]{0,80}){0,4}",
    ]
}

fn identity_claims() -> impl Strategy<Value = serde_json::Value> {
    (
        "(?s).{0,40}",
        "(?s).{1,40}",
        prop::option::of("(?s).{0,20}"),
        prop::option::of("(?s).{0,20}"),
        60i64..86_400,
    )
        .prop_map(|(user, company, user_name, role, exp_in)| {
            json!({
                "identity": {"user": user, "company": company, "user_name": user_name,
                             "role": role},
                "iat": now(), "exp": now() as i64 + exp_in,
            })
        })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary and JWT-shaped strings are refused with a typed error, never accepted.
    #[test]
    fn garbage_tokens_are_refused(token in token_like()) {
        let e = verifier().verify(&token).expect_err("garbage accepted");
        prop_assert!(!e.to_string().is_empty());
    }

    /// Validly signed tokens round-trip their identity (a blank company is refused by name).
    #[test]
    fn signed_tokens_yield_their_identity(claims in identity_claims()) {
        let token = sign(&claims, Algorithm::HS256, KEY);
        let company = claims["identity"]["company"].as_str().unwrap_or_default();
        match verifier().verify(&token) {
            Ok((id, exp)) => {
                prop_assert_eq!(id.company.as_str(), company);
                prop_assert_eq!(id.user.as_str(), claims["identity"]["user"].as_str().unwrap_or_default());
                prop_assert_eq!(exp as i64, claims["exp"].as_i64().unwrap_or_default());
            }
            Err(AuthError::NoCompany) => prop_assert!(company.trim().is_empty()),
            Err(e) => prop_assert!(false, "valid token refused: {}", crate::error::error_chain(&e)),
        }
    }

    /// Structure-aware: one character of a valid token changed, dropped or added: refused.
    #[test]
    fn any_edit_of_a_valid_token_is_refused(
        at in any::<prop::sample::Index>(),
        edit in 0u8..3,
        with in prop::sample::select(vec!['A', 'B', 'a', '0', '_', '-', '.', '=', '+', '/', ' ', 'é']),
    ) {
        let token = sign(&claims(3600), Algorithm::HS256, KEY);
        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len());
        match edit {
            0 => {
                prop_assume!(chars[i] != with);
                chars[i] = with;
            }
            1 => {
                chars.remove(i);
            }
            _ => chars.insert(i, with),
        }
        let edited: String = chars.into_iter().collect();
        prop_assert!(verifier().verify(&edited).is_err(), "edited token accepted: {edited}");
    }

    /// Hostile `Cookie` / `Authorization` / redirect headers: a decision, never a panic; the
    /// ClearML cookie is never forwarded; what goes back to the browser stays one header.
    #[test]
    fn hostile_request_headers_are_decided_safely(
        cookies in prop::collection::vec(
            prop_oneof![
                "(?s).{0,80}",
                "([a-z_]{0,12}=[^;]{0,20}; ?){0,4}",
                Just(format!("{COOKIE}=; {COOKIE}=\"x\"; a=b")),
            ],
            0..3,
        ),
        authorization in prop::option::of(prop_oneof![
            "(?s).{0,60}",
            token_like().prop_map(|t| format!("Bearer {t}")),
            Just(format!("bEaReR   {}  ", sign(&claims(3600), Algorithm::HS256, KEY))),
        ]),
        uri in prop::option::of("(?s).{0,60}"),
        host in prop::option::of("(?s).{0,40}"),
    ) {
        let a = authenticator();
        let cookie_refs: Vec<&str> = cookies.iter().map(String::as_str).collect();
        let d = a.check(&Request {
            cookies: cookie_refs,
            authorization: authorization.as_deref(),
            accept: Some("text/html"),
            method: Some("GET"),
            uri: uri.as_deref(),
            host: host.as_deref(),
            proto: Some("https"),
            company: None,
        });
        if let Some(fwd) = &d.forward_cookie {
            for pair in fwd.split(';') {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                prop_assert_ne!(name, COOKIE, "forwarded: {}", fwd);
            }
        }
        if let Some(set) = &d.set_cookie {
            prop_assert!(set.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{set:?}");
            prop_assert!(d.via == Some(Via::Bearer));
        }
        if let Some(login) = &d.login {
            prop_assert!(login.bytes().all(|b| b.is_ascii_graphic()), "{login:?}");
            prop_assert!(login.starts_with("https://app.example.com/login?redirect="));
        }
        prop_assert_eq!(d.allowed(), d.identity.is_some());
    }
}

#[test]
fn oversized_and_deeply_nested_tokens_are_refused() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let v = verifier();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    for payload in [nested.as_bytes(), &[0xff; 6000][..], b"{\"exp\": 1e999}"] {
        let token = format!("{header}.{}.sig", URL_SAFE_NO_PAD.encode(payload));
        assert!(v.verify(&token).is_err());
    }
}
