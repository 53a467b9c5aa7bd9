//! What can go wrong configuring authentication or checking a token.

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "AUTH_BASE64_JWKS_KEY is empty: authentication needs the ClearML server's token secret"
    )]
    NoKey,
    #[error("AUTH_JWT_ALGORITHM {0:?} is not supported: use HS256, HS384 or HS512")]
    Algorithm(String),
    #[error("AUTH_BASE64_JWKS_KEY is not base64url")]
    KeyEncoding(#[source] base64::DecodeError),
    #[error("AUTH_COOKIE_NAME {0:?} is not a valid cookie name")]
    CookieName(String),
    #[error("AUTH_LOGIN_URL {0:?} is not an http(s) URL")]
    LoginUrl(String),
    #[error("the ClearML token is not valid")]
    Token(#[source] jsonwebtoken::errors::Error),
    #[error("the ClearML token expired (exp {0})")]
    Expired(u64),
    #[error("the ClearML token has no identity.company")]
    NoCompany,
    #[error("the ClearML token is too long")]
    TooLong,
}
