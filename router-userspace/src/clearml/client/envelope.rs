//! The ClearML response envelope (`meta` + `data`) read into `data` or a typed error.

use crate::clearml::error::ApiError;
use serde_json::{Map, Value};

/// Parses the ClearML response envelope; returns `data` on success.
pub(super) fn parse_envelope(
    call: &str,
    status: u16,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let excerpt = || crate::validate::truncate(String::from_utf8_lossy(body).trim());
    let Ok(value) = parsed else {
        if status == 401 {
            return Err(ApiError::Unauthorized {
                call: call.into(),
                status,
                code: 401,
                subcode: 0,
                message: excerpt(),
            });
        }
        if (200..300).contains(&status) {
            return Err(ApiError::Malformed {
                call: call.into(),
                reason: format!("not JSON: {:?}", excerpt()),
            });
        }
        return Err(ApiError::Server {
            call: call.into(),
            status,
            code: i64::from(status),
            subcode: 0,
            message: excerpt(),
        });
    };
    let meta = value.get("meta");
    let code = meta
        .and_then(|m| m.get("result_code"))
        .and_then(Value::as_i64)
        .unwrap_or(i64::from(status));
    let subcode = meta
        .and_then(|m| m.get("result_subcode"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let message = meta
        .and_then(|m| m.get("result_msg"))
        .and_then(Value::as_str)
        .map(crate::validate::truncate)
        .unwrap_or_default();
    if status == 401 || code == 401 {
        return Err(ApiError::Unauthorized {
            call: call.into(),
            status,
            code,
            subcode,
            message,
        });
    }
    if !(200..300).contains(&status) || code != 200 {
        return Err(ApiError::Server {
            call: call.into(),
            status,
            code,
            subcode,
            message,
        });
    }
    match value.get("data") {
        Some(Value::Object(data)) => Ok(data.clone()),
        _ => Err(ApiError::Malformed {
            call: call.into(),
            reason: "no data object in the answer".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_success_and_errors() {
        let ok =
            br#"{"meta":{"result_code":200,"result_subcode":0,"result_msg":"OK"},"data":{"x":1}}"#;
        assert_eq!(parse_envelope("c", 200, ok).unwrap()["x"], 1);
        let e = parse_envelope(
            "tasks.get_by_id",
            400,
            br#"{"meta":{"result_code":400,"result_subcode":101,"result_msg":"Invalid task id"},"data":{}}"#,
        )
        .unwrap_err();
        assert_eq!(e.codes(), Some((400, 101)));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("tasks.get_by_id"), "{e}");
        let e = parse_envelope(
            "c",
            401,
            br#"{"meta":{"result_code":401,"result_subcode":30}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized { subcode: 30, .. }));
        let e = parse_envelope("c", 500, b"<html>oops</html>").unwrap_err();
        assert!(matches!(e, ApiError::Server { status: 500, .. }) && e.is_transient());
        let e = parse_envelope("c", 200, b"{\"meta\": {\"result_code\": 200}, \"da").unwrap_err();
        assert!(matches!(e, ApiError::Malformed { .. }) && e.is_transient());
        let e = parse_envelope("c", 200, br#"{"meta":{"result_code":200}}"#).unwrap_err();
        assert!(matches!(e, ApiError::Malformed { .. }));
        // A 200 whose envelope says error is an error.
        let e = parse_envelope("c", 200, br#"{"meta":{"result_code":500},"data":{}}"#).unwrap_err();
        assert!(matches!(e, ApiError::Server { code: 500, .. }));
    }
}
