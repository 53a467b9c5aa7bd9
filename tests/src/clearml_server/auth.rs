//! Credentials and tokens as the real server has them (clearml-server v2.3.0): `auth.login` takes
//! HTTP Basic `access_key:secret_key` and returns a JWT made by PyJWT's
//! `jwt.encode(payload, token_secret)` (`apiserver/service_repo/auth/payload/token.py:81-83`):
//! HS256 (PyJWT's default), the UTF-8 bytes of the `secure.auth.token_secret` string as the key.
//! The payload is `Token.to_dict(**extra)` (`service_repo/auth/dictable.py:13-20`: every public
//! property with a truthy value, then the extra claims): `auth_type` ("Bearer",
//! `payload/payload.py:13-15`, `payload/auth_type.py`), `identity` (`identity.py`: user, company,
//! role, user_name, company_name), `exp`, `iat` (datetimes PyJWT turns into seconds),
//! `session_id`, `env`, then `api_version`, `server_version`, `server_build` and `feature_set`
//! (`bll/auth/__init__.py:57-65`). Every other call carries `Authorization: Bearer <JWT>` (or
//! Basic credentials, which the real server accepts on any call).

use super::error::ApiError;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Who a credential or token belongs to (the token's `identity` claim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub company: String,
    pub role: String,
    pub user_name: String,
    pub company_name: String,
}

impl Identity {
    /// A new user (role `user`) of `company`, e.g. a tenant other than the server's own.
    pub fn in_company(company: &str) -> Identity {
        let user = super::store::new_id();
        Identity {
            user_name: format!("User {}", &user[..6]),
            user,
            company: company.into(),
            role: "user".into(),
            company_name: format!("company {company}"),
        }
    }
}

/// An API key pair and the user it logs in as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    pub secret_key: String,
    pub identity: Identity,
}

/// The claims of a token this server issues.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// `Payload.auth_type` of a bearer token.
    #[serde(default)]
    pub auth_type: String,
    pub identity: Identity,
    pub iat: i64,
    pub exp: i64,
    pub env: String,
    pub session_id: String,
    pub api_version: String,
    pub server_version: String,
    pub server_build: String,
    pub feature_set: String,
}

/// What a token says about the server (extra claims).
pub struct ServerClaims<'a> {
    pub api_version: &'a str,
    pub server_version: &'a str,
    pub server_build: &'a str,
    pub feature_set: &'a str,
}

impl Claims {
    /// The payload `auth.login` signs for `identity` at `iat`.
    pub fn new(
        identity: &Identity,
        session_id: &str,
        iat: i64,
        lifetime_secs: i64,
        server: &ServerClaims<'_>,
    ) -> Claims {
        Claims {
            auth_type: "Bearer".into(),
            identity: identity.clone(),
            iat,
            exp: iat + lifetime_secs,
            env: "<unknown>".into(),
            session_id: session_id.into(),
            api_version: server.api_version.into(),
            server_version: server.server_version.into(),
            server_build: server.server_build.into(),
            feature_set: server.feature_set.into(),
        }
    }
}

/// The header PyJWT writes (`json.dumps(header, separators=(",", ":"), sort_keys=True)`).
const PYJWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs `payload` as PyJWT's `jwt.encode(payload, secret)` does: its header, the compact JSON
/// payload, HMAC-SHA256 over `header.payload` with `secret` (the secret string's bytes) as the
/// key, all base64url without padding.
pub fn sign(secret: &[u8], payload: &impl Serialize) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let body = serde_json::to_vec(payload).unwrap_or_default();
    let message = format!("{}.{}", b64(PYJWT_HEADER.as_bytes()), b64(&body));
    sign_message(secret, &message)
}

/// `message.signature` with the HS256 signature of `message` (two base64url parts).
fn sign_message(secret: &[u8], message: &str) -> String {
    // HMAC over any bytes with any key cannot fail; an empty signature would surface as 401/30
    // on first use rather than a panic inside the server.
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap_or_default();
    format!("{message}.{signature}")
}

/// Verifies signature (HS256 only) and expiry (no leeway, like PyJWT) of a bearer token.
/// Tokens of the `expired` sessions are refused as expired (the admin's "expire every token"
/// fault; the real server revokes by `session_id` too).
pub fn verify_token(
    secret: &[u8],
    token: &str,
    expired: &std::collections::HashSet<String>,
) -> Result<Claims, ApiError> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret),
        &validation,
    )
    .map_err(|e| {
        let reason = match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "Signature has expired".into(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                "Signature verification failed".into()
            }
            _ => e.to_string(),
        };
        ApiError::invalid_token("invalid jwt token", &reason)
    })?;
    if expired.contains(&data.claims.session_id) {
        return Err(ApiError::invalid_token(
            "invalid jwt token",
            "Signature has expired",
        ));
    }
    Ok(data.claims)
}

/// Decodes the data of an `Authorization: Basic` header into (access key, secret key).
pub fn parse_basic(data: &str) -> Result<(String, String), ApiError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::bad_credentials(&e.to_string()))?;
    // The real server decodes as latin-1, which never fails.
    let text: String = raw.iter().map(|&b| b as char).collect();
    let (access, secret) = text.split_once(':').unwrap_or((text.as_str(), ""));
    Ok((access.to_string(), secret.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            user: "u".into(),
            company: "c".into(),
            role: "admin".into(),
            user_name: "User".into(),
            company_name: "Co".into(),
        }
    }

    const SERVER: ServerClaims<'static> = ServerClaims {
        api_version: "2.31",
        server_version: "2.0.0",
        server_build: "1",
        feature_set: "advanced",
    };

    #[test]
    fn token_round_trip_and_refusals() {
        let now = super::super::store::now_secs();
        let none = std::collections::HashSet::new();
        let t = sign(b"k", &Claims::new(&identity(), "s1", now, 60, &SERVER));
        let c = verify_token(b"k", &t, &none).expect("valid token");
        assert_eq!(c.identity, identity());
        assert_eq!(c.feature_set, "advanced");
        assert_eq!(c.auth_type, "Bearer");
        let e = verify_token(b"other", &t, &none).expect_err("wrong key");
        assert_eq!((e.code, e.subcode), (401, 30));
        let old = sign(
            b"k",
            &Claims::new(&identity(), "s2", now - 100, 10, &SERVER),
        );
        let e = verify_token(b"k", &old, &none).expect_err("expired");
        assert!(e.msg.contains("Signature has expired"), "{}", e.msg);
        let expired = std::collections::HashSet::from(["s1".to_string()]);
        let e = verify_token(b"k", &t, &expired).expect_err("expired by the admin");
        assert_eq!((e.code, e.subcode), (401, 30));
    }

    /// Made by PyJWT 2.15.1 (the SDK virtualenv's): `jwt.encode(payload, DEFAULT_TOKEN_SECRET)`.
    const PYJWT_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdXRoX3R5cGUiOiJCZWFyZXIiLCJpZGVudGl0eSI6eyJ1c2VyIjoidTEiLCJjb21wYW55IjoiZDFiZDkyYTNiMDM5NDAwY2JhZmM2MGE3YTViMWU1MmIiLCJyb2xlIjoiYWRtaW4iLCJ1c2VyX25hbWUiOiJVc2VyIiwiY29tcGFueV9uYW1lIjoiQ28ifSwiaWF0IjoxNzY3MjI1NjAwLCJleHAiOjQxMDI0NDQ4MDAsInNlc3Npb25faWQiOiJzMSIsImVudiI6Ijx1bmtub3duPiIsImFwaV92ZXJzaW9uIjoiMi4zNCIsInNlcnZlcl92ZXJzaW9uIjoiMi4zLjAiLCJzZXJ2ZXJfYnVpbGQiOiIxIiwiZmVhdHVyZV9zZXQiOiJiYXNpYyJ9.mGa_KqGyFEJDT-o2RJfPSREjyYm4dnoN6thA901cOhw";

    #[test]
    fn signs_byte_for_byte_as_pyjwt_with_the_secret_strings_bytes() {
        let secret = crate::clearml_server::DEFAULT_TOKEN_SECRET.as_bytes();
        let (message, _) = PYJWT_TOKEN.rsplit_once('.').unwrap();
        assert_eq!(sign_message(secret, message), PYJWT_TOKEN);
        assert!(
            message.starts_with(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(PYJWT_HEADER)
            )
        );
        let claims = verify_token(secret, PYJWT_TOKEN, &Default::default()).expect("verifies");
        assert_eq!(claims.identity.company, "d1bd92a3b039400cbafc60a7a5b1e52b");
        assert_eq!(claims.auth_type, "Bearer");
        // The secret is valid base64url: decoding it first (the JWKS reading) is another key.
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .expect("the default secret decodes silently");
        let e = verify_token(&decoded, PYJWT_TOKEN, &Default::default()).expect_err("other key");
        assert_eq!((e.code, e.subcode), (401, 30));
    }

    #[test]
    fn basic_credentials() {
        let enc = base64::engine::general_purpose::STANDARD.encode("AK:SK:x");
        assert_eq!(parse_basic(&enc).unwrap(), ("AK".into(), "SK:x".into()));
        let e = parse_basic("!!!").expect_err("not base64");
        assert_eq!((e.code, e.subcode), (401, 21));
    }
}
