//! Property tests of the ClearML client's decoding of untrusted answers: the response
//! envelope, task lists and their entries (runtime dicts of any shape), tokens, and garbage,
//! huge or deeply nested JSON. No answer panics; a bad one is a typed [`ApiError`] naming the
//! call and what was wrong; valid answers still decode to what they hold.

use super::Client;
use super::auth::{refresh_time, unverified_claims};
use super::envelope::parse_envelope;
use crate::clearml::{ApiError, Task};
use crate::config::ClearmlConfig;
use crate::proptest_config as config;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "(?s).{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("(?s).{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A task entry: mostly well-shaped, with fields of any type mixed in.
fn task_entry() -> impl Strategy<Value = Value> {
    let runtime_key = prop_oneof![
        prop::sample::select(vec![
            "_SERVICE",
            "_PORT",
            "_ADDRESS",
            "external_tcp_port",
            "external_address",
            "_ROUTER_NAME",
            "_ROUTER_ENDPOINT_MODE",
            "endpoint",
            "upstream_task_port",
        ])
        .prop_map(str::to_string),
        "(_PORT|_ADDRESS|_SERVICE)__[A-Za-z0-9_.é -]{0,10}",
        "(?s).{0,10}",
    ];
    let runtime = prop::collection::btree_map(runtime_key, json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    (
        prop_oneof![4 => "[a-f0-9]{1,32}".prop_map(Value::String), 1 => json_value()],
        prop_oneof![3 => "(?s).{0,20}".prop_map(Value::String), 1 => json_value()],
        prop_oneof![3 => Just(json!("in_progress")), 1 => json_value()],
        prop_oneof![3 => Just(json!(["external_service"])), 1 => json_value()],
        prop_oneof![3 => runtime, 1 => json_value()],
        prop_oneof![Just(json!({"queue": "q1"})), json_value()],
    )
        .prop_map(|(id, name, status, tags, runtime, execution)| {
            json!({"id": id, "name": name, "status": status, "system_tags": tags,
                   "runtime": runtime, "execution": execution})
        })
}

fn check_error(call: &str, e: &ApiError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(text.contains(call), "{text}");
    if let ApiError::Malformed { reason, .. } = e {
        prop_assert!(!reason.is_empty());
    }
    // The excerpt of a hostile body is bounded (80 characters, each at most `\u{10ffff}`
    // once escaped).
    prop_assert!(
        text.chars().count() < 1200,
        "{} chars",
        text.chars().count()
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes with any status: a typed error naming the call, or `data`.
    #[test]
    fn arbitrary_answers_are_typed_errors(
        status in prop_oneof![Just(200u16), Just(401), Just(500), 100u16..600],
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            "(?s).{0,300}".prop_map(String::into_bytes),
        ],
    ) {
        match parse_envelope("tasks.get_all", status, &body) {
            Ok(data) => prop_assert!((200..300).contains(&status), "data from HTTP {status}: {data:?}"),
            Err(e) => check_error("tasks.get_all", &e)?,
        }
    }

    /// Envelopes of any shape: success only for a 2xx whose `meta.result_code` is 200 (or
    /// absent) and whose `data` is an object; the codes of an error envelope are kept.
    #[test]
    fn envelopes_of_any_shape_decode_or_fail_by_code(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(500), 100u16..600],
        meta in prop_oneof![json_value(), (any::<i16>(), any::<i16>(), "(?s).{0,200}").prop_map(
            |(c, s, m)| json!({"result_code": c, "result_subcode": s, "result_msg": m}))],
        data in json_value(),
    ) {
        let body = serde_json::to_vec(&json!({"meta": meta, "data": data})).expect("encode");
        let code = meta.get("result_code").and_then(Value::as_i64);
        match parse_envelope("tasks.get_all", status, &body) {
            Ok(got) => {
                prop_assert!((200..300).contains(&status));
                prop_assert!(code.is_none_or(|c| c == 200));
                // As serde_json reads it (floats need not round-trip exactly).
                let sent: Value = serde_json::from_slice(&body).expect("decode");
                prop_assert_eq!(Some(&Value::Object(got)), sent.get("data"));
            }
            Err(e) => {
                check_error("tasks.get_all", &e)?;
                if let (Some(c), Some((got, _))) = (code, e.codes()) {
                    prop_assert_eq!(got, c);
                }
            }
        }
    }

    /// Task entries of any shape: read leniently (a string id is all that is needed); the
    /// runtime is kept as sent when it is an object.
    #[test]
    fn task_entries_read_leniently(entry in prop_oneof![4 => task_entry(), 1 => json_value()]) {
        match Task::from_json(&entry) {
            Ok(task) => {
                prop_assert_eq!(Some(task.id.as_str()), entry.get("id").and_then(Value::as_str));
                if let Some(Value::Object(rt)) = entry.get("runtime") {
                    prop_assert_eq!(&task.runtime, rt);
                }
                for key in task.runtime.keys() {
                    let _ = task.runtime_str(key);
                }
            }
            Err(reason) => {
                prop_assert!(reason.contains("task entry"), "{reason}");
                prop_assert!(entry.get("id").and_then(Value::as_str).is_none());
            }
        }
    }

    /// Whatever `auth.login` hands out as a token, a refresh time comes out (no overflow).
    #[test]
    fn any_token_gets_a_refresh_time(
        token in prop_oneof![
            "(?s).{0,80}",
            (json_value(), any::<f64>(), any::<f64>()).prop_map(|(extra, exp, iat)| {
                use base64::Engine as _;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let claims = json!({"exp": if exp.is_finite() { json!(exp) } else { json!(null) },
                                    "iat": if iat.is_finite() { json!(iat) } else { json!(null) },
                                    "x": extra});
                format!("h.{}.s", e.encode(claims.to_string()))
            }),
        ],
    ) {
        let now = SystemTime::now();
        let _ = refresh_time(unverified_claims(&token).as_ref(), now);
    }
}

#[test]
fn huge_and_deeply_nested_answers_are_malformed_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let deep_data = format!(
        "{{\"meta\":{{\"result_code\":200}},\"data\":{{\"tasks\":{}}}}}",
        deep
    );
    for body in [
        deep.as_bytes(),
        deep_object.as_bytes(),
        deep_data.as_bytes(),
    ] {
        let e = parse_envelope("tasks.get_all", 200, body).expect_err("nested");
        assert!(matches!(e, ApiError::Malformed { .. }), "{e}");
    }
    // 8 MiB of one string: decoded, its excerpt in an error stays short.
    let huge = format!("\"{}\"", "x".repeat(8 << 20));
    let e = parse_envelope("tasks.get_all", 500, huge.as_bytes()).expect_err("500");
    assert!(e.to_string().len() < 1200, "{} bytes", e.to_string().len());
    let e = parse_envelope("tasks.get_all", 200, huge.as_bytes()).expect_err("not an envelope");
    assert!(matches!(e, ApiError::Malformed { .. }), "{e}");
}

/// Task lists end to end through the client (HTTP, envelope, `data.tasks`, entries, paging)
/// against a server answering generated lists: tasks with string ids come out once each,
/// the others are counted as skipped, and a list that is not a list is a typed error.
#[test]
fn generated_task_lists_decode_through_the_client() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::sync::{Arc, Mutex};

    let cases = config(200).cases;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let answer: Arc<Mutex<Value>> = Arc::default();
        let served = answer.clone();
        let app = axum::Router::new().route(
            "/v2.31/{call}",
            axum::routing::post(
                move |axum::extract::Path(call): axum::extract::Path<String>| {
                    let served = served.clone();
                    async move {
                        let data = if call == "auth.login" {
                            json!({"token": "opaque"})
                        } else {
                            served.lock().map(|v| v.clone()).unwrap_or_default()
                        };
                        axum::Json(json!({"meta": {"result_code": 200}, "data": data}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new(&ClearmlConfig {
            request_timeout: Duration::from_secs(5),
            ..crate::clearml::mock::client_config(&url)
        })
        .expect("client");
        let lists = prop_oneof![
            4 => prop::collection::vec(prop_oneof![6 => task_entry(), 1 => json_value()], 0..20)
                .prop_map(|tasks| json!({"tasks": tasks})),
            1 => json_value().prop_map(|v| json!({"tasks": v})),
            1 => json_value(),
        ];
        let mut runner = TestRunner::deterministic();
        for case in 0..cases {
            let data = lists.new_tree(&mut runner).expect("generate").current();
            *answer.lock().expect("lock") = data.clone();
            let result = client.tasks_requesting_endpoints(&[], &[]).await;
            match (data.get("tasks").and_then(Value::as_array), result) {
                (Some(entries), Ok((tasks, skipped))) => {
                    let mut ids: Vec<&str> = entries
                        .iter()
                        .filter_map(|e| e.get("id")?.as_str())
                        .collect();
                    let with_id = ids.len();
                    ids.sort_unstable();
                    ids.dedup();
                    assert_eq!(tasks.len(), ids.len(), "case {case}: {data}");
                    assert_eq!(skipped, entries.len() - with_id, "case {case}");
                }
                (None, Err(e)) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("tasks.get_all") && text.contains("data"),
                        "{text}"
                    );
                }
                (list, other) => panic!("case {case}: list {list:?} gave {other:?}"),
            }
        }
        server.abort();
    });
}
