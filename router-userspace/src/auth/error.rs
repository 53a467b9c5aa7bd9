//! What can go wrong configuring authentication or checking a token.

use super::refusal::RefusalReason;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "AUTH_BASE64_JWKS_KEY is empty: authentication needs the ClearML server's token secret"
    )]
    NoKey,
    #[error("AUTH_JWT_ALGORITHM {0:?} is not supported: use HS256, HS384 or HS512")]
    Algorithm(String),
    #[error("AUTH_COOKIE_NAME {0:?} is not a valid cookie name")]
    CookieName(String),
    #[error("AUTH_LOGIN_URL {0:?} is not an http(s) URL")]
    LoginUrl(String),
    #[error("the ClearML token is not valid")]
    Token(#[source] jsonwebtoken::errors::Error),
    #[error(
        "the ClearML token's signature matches neither AUTH_BASE64_JWKS_KEY as written nor its \
         base64url decoding"
    )]
    KeyMismatch,
    #[error("the ClearML token expired (exp {0})")]
    Expired(u64),
    #[error("the ClearML token has no identity.company")]
    NoCompany,
    #[error("the ClearML token is too long")]
    TooLong,
}

impl AuthError {
    /// What a request refused for this counts as.
    pub fn reason(&self) -> RefusalReason {
        match self {
            AuthError::Expired(_) => RefusalReason::Expired,
            AuthError::KeyMismatch => RefusalReason::BadSignature,
            AuthError::Token(e)
                if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) =>
            {
                RefusalReason::BadSignature
            }
            _ => RefusalReason::Malformed,
        }
    }

    /// A signature that does not match the key (and may match another form of it).
    pub fn is_signature_mismatch(&self) -> bool {
        matches!(self, AuthError::Token(e)
            if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature))
    }
}
