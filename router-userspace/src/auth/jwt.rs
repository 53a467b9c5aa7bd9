//! Offline validation of the ClearML token: an HMAC-signed JWT (`auth.login`'s token, also the
//! webapp's cookie). The algorithm comes from the configuration, never from the token.
//!
//! `exp` is enforced to the second, with no leeway (like the ClearML server's own check): a
//! token is valid while now < `exp`, so nothing downstream (this daemon's cache, nginx's cache
//! of the answers, see `web`) ever has to trust one past it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthError, Identity};

/// Clock skew tolerated on `nbf` between the ClearML server and this host (a token used the
/// moment it was issued by a server whose clock runs ahead). `exp` gets none.
pub const NBF_LEEWAY_SECS: u64 = 10;
/// Larger "tokens" are refused before any parsing (ClearML's are well under 1 KiB).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The HMAC algorithm of `AUTH_JWT_ALGORITHM` (HS256, HS384, HS512; case-insensitive).
pub fn algorithm(name: &str) -> Result<Algorithm, AuthError> {
    match name.trim().to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        _ => Err(AuthError::Algorithm(name.to_string())),
    }
}

/// The decoded `AUTH_BASE64_JWKS_KEY`: the `k` of a JWKS `oct` key is base64url without
/// padding; padded and standard base64 are accepted too, since operators paste either.
pub fn decode_jwks_key(k: &str) -> Result<Vec<u8>, AuthError> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let trimmed = k.trim().trim_end_matches('=');
    let key = URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD.decode(k.trim()))
        .map_err(AuthError::KeyEncoding)?;
    if key.is_empty() {
        return Err(AuthError::NoKey);
    }
    Ok(key)
}

/// A verifier for one key and algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    identity: Option<IdentityClaims>,
    exp: u64,
}

#[derive(Deserialize)]
struct IdentityClaims {
    company: Option<String>,
    user: Option<String>,
    user_name: Option<String>,
    company_name: Option<String>,
    role: Option<String>,
}

impl Verifier {
    pub fn new(key: &[u8], alg: Algorithm) -> Result<Verifier, AuthError> {
        if key.is_empty() {
            return Err(AuthError::NoKey);
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = NBF_LEEWAY_SECS;
        // Checked in `verify`, without the leeway.
        validation.validate_exp = false;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Verifier {
            key: DecodingKey::from_secret(key),
            validation,
        })
    }

    /// The identity in a valid token and its `exp` (seconds since the epoch).
    pub fn verify(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    /// [`Verifier::verify`] as of `now`.
    fn verify_at(&self, token: &str, now: SystemTime) -> Result<(Identity, u64), AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(AuthError::Token)?;
        let exp = data.claims.exp;
        if !before(now, exp) {
            return Err(AuthError::Expired(exp));
        }
        let id = data.claims.identity.ok_or(AuthError::NoCompany)?;
        let company = id
            .company
            .filter(|c| !c.trim().is_empty())
            .ok_or(AuthError::NoCompany)?;
        Ok((
            Identity {
                user: id.user.unwrap_or_default(),
                company,
                user_name: id.user_name,
                company_name: id.company_name,
                role: id.role,
            },
            exp,
        ))
    }
}

/// Whether `now` is before the whole second `unix_secs` (seconds since the epoch) begins.
fn before(now: SystemTime, unix_secs: u64) -> bool {
    now < UNIX_EPOCH + Duration::from_secs(unix_secs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    pub const KEY: &[u8] = b"test-token-secret";

    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    pub fn claims(exp_in: i64) -> Value {
        json!({
            "identity": {"user": "u1", "company": "c1", "role": "user", "user_name": "Ada",
                         "company_name": "Acme"},
            "iat": now(), "exp": (now() as i64 + exp_in), "session_id": "s",
            "feature_set": "basic"
        })
    }

    pub fn sign(claims: &Value, alg: Algorithm, key: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
    }

    pub fn unsigned(claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        format!("{h}.{p}.")
    }

    fn verifier() -> Verifier {
        Verifier::new(KEY, Algorithm::HS256).unwrap()
    }

    #[test]
    fn a_valid_token_yields_its_identity() {
        let (id, exp) = verifier()
            .verify(&sign(&claims(3600), Algorithm::HS256, KEY))
            .unwrap();
        assert_eq!((id.user.as_str(), id.company.as_str()), ("u1", "c1"));
        assert!(exp > now());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = verifier();
        let expired = sign(&claims(-3600), Algorithm::HS256, KEY);
        let wrong_key = sign(&claims(3600), Algorithm::HS256, b"another secret");
        let wrong_alg = sign(&claims(3600), Algorithm::HS512, KEY);
        let none = unsigned(&claims(3600));
        // Forged: a valid token's payload swapped for another company's, signature kept.
        let good = sign(&claims(3600), Algorithm::HS256, KEY);
        let mut other = claims(3600);
        other["identity"]["company"] = json!("c2");
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        let mut no_company = claims(3600);
        no_company["identity"]["company"] = json!("");
        let no_company = sign(&no_company, Algorithm::HS256, KEY);
        let mut no_identity = claims(3600);
        no_identity.as_object_mut().unwrap().remove("identity");
        let no_identity = sign(&no_identity, Algorithm::HS256, KEY);
        let mut no_exp = claims(3600);
        no_exp.as_object_mut().unwrap().remove("exp");
        let no_exp = sign(&no_exp, Algorithm::HS256, KEY);
        let mut not_yet = claims(3600);
        not_yet["nbf"] = json!(now() + 600);
        let not_yet = sign(&not_yet, Algorithm::HS256, KEY);
        for (what, token) in [
            ("expired", expired),
            ("wrong key", wrong_key),
            ("HS512 when HS256 is configured", wrong_alg),
            ("alg=none", none),
            ("forged payload", forged),
            ("empty company", no_company),
            ("no identity", no_identity),
            ("no exp", no_exp),
            ("nbf in the future", not_yet),
            ("garbage", "a.b.c".to_string()),
            ("too long", "a".repeat(MAX_TOKEN_LEN + 1)),
        ] {
            assert!(v.verify(&token).is_err(), "{what} token accepted");
        }
    }

    #[test]
    fn small_clock_skew_is_tolerated_on_nbf_only() {
        let v = verifier();
        let mut skewed = claims(3600);
        skewed["nbf"] = json!(now() + NBF_LEEWAY_SECS / 2);
        assert!(v.verify(&sign(&skewed, Algorithm::HS256, KEY)).is_ok());
        let just_expired = sign(&claims(-1), Algorithm::HS256, KEY);
        assert!(matches!(
            v.verify(&just_expired),
            Err(AuthError::Expired(_))
        ));
    }

    #[test]
    fn a_token_is_valid_until_the_second_of_its_exp_begins() {
        let v = verifier();
        let exp = 2_000_000_000u64;
        let mut c = claims(0);
        c["exp"] = json!(exp);
        let token = sign(&c, Algorithm::HS256, KEY);
        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
        assert!(v.verify_at(&token, at(exp as f64 - 0.001)).is_ok());
        assert!(matches!(
            v.verify_at(&token, at(exp as f64)),
            Err(AuthError::Expired(e)) if e == exp
        ));
    }

    #[test]
    fn algorithms_come_from_config_only() {
        assert_eq!(algorithm("hs384").unwrap(), Algorithm::HS384);
        for bad in ["none", "RS256", "", "ES256"] {
            assert!(algorithm(bad).is_err(), "{bad} accepted");
        }
        assert!(Verifier::new(b"", Algorithm::HS256).is_err());
    }

    #[test]
    fn jwks_keys_decode_in_any_base64_flavour() {
        let raw = b"secret\xff\xfe key";
        let url = URL_SAFE_NO_PAD.encode(raw);
        let std = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decode_jwks_key(&url).unwrap(), raw);
        assert_eq!(decode_jwks_key(&format!("{url}==")).unwrap(), raw);
        assert_eq!(decode_jwks_key(&std).unwrap(), raw);
        assert!(decode_jwks_key("not base64 !").is_err());
        assert!(decode_jwks_key("").is_err());
    }
}
