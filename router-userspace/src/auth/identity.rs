//! The identity a ClearML token carries (shared by the verifier, the cache and the answers).

/// Who a valid token says the caller is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub user: String,
    pub company: String,
    pub user_name: Option<String>,
    pub company_name: Option<String>,
    pub role: Option<String>,
}
