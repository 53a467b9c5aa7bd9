//! The HTTP client: envelope parsing, token lifecycle, paging, read-merge-write.

use super::error::ApiError;
use super::task::{EXTERNAL_SERVICE_TAG, IN_PROGRESS, ONLY_FIELDS, Task, runtime_str};
use crate::config::ClearmlConfig;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The API version put in request paths (`/v2.31/tasks.get_all`). Servers resolve the highest
/// endpoint version at or below it, and accept higher versions unless configured not to.
pub const API_VERSION: &str = "2.31";
/// The server clamps pages to 500 without saying so; never ask for more.
pub const MAX_PAGE_SIZE: usize = 500;
/// Attempts of one read-merge-write before giving up until the next cycle.
pub const WRITE_ATTEMPTS: u32 = 3;
/// The pause between the two reads before a write: a task writing its runtime in a burst (the SDK
/// requesting several endpoints) shows as a runtime that moved between them.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How many times a write starts over because the task's runtime moved before giving up until
/// the next cycle.
pub const SETTLE_ROUNDS: u32 = 5;
/// A token is refreshed when less than this remains (the SDK's default threshold).
const REFRESH_THRESHOLD: Duration = Duration::from_secs(60);

struct Token {
    jwt: String,
    /// Wall clock, since `exp` is.
    refresh_at: SystemTime,
}

/// Call counters for status and metrics.
#[derive(Debug, Default)]
pub struct ApiStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub logins: AtomicU64,
    pub last_latency_us: AtomicU64,
    /// Writes of the task seen between our reads and our write (each one handled: merged or
    /// repaired), for status and metrics.
    pub concurrent_writes: AtomicU64,
    /// Latency of every call by endpoint and outcome.
    latency: std::sync::Mutex<std::collections::BTreeMap<(String, String), ApiCallStats>>,
}

/// Upper bounds (seconds) of the API latency histogram's buckets (then +Inf).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Latency histogram of the calls to one endpoint with one outcome.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApiCallStats {
    /// `tasks.get_all_ex`, `auth.login`, ...
    pub endpoint: String,
    /// The HTTP status answered, or `timeout`, `unreachable`, `malformed` when none was.
    pub status: String,
    pub count: u64,
    pub sum_seconds: f64,
    /// Calls per bucket of [`LATENCY_BUCKETS`], then the +Inf bucket (not cumulative).
    pub buckets: Vec<u64>,
}

impl ApiCallStats {
    fn observe(&mut self, seconds: f64) {
        if self.buckets.len() != LATENCY_BUCKETS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// The status label of a call's outcome.
fn status_label(result: &Result<Map<String, Value>, ApiError>) -> String {
    match result {
        Ok(_) => "200".into(),
        Err(ApiError::Unauthorized { status, .. } | ApiError::Server { status, .. }) => {
            status.to_string()
        }
        Err(ApiError::Timeout { .. }) => "timeout".into(),
        Err(ApiError::Transport { .. }) => "unreachable".into(),
        Err(ApiError::Malformed { .. }) => "malformed".into(),
        Err(e) => e.class(),
    }
}

impl ApiStats {
    fn observe(&self, endpoint: &str, status: String, seconds: f64) {
        if let Ok(mut map) = self.latency.lock() {
            let entry = map
                .entry((endpoint.to_string(), status))
                .or_insert_with_key(|(endpoint, status)| ApiCallStats {
                    endpoint: endpoint.clone(),
                    status: status.clone(),
                    ..ApiCallStats::default()
                });
            entry.observe(seconds);
        }
    }

    /// Every endpoint's latency histogram so far, by endpoint and status.
    pub fn latency(&self) -> Vec<ApiCallStats> {
        self.latency
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a read-merge-write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The keys were already as wanted: nothing written.
    Unchanged,
    /// Written and seen on the re-read.
    Written { attempts: u32 },
    /// The task no longer wants what we were writing (it changed its request, or another router
    /// claimed it): nothing written.
    Skipped(String),
    /// The task no longer exists.
    Gone,
    /// Every attempt was overwritten by a concurrent writer.
    Lost { attempts: u32 },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    access_key: String,
    secret_key: String,
    timeout: Duration,
    page_size: usize,
    token: tokio::sync::Mutex<Option<Token>>,
    pub stats: ApiStats,
}

impl Client {
    /// A client for `cfg.api_host` (which must be set).
    pub fn new(cfg: &ClearmlConfig) -> Result<Client, ApiError> {
        let base = cfg.api_host.clone().unwrap_or_default();
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            .danger_accept_invalid_certs(!cfg.ssl_verify)
            .user_agent(concat!("task-router/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ApiError::ClientSetup)?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            access_key: cfg.access_key.clone(),
            secret_key: cfg.secret_key.clone(),
            timeout: cfg.request_timeout,
            page_size: MAX_PAGE_SIZE,
            token: tokio::sync::Mutex::new(None),
            stats: ApiStats::default(),
        })
    }

    /// Uses pages of `size` (≤ 500) instead of 500; for tests and benchmarks.
    pub fn with_page_size(mut self, size: usize) -> Client {
        self.page_size = size.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// Logs in with the access/secret key (HTTP Basic) and keeps the token.
    pub async fn login(&self) -> Result<(), ApiError> {
        let mut slot = self.token.lock().await;
        *slot = Some(self.fetch_token().await?);
        Ok(())
    }

    async fn fetch_token(&self) -> Result<Token, ApiError> {
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let data = self.send("auth.login", &json!({}), Auth::Basic).await?;
        let jwt = data
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Malformed {
                call: "auth.login".into(),
                reason: "no data.token in the answer".into(),
            })?
            .to_string();
        let refresh_at = refresh_time(&jwt, SystemTime::now());
        Ok(Token { jwt, refresh_at })
    }

    /// A token that is not about to expire, logging in when needed.
    async fn bearer(&self) -> Result<String, ApiError> {
        let mut slot = self.token.lock().await;
        let fresh = slot
            .as_ref()
            .is_some_and(|t| SystemTime::now() < t.refresh_at);
        if !fresh {
            *slot = Some(self.fetch_token().await?);
        }
        Ok(slot.as_ref().map(|t| t.jwt.clone()).unwrap_or_default())
    }

    /// Forgets `jwt` (after a 401) unless another call already replaced it.
    async fn invalidate(&self, jwt: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.jwt == jwt) {
            *slot = None;
        }
    }

    /// One authenticated call; on a 401 the token is refreshed once and the call retried.
    pub async fn call(&self, endpoint: &str, body: &Value) -> Result<Map<String, Value>, ApiError> {
        let jwt = self.bearer().await?;
        match self.send(endpoint, body, Auth::Bearer(&jwt)).await {
            Err(ApiError::Unauthorized { .. }) => {
                tracing::debug!(endpoint, "401: refreshing the token once");
                self.invalidate(&jwt).await;
                let jwt = self.bearer().await?;
                self.send(endpoint, body, Auth::Bearer(&jwt)).await
            }
            other => other,
        }
    }

    async fn send(
        &self,
        endpoint: &str,
        body: &Value,
        auth: Auth<'_>,
    ) -> Result<Map<String, Value>, ApiError> {
        let started = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.send_inner(endpoint, body, auth).await;
        let took = started.elapsed();
        self.stats
            .last_latency_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.stats
            .observe(endpoint, status_label(&result), took.as_secs_f64());
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn send_inner(
        &self,
        endpoint: &str,
        body: &Value,
        auth: Auth<'_>,
    ) -> Result<Map<String, Value>, ApiError> {
        let url = format!("{}/v{API_VERSION}/{endpoint}", self.base);
        let request = self.http.post(&url).json(body).header(
            "X-ClearML-Client",
            concat!("task-router-", env!("CARGO_PKG_VERSION")),
        );
        let request = match auth {
            Auth::Basic => request.basic_auth(&self.access_key, Some(&self.secret_key)),
            Auth::Bearer(jwt) => request.bearer_auth(jwt),
        };
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                ApiError::Timeout {
                    call: endpoint.to_string(),
                    timeout: self.timeout,
                }
            } else {
                ApiError::Transport {
                    call: endpoint.to_string(),
                    source: e,
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        parse_envelope(endpoint, status, &bytes)
    }

    /// Every task that asked for an endpoint and runs in one of `queue_ids` (empty = any queue),
    /// hidden ones included, read page by page. Entries without an id are skipped (counted in
    /// the second value).
    pub async fn tasks_requesting_endpoints(
        &self,
        queue_ids: &[String],
    ) -> Result<(Vec<Task>, usize), ApiError> {
        let mut body = json!({
            "system_tags": [EXTERNAL_SERVICE_TAG],
            "status": [IN_PROGRESS],
            "search_hidden": true,
            "only_fields": ONLY_FIELDS,
            "order_by": ["id"],
        });
        if !queue_ids.is_empty() {
            body["execution.queue"] = json!(queue_ids);
        }
        self.get_all_paged(body).await
    }

    /// The tasks among `ids` that still exist, whatever their status (to confirm that a task
    /// missing from the list really is gone, not skipped by a page boundary).
    pub async fn tasks_by_id(&self, ids: &[String]) -> Result<Vec<Task>, ApiError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(self.page_size) {
            let body = json!({
                "id": chunk,
                "search_hidden": true,
                "only_fields": ONLY_FIELDS,
                "order_by": ["id"],
            });
            out.extend(self.get_all_paged(body).await?.0);
        }
        Ok(out)
    }

    async fn get_all_paged(&self, mut body: Value) -> Result<(Vec<Task>, usize), ApiError> {
        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        let mut skipped = 0;
        for page in 0usize.. {
            body["page"] = json!(page);
            body["page_size"] = json!(self.page_size);
            let data = self.call("tasks.get_all", &body).await?;
            let entries =
                data.get("tasks")
                    .and_then(Value::as_array)
                    .ok_or_else(|| ApiError::Malformed {
                        call: "tasks.get_all".into(),
                        reason: "data.tasks is not a list".into(),
                    })?;
            let mut new = 0;
            for entry in entries {
                match Task::from_json(entry) {
                    Ok(task) => {
                        if seen.insert(task.id.clone()) {
                            new += 1;
                            tasks.push(task);
                        }
                    }
                    Err(reason) => {
                        skipped += 1;
                        tracing::debug!(reason, "skipping a task entry");
                    }
                }
            }
            // A short page is the last; a page with nothing new means the server ignores paging.
            if entries.len() < self.page_size || new == 0 {
                break;
            }
        }
        Ok((tasks, skipped))
    }

    /// `tasks.get_by_id` (hidden tasks included); `None` when the task does not exist.
    pub async fn get_task(&self, id: &str) -> Result<Option<Task>, ApiError> {
        match self.call("tasks.get_by_id", &json!({ "task": id })).await {
            Ok(data) => {
                let task = data.get("task").ok_or_else(|| ApiError::Malformed {
                    call: "tasks.get_by_id".into(),
                    reason: "no data.task in the answer".into(),
                })?;
                Task::from_json(task)
                    .map(Some)
                    .map_err(|reason| ApiError::Malformed {
                        call: "tasks.get_by_id".into(),
                        reason,
                    })
            }
            // invalid_task_id: deleted, or of another company.
            Err(e) if e.codes() == Some((400, 101)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `tasks.edit` with `force: true` and the full runtime dict (the server replaces it whole).
    pub async fn edit_runtime(
        &self,
        id: &str,
        runtime: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        self.call(
            "tasks.edit",
            &json!({ "task": id, "force": true, "runtime": runtime }),
        )
        .await
        .map(|_| ())
    }

    /// Read-merge-write of runtime keys. `want` looks at the freshly read task and returns the
    /// keys to set (or why not to write any more).
    ///
    /// The API has no compare-and-set and the server replaces the runtime dict whole, so a task
    /// (the SDK also does read-modify-write) and the router can each lose the other's keys:
    /// - keys the task writes *after our read and before our write* would be dropped by our
    ///   write. So the task is read twice, [`SETTLE`] apart, right before writing; if its runtime
    ///   moved between the two reads the task is writing now, and we start over from the newer
    ///   read (at most [`SETTLE_ROUNDS`] times, then skip to the next cycle) — we never send a
    ///   dict older than the last one we saw.
    /// - keys we write can be dropped by a task writing right after us from an older read. So
    ///   the task is re-read after the write and, if our keys are gone, only our keys are put
    ///   back on top of what the task wrote (its keys stay), up to [`WRITE_ATTEMPTS`] writes.
    ///
    /// What remains is a task write landing in the one round trip between our last read and
    /// our `tasks.edit`; no client of this API can close that window.
    pub async fn update_runtime(
        &self,
        task_id: &str,
        want: impl Fn(&Task) -> Result<BTreeMap<String, Value>, String>,
    ) -> Result<WriteOutcome, ApiError> {
        let Some(mut current) = self.get_task(task_id).await? else {
            return Ok(WriteOutcome::Gone);
        };
        let mut attempts = 0;
        let mut settle_rounds = 0;
        loop {
            let patch = match want(&current) {
                Ok(p) => p,
                Err(reason) => return Ok(WriteOutcome::Skipped(reason)),
            };
            if applied(&current.runtime, &patch) {
                return Ok(if attempts == 0 {
                    WriteOutcome::Unchanged
                } else {
                    WriteOutcome::Written { attempts }
                });
            }
            if attempts == WRITE_ATTEMPTS {
                return Ok(WriteOutcome::Lost { attempts });
            }
            // The pre-write read: the runtime must not have moved since the read we merge into.
            tokio::time::sleep(SETTLE).await;
            let fresh = match self.get_task(task_id).await? {
                Some(t) => t,
                None => return Ok(WriteOutcome::Gone),
            };
            if fresh.runtime != current.runtime {
                settle_rounds += 1;
                self.stats.concurrent_writes.fetch_add(1, Ordering::Relaxed);
                if settle_rounds > SETTLE_ROUNDS {
                    return Ok(WriteOutcome::Skipped(
                        "the task keeps changing its runtime; writing on the next cycle".into(),
                    ));
                }
                current = fresh;
                continue;
            }
            attempts += 1;
            let mut runtime = fresh.runtime;
            runtime.extend(patch);
            self.edit_runtime(task_id, &runtime).await?;
            // The post-write read: a writer that lost our keys is repaired on the next round,
            // on top of what it wrote.
            current = match self.get_task(task_id).await? {
                Some(t) => t,
                None => return Ok(WriteOutcome::Gone),
            };
            if current.runtime != runtime {
                self.stats.concurrent_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queue names to ids with `queues.get_all` (`^name$`, then an exact comparison, since the
    /// server matches names as a regex). An unknown name is an error naming it.
    pub async fn queue_ids(&self, names: &[String]) -> Result<Vec<String>, ApiError> {
        let mut ids = Vec::new();
        for name in names {
            let body = json!({
                "name": format!("^{}$", regex_escape(name)),
                "only_fields": ["id", "name"],
                "page": 0,
                "page_size": MAX_PAGE_SIZE,
            });
            let data = self.call("queues.get_all", &body).await?;
            let queues = data
                .get("queues")
                .and_then(Value::as_array)
                .ok_or_else(|| ApiError::Malformed {
                    call: "queues.get_all".into(),
                    reason: "data.queues is not a list".into(),
                })?;
            let before = ids.len();
            for q in queues {
                if q.get("name").and_then(Value::as_str) == Some(name.as_str())
                    && let Some(id) = q.get("id").and_then(Value::as_str)
                {
                    ids.push(id.to_string());
                }
            }
            if ids.len() == before {
                return Err(ApiError::UnknownQueue { name: name.clone() });
            }
        }
        Ok(ids)
    }
}

enum Auth<'a> {
    Basic,
    Bearer(&'a str),
}

/// Whether every key of `patch` already has its value in `runtime` (numbers and their string
/// spellings count as equal: tasks write either).
pub fn applied(runtime: &Map<String, Value>, patch: &BTreeMap<String, Value>) -> bool {
    patch.iter().all(|(k, v)| match runtime.get(k) {
        Some(current) if current == v => true,
        Some(_) => {
            let mut probe = Map::new();
            probe.insert(k.clone(), v.clone());
            runtime_str(runtime, k).is_some() && runtime_str(runtime, k) == runtime_str(&probe, k)
        }
        None => false,
    })
}

/// Parses the ClearML response envelope; returns `data` on success.
fn parse_envelope(call: &str, status: u16, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
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

/// When to refresh `jwt`: `exp` minus the threshold (a quarter of the lifetime for short-lived
/// tokens). The token is decoded without verifying it, as the SDK does; an opaque token is
/// refreshed every 10 minutes and on a 401.
fn refresh_time(jwt: &str, now: SystemTime) -> SystemTime {
    use base64::Engine as _;
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let num = |k: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(Value::as_f64)
    };
    let exp = num("exp").and_then(|e| Duration::try_from_secs_f64(e).ok());
    match exp.and_then(|e| UNIX_EPOCH.checked_add(e)) {
        Some(exp_at) => {
            let lifetime = num("iat")
                .and_then(|iat| Duration::try_from_secs_f64(num("exp").unwrap_or(0.0) - iat).ok())
                .unwrap_or(REFRESH_THRESHOLD * 4);
            let margin = REFRESH_THRESHOLD.min(lifetime / 4);
            exp_at.checked_sub(margin).unwrap_or(now)
        }
        None => now + Duration::from_secs(600),
    }
}

/// Escapes regex metacharacters (the server matches queue names as a regex).
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.^$|?*+()[]{}-/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
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

    fn jwt(claims: Value) -> String {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"HS256"}"#),
            e.encode(claims.to_string())
        )
    }

    #[test]
    fn tokens_refresh_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        // A 30-day token: refreshed 60 s before it expires.
        let t = jwt(json!({"iat": 1_000_000, "exp": 1_000_000 + 2_592_000}));
        assert_eq!(
            refresh_time(&t, now),
            UNIX_EPOCH + Duration::from_secs(1_000_000 + 2_592_000 - 60)
        );
        // A 20 s token: refreshed with a quarter of its life left.
        let t = jwt(json!({"iat": 1_000_000, "exp": 1_000_020}));
        assert_eq!(
            refresh_time(&t, now),
            UNIX_EPOCH + Duration::from_secs(1_000_015)
        );
        // Opaque or absurd: ten minutes.
        assert_eq!(refresh_time("opaque", now), now + Duration::from_secs(600));
        let t = jwt(json!({"exp": 1e300}));
        assert_eq!(refresh_time(&t, now), now + Duration::from_secs(600));
        let t = jwt(json!({"exp": -5}));
        assert_eq!(refresh_time(&t, now), now + Duration::from_secs(600));
    }

    #[test]
    fn applied_compares_numbers_and_strings() {
        let runtime: Map<String, Value> =
            serde_json::from_value(json!({"p": "30001", "a": "x", "n": 5})).unwrap();
        let patch = |k: &str, v: Value| BTreeMap::from([(k.to_string(), v)]);
        assert!(applied(&runtime, &patch("p", json!(30001))));
        assert!(applied(&runtime, &patch("n", json!("5"))));
        assert!(!applied(&runtime, &patch("a", json!("y"))));
        assert!(!applied(&runtime, &patch("missing", json!(1))));
    }

    #[test]
    fn queue_names_are_escaped() {
        assert_eq!(regex_escape("gpu.queue+1"), "gpu\\.queue\\+1");
        assert_eq!(regex_escape("plain_name"), "plain_name");
    }

    use crate::clearml::mock::{Fault, MockServer};

    fn config(url: &str) -> ClearmlConfig {
        ClearmlConfig {
            api_host: Some(url.to_string()),
            access_key: "ak".into(),
            secret_key: "sk".into(),
            ssl_verify: true,
            listen_queues: Vec::new(),
            poll_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn lists_every_page_with_few_calls() {
        let server = MockServer::start().await;
        for i in 0..1203 {
            server.add_task(&format!("t{i:05}"), json!({"_SERVICE": "EXTERNAL"}));
        }
        // A task of another status is not listed.
        server.add_task("stopped", json!({}));
        server.set("stopped", "status", json!("stopped"));
        let client = Client::new(&config(&server.url)).unwrap();
        let (tasks, skipped) = client.tasks_requesting_endpoints(&[]).await.unwrap();
        assert_eq!(tasks.len(), 1203);
        assert_eq!(skipped, 0);
        assert_eq!(server.calls("tasks.get_all"), 3, "500 + 500 + 203");
        assert_eq!(server.calls("auth.login"), 1);
        let client = client.with_page_size(100);
        let (tasks, _) = client.tasks_requesting_endpoints(&[]).await.unwrap();
        assert_eq!(tasks.len(), 1203);
        assert_eq!(server.calls("tasks.get_all"), 3 + 13);
        // by id: existing ones only, whatever their status.
        let found = client
            .tasks_by_id(&["t00001".into(), "stopped".into(), "deleted".into()])
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
    }

    #[tokio::test]
    async fn an_expired_token_is_refreshed_once() {
        let server = MockServer::start().await;
        server.add_task("a", json!({}));
        let client = Client::new(&config(&server.url)).unwrap();
        client.login().await.unwrap();
        server.fault(Fault::Expired);
        assert!(client.get_task("a").await.unwrap().is_some());
        assert_eq!(server.calls("auth.login"), 2);
        // Refused twice in a row: the error comes out after one retry, no loop.
        server.fault(Fault::Expired);
        server.fault(Fault::Expired);
        let e = client.get_task("a").await.unwrap_err();
        assert!(matches!(e, ApiError::Unauthorized { .. }), "{e}");
        assert_eq!(server.calls("auth.login"), 3);
    }

    #[tokio::test]
    async fn faults_are_typed() {
        let server = MockServer::start().await;
        let client = Client::new(&config(&server.url)).unwrap();
        server.fault(Fault::Status500);
        let e = client.tasks_requesting_endpoints(&[]).await.unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::Server {
                    status: 500,
                    code: 500,
                    subcode: 102,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_transient());
        server.fault(Fault::Garbage);
        let e = client.tasks_requesting_endpoints(&[]).await.unwrap_err();
        assert!(matches!(e, ApiError::Malformed { .. }), "{e}");
        server.fault(Fault::Hang(Duration::from_secs(3)));
        let e = client.tasks_requesting_endpoints(&[]).await.unwrap_err();
        assert!(matches!(e, ApiError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("tasks.get_all"), "{e}");
        assert!(client.get_task("nope").await.unwrap().is_none());
        let down = Client::new(&config("http://127.0.0.1:1")).unwrap();
        let e = down.login().await.unwrap_err();
        assert!(
            matches!(e, ApiError::Transport { .. }) && e.is_transient(),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refused_requests_are_not_transient() {
        let server = MockServer::start().await;
        let client = Client::new(&config(&server.url)).unwrap();
        let e = client.call("no.such", &json!({})).await.unwrap_err();
        assert!(matches!(e, ApiError::Server { status: 400, .. }), "{e}");
        assert!(!e.is_transient(), "{e}");
    }

    #[tokio::test]
    async fn read_merge_write_keeps_other_keys_and_rechecks() {
        let server = MockServer::start().await;
        server.add_task(
            "a",
            json!({"_SERVICE": "EXTERNAL", "progress": "5", "CLI": "x"}),
        );
        let client = Client::new(&config(&server.url)).unwrap();
        let patch = BTreeMap::from([("endpoint".to_string(), json!("http://r/service/a/"))]);
        let want = |_: &Task| Ok(patch.clone());
        assert_eq!(
            client.update_runtime("a", want).await.unwrap(),
            WriteOutcome::Written { attempts: 1 }
        );
        let rt = server.task("a")["runtime"].clone();
        assert_eq!(rt["endpoint"], json!("http://r/service/a/"));
        assert_eq!(rt["progress"], json!("5"));
        assert_eq!(rt["CLI"], json!("x"));
        // Nothing to change: no edit at all.
        let edits = server.calls("tasks.edit");
        assert_eq!(
            client.update_runtime("a", want).await.unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(server.calls("tasks.edit"), edits);

        // The task overwrites the dict right after our first write (lost update): retried.
        server.add_task("b", json!({"_SERVICE": "EXTERNAL"}));
        let mut left = 1;
        server.state.lock().unwrap().after_edit = Some(Box::new(move |rt| {
            if left > 0 {
                left -= 1;
                rt.remove("endpoint");
            }
        }));
        assert_eq!(
            client.update_runtime("b", want).await.unwrap(),
            WriteOutcome::Written { attempts: 2 }
        );
        // Always overwritten: bounded.
        server.add_task("c", json!({"_SERVICE": "EXTERNAL"}));
        server.state.lock().unwrap().after_edit = Some(Box::new(|rt| {
            rt.remove("endpoint");
        }));
        assert_eq!(
            client.update_runtime("c", want).await.unwrap(),
            WriteOutcome::Lost {
                attempts: WRITE_ATTEMPTS
            }
        );
        server.state.lock().unwrap().after_edit = None;
        // The request changed: nothing written.
        let skip = |_: &Task| Err("changed".to_string());
        assert_eq!(
            client.update_runtime("c", skip).await.unwrap(),
            WriteOutcome::Skipped("changed".into())
        );
        assert_eq!(
            client.update_runtime("zz", want).await.unwrap(),
            WriteOutcome::Gone
        );
    }

    #[tokio::test]
    async fn queue_names_resolve_or_fail_by_name() {
        let server = MockServer::start().await;
        server.state.lock().unwrap().queues =
            vec![("id1".into(), "gpu.a".into()), ("id2".into(), "cpu".into())];
        let client = Client::new(&config(&server.url)).unwrap();
        assert_eq!(
            client
                .queue_ids(&["gpu.a".into(), "cpu".into()])
                .await
                .unwrap(),
            ["id1", "id2"]
        );
        let e = client.queue_ids(&["nope".into()]).await.unwrap_err();
        assert!(matches!(e, ApiError::UnknownQueue { .. }));
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }
}

#[cfg(test)]
mod fuzz;
