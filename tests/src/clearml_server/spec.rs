//! What tests and the admin HTTP API ask the server to set up: a task ([`TaskSpec`]) and a
//! fault ([`FaultSpec`]).

use super::store::FaultKind;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::Duration;

/// A task to create through the admin side. Unset fields get what `tasks.create` would set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TaskSpec {
    pub name: String,
    /// `created` when unset.
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    pub runtime: Map<String, Value>,
    pub system_tags: Vec<String>,
    pub tags: Vec<String>,
    /// Queue id for `execution.queue`.
    pub queue: Option<String>,
    pub project: Option<String>,
    pub last_worker: Option<String>,
    /// The owning company (`company`); the server's own user's company when unset. A task of
    /// another company is invisible to this server's credentials, as on a multi-tenant server.
    pub company: Option<String>,
}

impl TaskSpec {
    pub fn new(name: &str) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            ..TaskSpec::default()
        }
    }
    pub fn status(mut self, status: &str) -> Self {
        self.status = Some(status.into());
        self
    }
    /// `runtime` from a JSON object; anything else leaves it empty.
    pub fn runtime(mut self, runtime: Value) -> Self {
        self.runtime = match runtime {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self
    }
    pub fn system_tags(mut self, tags: &[&str]) -> Self {
        self.system_tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }
    pub fn queue(mut self, queue_id: &str) -> Self {
        self.queue = Some(queue_id.into());
        self
    }
    pub fn last_worker(mut self, worker: &str) -> Self {
        self.last_worker = Some(worker.into());
        self
    }
    pub fn company(mut self, company: &str) -> Self {
        self.company = Some(company.into());
        self
    }
}

/// A fault to inject, as the admin HTTP API takes it.
#[derive(Clone, Debug, Deserialize)]
pub struct FaultSpec {
    /// `error` (default code 500), `delay`, `malformed`, or `empty` (no tasks).
    pub kind: String,
    #[serde(default = "one")]
    pub count: u32,
    pub endpoint: Option<String>,
    pub code: Option<u16>,
    pub subcode: Option<u32>,
    pub msg: Option<String>,
    pub delay_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    pub fn kind(&self) -> std::result::Result<FaultKind, String> {
        match self.kind.as_str() {
            "error" => Ok(FaultKind::Error {
                code: self.code.unwrap_or(500),
                subcode: self.subcode.unwrap_or(0),
                msg: self
                    .msg
                    .clone()
                    .unwrap_or_else(|| "General server error (injected fault)".into()),
            }),
            "delay" => Ok(FaultKind::Delay(Duration::from_millis(
                self.delay_ms.unwrap_or(1000),
            ))),
            "malformed" => Ok(FaultKind::Malformed),
            "empty" => Ok(FaultKind::Empty),
            other => Err(format!(
                "unknown fault kind {other:?}: expected error, delay, malformed or empty"
            )),
        }
    }
}
