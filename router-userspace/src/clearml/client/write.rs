//! Writing runtime keys back to a task: with `tasks.edit_runtime` (atomic per key) where the
//! server has it and every key to write is one it stores as is, else with read-merge-write of
//! the whole runtime (`tasks.edit`, which replaces it: there is no compare-and-set).

use super::Client;
use super::runtime_capability::written_as_is;
use super::runtime_edit::AtomicWrite;
use crate::clearml::error::ApiError;
use crate::clearml::task::{Task, applied, merge, pending};
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

/// What a write-back did.
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

/// One step of a read-merge-write.
enum Merge {
    /// Written; the task as re-read after the write.
    Wrote(Task),
    /// The runtime moved between the two reads: start over from this newer read.
    Moved(Task),
    Gone,
}

impl Client {
    /// Writes runtime keys. `want` looks at the freshly read task and returns the keys to set
    /// (or why not to write any more).
    ///
    /// Keys the task lacks are written with one `tasks.edit_runtime` when the server has it and
    /// each of them is stored under its own name (see [`super::written_as_is`]): the server sets
    /// just those keys, so nothing the task writes at the same moment is lost. Otherwise (older
    /// servers; the `_ROUTER_NAME` claim, named endpoints' `__` keys) read-merge-write, where
    /// the task (the SDK also does read-modify-write) and the router can each lose the other's
    /// keys:
    /// - keys the task writes *after our read and before our write* would be dropped by our
    ///   write. So the task is read twice, [`SETTLE`] apart, right before writing; if its runtime
    ///   moved between the two reads the task is writing now, and we start over from the newer
    ///   read (at most [`SETTLE_ROUNDS`] times, then skip to the next cycle) — we never send a
    ///   dict older than the last one we saw.
    ///
    /// Either way, keys we write can be dropped by a task writing right after us from an older
    /// read (the SDK's own read-merge-write). So the task is re-read after the write and, if our
    /// keys are gone, only our keys are put back on top of what the task wrote (its keys stay),
    /// up to [`WRITE_ATTEMPTS`] writes.
    ///
    /// What remains with read-merge-write is a task write landing in the one round trip between
    /// our last read and our `tasks.edit`.
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
            let missing = pending(&current.runtime, &patch);
            if missing.is_empty() {
                return Ok(if attempts == 0 {
                    WriteOutcome::Unchanged
                } else {
                    WriteOutcome::Written { attempts }
                });
            }
            if attempts == WRITE_ATTEMPTS {
                return Ok(WriteOutcome::Lost { attempts });
            }
            if self.runtime_edits.usable() && missing.keys().all(|k| written_as_is(k)) {
                match self.edit_runtime_keys(task_id, &missing).await? {
                    AtomicWrite::Written => {
                        attempts += 1;
                        let Some(after) = self.get_task(task_id).await? else {
                            return Ok(WriteOutcome::Gone);
                        };
                        if !applied(&after.runtime, &missing) {
                            self.stats.concurrent_writes.fetch_add(1, Ordering::Relaxed);
                        }
                        current = after;
                        continue;
                    }
                    AtomicWrite::WrongStatus(reason) => return Ok(WriteOutcome::Skipped(reason)),
                    AtomicWrite::Unavailable => {}
                }
            }
            current = match self.merge_and_write(task_id, &current, patch).await? {
                Merge::Gone => return Ok(WriteOutcome::Gone),
                Merge::Moved(fresh) => {
                    settle_rounds += 1;
                    if settle_rounds > SETTLE_ROUNDS {
                        return Ok(WriteOutcome::Skipped(
                            "the task keeps changing its runtime; writing on the next cycle".into(),
                        ));
                    }
                    fresh
                }
                Merge::Wrote(after) => {
                    attempts += 1;
                    after
                }
            };
        }
    }

    /// One read-merge-write of `patch` on top of the task read as `current`: the pre-write read
    /// (the runtime must not have moved since `current`), `tasks.edit`, the post-write read.
    async fn merge_and_write(
        &self,
        task_id: &str,
        current: &Task,
        patch: BTreeMap<String, Value>,
    ) -> Result<Merge, ApiError> {
        tokio::time::sleep(SETTLE).await;
        let Some(fresh) = self.get_task(task_id).await? else {
            return Ok(Merge::Gone);
        };
        if fresh.runtime != current.runtime {
            self.stats.concurrent_writes.fetch_add(1, Ordering::Relaxed);
            return Ok(Merge::Moved(fresh));
        }
        let mut runtime = fresh.runtime;
        merge(&mut runtime, patch);
        self.replace_runtime(task_id, &runtime).await?;
        // The post-write read: a writer that lost our keys is repaired on the next round, on
        // top of what it wrote.
        let Some(after) = self.get_task(task_id).await? else {
            return Ok(Merge::Gone);
        };
        if after.runtime != runtime {
            self.stats.concurrent_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Merge::Wrote(after))
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

    #[tokio::test]
    async fn keys_the_server_keeps_as_they_are_are_written_atomically() {
        let server = MockServer::start().await;
        server.state.lock().unwrap().edit_runtime = true;
        server.add_task("a", json!({"_SERVICE": "EXTERNAL", "_ROUTER_NAME": "r1"}));
        let client = Client::new(&config(&server.url)).unwrap();
        // The task writes its own key right after our write; an atomic write keeps it.
        server.state.lock().unwrap().after_edit = Some(Box::new(|rt| {
            rt.insert("progress".into(), json!("7"));
        }));
        server.set(
            "a",
            "runtime",
            json!({"_SERVICE": "EXTERNAL", "_ROUTER_NAME": "r1", "router_endpoint_error": "x"}),
        );
        let patch = BTreeMap::from([
            ("endpoint".to_string(), json!("http://r/service/a/")),
            ("_ROUTER_NAME".to_string(), json!("r1")),
            ("router_endpoint_error".to_string(), Value::Null),
        ]);
        let want = |_: &Task| Ok(patch.clone());
        assert_eq!(
            client.update_runtime("a", want).await.unwrap(),
            WriteOutcome::Written { attempts: 1 }
        );
        assert_eq!(server.calls("tasks.edit_runtime"), 1);
        assert_eq!(server.calls("tasks.edit"), 0, "no read-merge-write");
        let rt = server.task("a")["runtime"].clone();
        assert_eq!(rt["endpoint"], json!("http://r/service/a/"));
        assert_eq!(rt["progress"], json!("7"));
        assert!(rt.get("router_endpoint_error").is_none(), "removed: {rt}");
        // A key the server would escape (the claim, a named endpoint's) is read-merge-written.
        server.state.lock().unwrap().after_edit = None;
        let named =
            BTreeMap::from([("endpoint__ui".to_string(), json!("http://r/service/a__ui/"))]);
        let want = |_: &Task| Ok(named.clone());
        assert_eq!(
            client.update_runtime("a", want).await.unwrap(),
            WriteOutcome::Written { attempts: 1 }
        );
        assert_eq!(server.calls("tasks.edit_runtime"), 1);
        assert_eq!(server.calls("tasks.edit"), 1);
        assert_eq!(
            server.task("a")["runtime"]["endpoint__ui"],
            json!("http://r/service/a__ui/")
        );
    }

    #[tokio::test]
    async fn an_older_server_is_asked_once_then_read_merge_written() {
        let server = MockServer::start().await;
        server.add_task("a", json!({"_SERVICE": "EXTERNAL"}));
        let client = Client::new(&config(&server.url)).unwrap();
        for (i, url) in ["http://r/1/", "http://r/2/"].into_iter().enumerate() {
            let patch = BTreeMap::from([("endpoint".to_string(), json!(url))]);
            assert_eq!(
                client
                    .update_runtime("a", |_: &Task| Ok(patch.clone()))
                    .await
                    .unwrap(),
                WriteOutcome::Written { attempts: 1 }
            );
            assert_eq!(server.calls("tasks.edit"), i + 1);
            assert_eq!(server.task("a")["runtime"]["endpoint"], json!(url));
        }
        assert_eq!(
            server.calls("tasks.edit_runtime"),
            1,
            "404 remembered for the connection"
        );
    }
}
