//! The API errors the real server returns (`apiserver/apierrors/errors.conf`), with its message
//! layout: `<default message>[ (<extra>)][: key=value, ...]`, and `error_data` = the key/values.

use serde_json::{Map, Value};

/// One failed call: HTTP status = `code`, `meta.result_subcode` = `subcode`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub subcode: u32,
    pub msg: String,
    pub error_data: Map<String, Value>,
}

impl ApiError {
    /// An error with a fixed message and no data (e.g. a request the HTTP layer refused).
    pub fn plain(code: u16, subcode: u32, msg: impl Into<String>) -> ApiError {
        ApiError {
            code,
            subcode,
            msg: msg.into(),
            error_data: Map::new(),
        }
    }

    /// An error in the real server's `BaseError` layout.
    fn coded(
        code: u16,
        subcode: u32,
        default_msg: &str,
        extra: Option<&str>,
        data: &[(&str, Value)],
    ) -> ApiError {
        let mut msg = capitalize(default_msg);
        if let Some(extra) = extra {
            msg.push_str(&format!(" ({extra})"));
        }
        let mut error_data = Map::new();
        if !data.is_empty() {
            let parts: Vec<String> = data
                .iter()
                .map(|(k, v)| format!("{k}={}", format_kwarg(v)))
                .collect();
            msg.push_str(&format!(": {}", parts.join(", ")));
            for (k, v) in data {
                error_data.insert((*k).to_string(), v.clone());
            }
        }
        ApiError {
            code,
            subcode,
            msg,
            error_data,
        }
    }

    // 400 bad_request
    pub fn invalid_version(version: &str) -> ApiError {
        Self::coded(
            400,
            2,
            "request path has invalid version",
            None,
            &[("version", Value::from(version))],
        )
    }
    pub fn invalid_id(extra: &str, data: &[(&str, Value)]) -> ApiError {
        Self::coded(400, 10, "invalid object id", Some(extra), data)
    }
    pub fn missing_required_fields(missing: &[&str]) -> ApiError {
        let list = missing.iter().map(|m| Value::from(*m)).collect();
        Self::coded(
            400,
            11,
            "missing required fields",
            None,
            &[("missing", Value::Array(list))],
        )
    }
    pub fn validation(extra: impl AsRef<str>) -> ApiError {
        Self::coded(400, 12, "validation error", Some(extra.as_ref()), &[])
    }
    pub fn fields_value_error(extra: &str, data: &[(&str, Value)]) -> ApiError {
        Self::coded(400, 16, "invalid value for fields", Some(extra), data)
    }
    pub fn invalid_regex(pattern: &str) -> ApiError {
        Self::coded(
            400,
            21,
            "malformed regular expression",
            None,
            &[("regex", Value::from(pattern))],
        )
    }
    pub fn invalid_task_id(id: &str) -> ApiError {
        Self::coded(
            400,
            101,
            "invalid task id",
            None,
            &[("id", Value::from(id))],
        )
    }
    /// A task of another company, or none, looked up for writing (`get_task_with_write_access`
    /// raises with the whole query).
    pub fn invalid_task_id_of(id: &str, company: &str) -> ApiError {
        Self::coded(
            400,
            101,
            "invalid task id",
            None,
            &[("id", Value::from(id)), ("company", Value::from(company))],
        )
    }
    /// A status change the state machine refuses (`validate_status_change`).
    pub fn invalid_status_change(current: &str, new: &str) -> ApiError {
        Self::coded(
            400,
            110,
            "invalid task status",
            Some("Invalid status change"),
            &[
                ("current_status", Value::from(current)),
                ("new_status", Value::from(new)),
            ],
        )
    }
    pub fn invalid_task_status(expected: &str, status: &str) -> ApiError {
        Self::coded(
            400,
            110,
            "invalid task status",
            None,
            &[
                ("expected", Value::from(expected)),
                ("status", Value::from(status)),
            ],
        )
    }
    pub fn invalid_project_id(id: &str) -> ApiError {
        Self::coded(
            400,
            401,
            "invalid project id",
            None,
            &[("id", Value::from(id))],
        )
    }
    pub fn invalid_model_id(id: &str) -> ApiError {
        Self::coded(
            400,
            201,
            "invalid model id",
            None,
            &[("id", Value::from(id))],
        )
    }
    pub fn invalid_queue_id(id: &str) -> ApiError {
        Self::coded(
            400,
            701,
            "invalid queue id",
            None,
            &[("id", Value::from(id))],
        )
    }
    pub fn expected_unique_data(data: &[(&str, Value)]) -> ApiError {
        Self::coded(400, 801, "value combination already exists", None, data)
    }

    // 401 unauthorized
    pub fn bad_auth_type() -> ApiError {
        Self::coded(
            401,
            10,
            "unauthorized (bad authentication header type)",
            None,
            &[],
        )
    }
    pub fn no_credentials() -> ApiError {
        Self::coded(401, 20, "unauthorized (missing credentials)", None, &[])
    }
    pub fn bad_credentials(extra: &str) -> ApiError {
        Self::coded(
            401,
            21,
            "unauthorized (malformed credentials)",
            Some(extra),
            &[],
        )
    }
    pub fn invalid_credentials(extra: &str) -> ApiError {
        Self::coded(
            401,
            22,
            "unauthorized (invalid credentials)",
            Some(extra),
            &[],
        )
    }
    pub fn invalid_token(extra: &str, reason: &str) -> ApiError {
        Self::coded(
            401,
            30,
            "invalid token",
            Some(extra),
            &[("reason", Value::from(reason))],
        )
    }

    // 404: an endpoint name the server does not know (`ServiceRepo._resolve_endpoint_from_call`)
    pub fn unknown_endpoint(name: &str, version: &str) -> ApiError {
        Self::plain(
            404,
            0,
            format!("Unable to find endpoint for name {name} and version {version}"),
        )
    }

    // 500 server_error
    pub fn general(msg: impl Into<String>) -> ApiError {
        Self::plain(500, 0, msg)
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn format_kwarg(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(format_kwarg).collect();
            format!("({})", parts.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout_matches_the_real_server() {
        let e = ApiError::invalid_task_status("created", "in_progress");
        assert_eq!((e.code, e.subcode), (400, 110));
        assert_eq!(
            e.msg,
            "Invalid task status: expected=created, status=in_progress"
        );
        assert_eq!(e.error_data["status"], "in_progress");
        let e = ApiError::missing_required_fields(&["task"]);
        assert_eq!(e.msg, "Missing required fields: missing=(task)");
        let e = ApiError::invalid_token("invalid jwt token", "Signature has expired");
        assert_eq!(
            e.msg,
            "Invalid token (invalid jwt token): reason=Signature has expired"
        );
    }
}
