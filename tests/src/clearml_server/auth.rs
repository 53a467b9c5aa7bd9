//! Credentials and tokens as the real server has them: `auth.login` takes HTTP Basic
//! `access_key:secret_key` and returns an HS256 JWT whose claims are `identity{...}`, `iat`, `exp`,
//! `env`, `session_id` plus the extra claims the SDK reads without verifying (`api_version`,
//! `server_version`, `server_build`, `feature_set`). Every other call carries
//! `Authorization: Bearer <JWT>` (or Basic credentials, which the real server accepts on any call).

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

pub fn issue_token(
    secret: &[u8],
    identity: &Identity,
    session_id: &str,
    iat: i64,
    lifetime_secs: i64,
    server: &ServerClaims<'_>,
) -> String {
    let claims = Claims {
        identity: identity.clone(),
        iat,
        exp: iat + lifetime_secs,
        env: "<unknown>".into(),
        session_id: session_id.into(),
        api_version: server.api_version.into(),
        server_version: server.server_version.into(),
        server_build: server.server_build.into(),
        feature_set: server.feature_set.into(),
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    // Encoding fixed claims with an HMAC key cannot fail; an empty string would surface as
    // 401/30 on first use rather than a panic inside the server.
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
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
        let t = issue_token(b"k", &identity(), "s1", now, 60, &SERVER);
        let c = verify_token(b"k", &t, &none).expect("valid token");
        assert_eq!(c.identity, identity());
        assert_eq!(c.feature_set, "advanced");
        let e = verify_token(b"other", &t, &none).expect_err("wrong key");
        assert_eq!((e.code, e.subcode), (401, 30));
        let old = issue_token(b"k", &identity(), "s2", now - 100, 10, &SERVER);
        let e = verify_token(b"k", &old, &none).expect_err("expired");
        assert!(e.msg.contains("Signature has expired"), "{}", e.msg);
        let expired = std::collections::HashSet::from(["s1".to_string()]);
        let e = verify_token(b"k", &t, &expired).expect_err("expired by the admin");
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
