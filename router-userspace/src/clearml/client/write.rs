//! Writing runtime keys back to a task with read-merge-write (the API has no compare-and-set).

use super::Client;
use crate::clearml::error::ApiError;
use crate::clearml::task::{Task, applied, merge};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Attempts of one read-merge-write before giving up until the next cycle.
pub const WRITE_ATTEMPTS: u32 = 3;
/// The pause between the two reads before a write: a task writing its runtime in a burst (the SDK
/// requesting several endpoints) shows as a runtime that moved between them.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How many times a write starts over because the task's runtime moved before giving up until
/// the next cycle.
pub const SETTLE_ROUNDS: u32 = 5;

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

impl Client {
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
            merge(&mut runtime, patch);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearml::mock::{MockServer, client_config as config};
    use serde_json::json;

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
}
