//! The server's in-memory state: documents (tasks, queues, projects, models) as JSON objects in
//! insertion order, like Mongo's natural order; the credentials; the faults waiting to be served;
//! the call counters.

use super::auth::{Claims, Credential, Identity};
use super::options::{COMPOSE_COOKIE, ServerRelease};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A 32-hex-digit id, the form the real server's ids take.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now as the real server prints datetimes: `2024-05-01T10:00:00.123000+00:00`.
pub fn now_iso() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The statuses a task may have (`_common.conf`).
pub const TASK_STATUSES: &[&str] = &[
    "created",
    "queued",
    "in_progress",
    "stopped",
    "published",
    "publishing",
    "closed",
    "failed",
    "completed",
    "unknown",
];

/// A misbehaviour the server shows on the next calls (admin API).
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Answer with this error envelope (e.g. 500/0, 503/0) instead of handling the call.
    Error {
        code: u16,
        subcode: u32,
        msg: String,
    },
    /// Wait this long, then handle the call normally.
    Delay(Duration),
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Answer 200 as if no task existed (`data.tasks` = `[]`): a server that lost its database,
    /// or a proxy in front of it answering for another one.
    Empty,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    /// How many calls still get it.
    pub remaining: u32,
    /// Only calls to this endpoint (`service.action`); `None` = any API call.
    pub endpoint: Option<String>,
}

/// Runs right after `tasks.edit` or `tasks.edit_runtime` stored a task's runtime: (task id, the
/// stored runtime).
pub type EditHook = Box<dyn FnMut(&str, &mut Map<String, Value>) + Send>;

/// Everything the server knows; behind one mutex, held only for short, non-async sections.
pub struct State {
    pub credentials: Vec<Credential>,
    pub token_secret: Vec<u8>,
    pub feature_set: String,
    pub token_lifetime_secs: i64,
    pub release: ServerRelease,
    /// The browser cookie `auth.login` sets and calls are authorized with.
    pub cookie_name: String,
    /// Session ids of every token issued so far.
    pub sessions: Vec<String>,
    /// Sessions whose tokens are refused as expired (admin "expire all tokens").
    pub expired_sessions: HashSet<String>,
    pub tasks: Vec<Value>,
    pub queues: Vec<Value>,
    pub projects: Vec<Value>,
    pub models: Vec<Value>,
    /// scroll id → offset of the next item.
    pub scrolls: HashMap<String, usize>,
    pub faults: VecDeque<Fault>,
    pub calls: BTreeMap<String, u64>,
    pub after_edit: Option<EditHook>,
    /// Runs right after `tasks.get_by_id` answered, on the stored runtime of the task it read:
    /// a writer landing between a client's read and its write.
    pub after_read: Option<EditHook>,
}

impl State {
    pub fn new(
        credentials: Vec<Credential>,
        token_secret: Vec<u8>,
        feature_set: String,
        token_lifetime_secs: i64,
    ) -> State {
        let mut s = State {
            credentials,
            token_secret,
            feature_set,
            token_lifetime_secs,
            release: ServerRelease::V2_3,
            cookie_name: COMPOSE_COOKIE.into(),
            sessions: Vec::new(),
            expired_sessions: HashSet::new(),
            tasks: Vec::new(),
            queues: Vec::new(),
            projects: Vec::new(),
            models: Vec::new(),
            scrolls: HashMap::new(),
            faults: VecDeque::new(),
            calls: BTreeMap::new(),
            after_edit: None,
            after_read: None,
        };
        // A fresh real server has a default queue (tagged `default`), which agents and
        // `Task.enqueue` look up.
        s.add_queue("default", &["default"]);
        s
    }

    /// What `auth.login` signs for `identity` now, living `lifetime_secs`, in a new session.
    pub fn claims(&self, identity: &Identity, lifetime_secs: i64) -> Claims {
        let api_version = self.release.api_string();
        Claims::new(
            identity,
            &new_id(),
            now_secs(),
            lifetime_secs,
            &super::auth::ServerClaims {
                api_version: &api_version,
                server_version: self.release.version,
                server_build: super::services::SERVER_BUILD,
                feature_set: &self.feature_set,
            },
        )
    }

    /// A token for `identity` living `lifetime_secs`, its session recorded.
    pub fn issue_token(&mut self, identity: &Identity, lifetime_secs: i64) -> String {
        let claims = self.claims(identity, lifetime_secs);
        self.sessions.push(claims.session_id.clone());
        super::auth::sign(&self.token_secret, &claims)
    }

    /// Every token issued so far is refused from now on.
    pub fn expire_tokens(&mut self) {
        self.expired_sessions.extend(self.sessions.drain(..));
    }

    pub fn identity(&self) -> Identity {
        self.credentials
            .first()
            .map(|c| c.identity.clone())
            .unwrap_or_else(|| Identity {
                user: String::new(),
                company: String::new(),
                role: "user".into(),
                user_name: String::new(),
                company_name: String::new(),
            })
    }

    pub fn add_queue(&mut self, name: &str, system_tags: &[&str]) -> String {
        let id = new_id();
        let ident = self.identity();
        self.queues.push(json!({
            "id": id, "name": name, "display_name": null, "user": ident.user,
            "company": ident.company, "created": now_iso(), "tags": [],
            "system_tags": system_tags, "entries": [], "metadata": {}, "last_update": now_iso(),
        }));
        id
    }

    pub fn task(&self, id: &str) -> Option<&Value> {
        self.tasks.iter().find(|t| t["id"] == id)
    }

    pub fn task_mut(&mut self, id: &str) -> Option<&mut Map<String, Value>> {
        self.tasks
            .iter_mut()
            .find(|t| t["id"] == id)
            .and_then(Value::as_object_mut)
    }

    /// A new task document with the fields the real server fills in on `tasks.create`.
    pub fn new_task_doc(&self, name: &str, task_type: &str) -> Map<String, Value> {
        let ident = self.identity();
        let now = now_iso();
        let doc = json!({
            "id": new_id(), "name": name, "type": task_type, "status": "created",
            "status_changed": now, "status_message": "", "status_reason": "",
            "comment": "", "created": now, "last_update": now, "last_change": now,
            "last_changed_by": ident.user, "user": ident.user, "company": ident.company,
            "project": null, "parent": null, "tags": [], "system_tags": [],
            "runtime": {}, "execution": {"queue": null, "artifacts": []},
            "script": {}, "hyperparams": {}, "configuration": {},
            "models": {"input": [], "output": []}, "container": {}, "output": {},
            "last_iteration": 0, "last_metrics": {}, "active_duration": null,
        });
        match doc {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// Takes the fault for the next call to `endpoint`, if one is waiting.
    pub fn take_fault(&mut self, endpoint: &str) -> Option<FaultKind> {
        let idx = self
            .faults
            .iter()
            .position(|f| f.endpoint.as_deref().is_none_or(|e| e == endpoint))?;
        let fault = self.faults.get_mut(idx)?;
        let kind = fault.kind.clone();
        fault.remaining = fault.remaining.saturating_sub(1);
        if fault.remaining == 0 {
            self.faults.remove(idx);
        }
        Some(kind)
    }
}

/// Sets `value` at a dotted `path` inside `doc`, creating objects on the way.
pub fn set_path(doc: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = doc;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry.as_object_mut() {
            Some(next) => cur = next,
            None => return,
        }
    }
}

/// The value at a dotted `path`, or `None`.
pub fn get_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, part| v.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_paths() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_844), (2024, 5, 1));
        let iso = now_iso();
        assert_eq!(iso.len(), "2024-05-01T10:00:00.123000+00:00".len(), "{iso}");
        let mut doc = Map::new();
        set_path(&mut doc, "execution.queue", json!("q"));
        let v = Value::Object(doc);
        assert_eq!(get_path(&v, "execution.queue"), Some(&json!("q")));
        assert_eq!(get_path(&v, "execution.nope"), None);
    }
}
