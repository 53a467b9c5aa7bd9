//! The HTTP side of an API call, in the real server's order (`request_handlers.py`,
//! `service_repo.py`, `validators.py`): parse the path, resolve the endpoint and version,
//! authorize (cookie turned into a Bearer header; explicit headers win), read the data (JSON
//! body, or the query string when the body is empty; `application/json-lines` = batch),
//! check required fields, run the handler, wrap the result in the envelope with HTTP status =
//! `result_code`. Faults set by the admin are served right after the path is parsed.

use super::Shared;
use super::auth::{self, Identity};
use super::error::ApiError;
use super::services::{self, Call};
use super::store::{FaultKind, new_id};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::{Arc, LazyLock};

/// Longest token lifetime a login may ask for (`max_expiration_sec`).
const MAX_EXPIRATION_SECS: i64 = 365 * 24 * 3600;

static PATH: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^/?(v(?P<v>\d+\.?\d+)/)?(?P<name>[a-zA-Z_]\w+\.[a-zA-Z_]\w+)/?$")
        .unwrap_or_else(|e| panic!("the endpoint path pattern is valid: {e}"))
});

struct Meta {
    /// The client accepts gzip: large answers are compressed, as the real server's
    /// flask-compress does (`CLEARML_COMPRESS_RESP`, 500-byte minimum).
    gzip: bool,
    id: String,
    trx: String,
    endpoint: String,
    requested: Value,
    actual: Value,
}

fn envelope(meta: &Meta, result: Result<Value, ApiError>) -> Response {
    let (code, subcode, msg, error_data, data) = match result {
        Ok(data) => (200, 0, "OK".to_string(), Map::new(), data),
        Err(e) => (e.code, e.subcode, e.msg, e.error_data, json!({})),
    };
    let body = json!({
        "meta": {
            "id": meta.id, "trx": meta.trx,
            "endpoint": {"name": meta.endpoint, "requested_version": meta.requested,
                         "actual_version": meta.actual},
            "result_code": code, "result_subcode": subcode, "result_msg": msg,
            "error_stack": null, "error_data": error_data,
        },
        "data": data,
    });
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = body.to_string();
    if meta.gzip && text.len() >= 500 {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if std::io::Write::write_all(&mut enc, text.as_bytes()).is_ok()
            && let Ok(zipped) = enc.finish()
        {
            return (
                status,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CONTENT_ENCODING, "gzip"),
                    (header::VARY, "Accept-Encoding"),
                ],
                zipped,
            )
                .into_response();
        }
    }
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Versions below 2.1 are printed as floats, later ones as strings (`make_version_number`).
fn version_value(v: (u32, u32)) -> Value {
    if v < (2, 1) {
        json!(format!("{}.{}", v.0, v.1).parse::<f64>().unwrap_or(0.0))
    } else {
        json!(format!("{}.{}", v.0, v.1))
    }
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    match s.split_once('.') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((s.parse().ok()?, 0)),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Query-string values as the real server converts them: digits → numbers, true/false →
/// booleans; a repeated key keeps its first value (`MultiDict.to_dict`).
fn query_data(uri: &Uri) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        if out.contains_key(&k) {
            continue;
        }
        let value = if v.replacen('.', "", 1).chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
            if v.contains('.') {
                v.parse::<f64>().map(Value::from).unwrap_or(Value::from(v))
            } else {
                v.parse::<i64>().map(Value::from).unwrap_or(Value::from(v))
            }
        } else if v.eq_ignore_ascii_case("true") {
            Value::Bool(true)
        } else if v.eq_ignore_ascii_case("false") {
            Value::Bool(false)
        } else {
            Value::from(v)
        };
        out.insert(k, value);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The call's object data and, for `application/json-lines`, the batch items.
type CallData = (Map<String, Value>, Option<Vec<Value>>);

/// The call data, or the error the real server answers for an unreadable body.
fn call_data(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Result<CallData, ApiError> {
    let content_type = header_str(headers, &["content-type"]).unwrap_or("");
    if content_type.starts_with("application/json-lines") {
        let mut items = Vec::new();
        let text = String::from_utf8_lossy(body);
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            match serde_json::from_str::<Value>(line) {
                Ok(v @ Value::Object(_)) => items.push(v),
                Ok(other) => {
                    return Err(ApiError::plain(
                        400,
                        0,
                        format!("json lines must contain objects, found: {other}"),
                    ));
                }
                Err(e) => {
                    return Err(ApiError::plain(
                        400,
                        0,
                        format!("Failed to decode JSON object: {e} in batch item #{i}"),
                    ));
                }
            }
        }
        return Ok((Map::new(), Some(items)));
    }
    let json_body =
        if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice::<Value>(body).map_err(|e| {
                ApiError::plain(400, 0, format!("Failed to decode JSON object: {e}"))
            })?)
        };
    let truthy = |v: &Value| match v {
        Value::Null | Value::Bool(false) => false,
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Bool(true) => true,
    };
    match json_body {
        Some(Value::Object(m)) if !m.is_empty() => Ok((m, None)),
        Some(v) if truthy(&v) => Err(ApiError::general("Data should be a dict")),
        _ => Ok((query_data(uri), None)),
    }
}

enum Auth {
    None,
    Identity(Identity),
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<Auth, ApiError> {
    let state = shared.lock();
    let explicit = header_str(headers, &["authorization"]).map(str::to_string);
    let value = match explicit
        .or_else(|| cookie(headers, &state.cookie_name).map(|c| format!("Bearer {c}")))
    {
        Some(v) => v,
        None => return Ok(Auth::None),
    };
    let (scheme, data) = value.split_once(' ').unwrap_or((value.as_str(), ""));
    match scheme {
        "Bearer" => {
            let claims = auth::verify_token(&state.token_secret, data, &state.expired_sessions)?;
            Ok(Auth::Identity(claims.identity))
        }
        "Basic" => {
            let (access, secret) = auth::parse_basic(data)?;
            state
                .credentials
                .iter()
                .find(|c| c.access_key == access && c.secret_key == secret)
                .map(|c| Auth::Identity(c.identity.clone()))
                .ok_or_else(|| {
                    ApiError::invalid_credentials("failed to locate provided credentials")
                })
        }
        _ => Err(ApiError::bad_auth_type()),
    }
}

/// Every API request (any method, any path outside `/_admin/`) comes here.
pub async fn api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::OPTIONS {
        return (StatusCode::OK, "").into_response();
    }
    if std::env::var_os("CLEARML_TEST_SERVER_TRACE").is_some() {
        eprintln!(
            "clearml-test-server: {method} {uri} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let id = new_id();
    let trx = header_str(&headers, &["x-clearml-trx", "x-trains-trx"])
        .map(str::to_string)
        .unwrap_or_else(|| id.clone());
    let gzip = header_str(&headers, &["accept-encoding"])
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut meta = Meta {
        gzip,
        id,
        trx,
        endpoint: String::new(),
        requested: version_value((1, 0)),
        actual: Value::Null,
    };
    let path = uri.path().to_string();
    let Some(caps) = PATH.captures(&path) else {
        return envelope(
            &meta,
            Err(ApiError::plain(
                400,
                0,
                format!("Invalid request path {path}"),
            )),
        );
    };
    let name = caps
        .name("name")
        .map(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    meta.endpoint = name.clone();
    let release = shared.lock().release;
    let requested = match caps.name("v") {
        None => release.api,
        Some(v) => match parse_version(v.as_str()) {
            Some(v) => v,
            None => return envelope(&meta, Err(ApiError::invalid_version(v.as_str()))),
        },
    };
    meta.requested = version_value(requested);

    let fault = {
        let mut state = shared.lock();
        *state.calls.entry(name.clone()).or_insert(0) += 1;
        state.take_fault(&name)
    };
    match fault {
        Some(FaultKind::Error { code, subcode, msg }) => {
            return envelope(&meta, Err(ApiError::plain(code, subcode, msg)));
        }
        Some(FaultKind::Malformed) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"meta\": {\"result_code\": 200, \"result_msg\": \"OK\"}, \"data\": {\"tas",
            )
                .into_response();
        }
        Some(FaultKind::Empty) => {
            return envelope(&meta, Ok(json!({"tasks": [], "total": 0})));
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }

    if headers.contains_key(header::CONTENT_ENCODING) {
        return envelope(
            &meta,
            Err(ApiError::plain(415, 0, "Content encoding is not supported")),
        );
    }

    let Some(endpoint) = services::find(&name, release.api).filter(|e| e.min_version <= requested)
    else {
        let v = format!("{}.{}", requested.0, requested.1);
        return envelope(&meta, Err(ApiError::unknown_endpoint(&name, &v)));
    };
    meta.actual = version_value(endpoint.min_version);

    let identity = match authorize(&shared, &headers) {
        Ok(Auth::Identity(i)) => Some(i),
        Ok(Auth::None) if endpoint.authorize => {
            return envelope(&meta, Err(ApiError::no_credentials()));
        }
        Ok(Auth::None) => None,
        Err(e) if endpoint.authorize => return envelope(&meta, Err(e)),
        Err(_) => None,
    };

    let (data, batch) = match call_data(&headers, &uri, &body) {
        Ok(d) => d,
        Err(e) => return envelope(&meta, Err(e)),
    };
    let missing: Vec<&str> = endpoint
        .required
        .iter()
        .copied()
        .filter(|f| !data.contains_key(*f))
        .collect();
    if !missing.is_empty() {
        return envelope(&meta, Err(ApiError::missing_required_fields(&missing)));
    }

    let mut state = shared.lock();
    let identity = identity.unwrap_or_else(|| state.identity());
    if name == "auth.login" {
        let lifetime = data
            .get("expiration_sec")
            .and_then(Value::as_i64)
            .filter(|s| *s > 0)
            .unwrap_or(state.token_lifetime_secs)
            .min(MAX_EXPIRATION_SECS);
        let token = state.issue_token(&identity, lifetime);
        let cookie_name = state.cookie_name.clone();
        drop(state);
        let mut resp = envelope(&meta, Ok(json!({"token": token})));
        // `apiserver.auth.cookies` (apiserver.conf:75-81): HttpOnly, no Domain, SameSite=Lax.
        let cookie =
            format!("{cookie_name}={token}; Max-Age={lifetime}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        return resp;
    }
    let call = Call {
        data,
        batch,
        identity,
    };
    let result = (endpoint.handler)(&mut state, &call);
    drop(state);
    envelope(&meta, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_convert_like_flask() {
        let uri: Uri =
            "/v2.31/users.get_vaults?enabled=true&types=config&types=other&n=5&f=1.5&s=a%20b"
                .parse()
                .unwrap();
        let q = query_data(&uri);
        assert_eq!(q["enabled"], json!(true));
        assert_eq!(q["types"], json!("config"));
        assert_eq!(q["n"], json!(5));
        assert_eq!(q["f"], json!(1.5));
        assert_eq!(q["s"], json!("a b"));
    }

    #[test]
    fn paths() {
        let c = PATH.captures("/v2.31/tasks.get_all").unwrap();
        assert_eq!(&c["name"], "tasks.get_all");
        assert_eq!(&c["v"], "2.31");
        assert!(PATH.captures("/tasks.get_all/").is_some());
        assert!(PATH.captures("/v2/tasks.get_all").is_none());
        assert!(PATH.captures("/tasks").is_none());
    }
}
