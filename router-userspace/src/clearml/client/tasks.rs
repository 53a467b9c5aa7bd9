//! The task calls: list the tasks that asked for an endpoint (paged, hidden ones included), look
//! tasks up by id, and replace a task's runtime whole.

use super::Client;
use crate::clearml::error::ApiError;
use crate::clearml::task::{
    EXTERNAL_SERVICE_TAG, IN_PROGRESS, K8S_QUEUE_PROPERTY, ONLY_FIELDS, Task,
};
use serde_json::{Map, Value, json};
use std::collections::HashSet;

impl Client {
    /// Every task that asked for an endpoint and runs in one of the queues `queue_ids` named
    /// `queue_names` (both empty = any queue), hidden ones included, read page by page.
    /// Entries without an id are skipped (counted in the second value).
    ///
    /// A task the open-source Kubernetes glue moved to its own queue keeps the user's queue
    /// only as the name in [`K8S_QUEUE_PROPERTY`]; the server ANDs filters of different
    /// fields, so those are a second listing, by that name.
    pub async fn tasks_requesting_endpoints(
        &self,
        queue_ids: &[String],
        queue_names: &[String],
    ) -> Result<(Vec<Task>, usize), ApiError> {
        let body = json!({
            "system_tags": [EXTERNAL_SERVICE_TAG],
            "status": [IN_PROGRESS],
            "search_hidden": true,
            "only_fields": ONLY_FIELDS,
            "order_by": ["id"],
        });
        if queue_ids.is_empty() && queue_names.is_empty() {
            return self.get_all_paged(body).await;
        }
        let mut filters = Vec::new();
        if !queue_ids.is_empty() {
            filters.push(("execution.queue".to_string(), queue_ids));
        }
        if !queue_names.is_empty() {
            filters.push((format!("{K8S_QUEUE_PROPERTY}.value"), queue_names));
        }
        let (mut tasks, mut skipped) = (Vec::new(), 0);
        let mut seen = HashSet::new();
        for (field, values) in filters {
            let mut filtered = body.clone();
            filtered[field] = json!(values);
            let (found, dropped) = self.get_all_paged(filtered).await?;
            skipped += dropped;
            tasks.extend(found.into_iter().filter(|t| seen.insert(t.id.clone())));
        }
        Ok((tasks, skipped))
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
    pub async fn replace_runtime(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearml::mock::{MockServer, client_config as config};

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
        let (tasks, skipped) = client.tasks_requesting_endpoints(&[], &[]).await.unwrap();
        assert_eq!(tasks.len(), 1203);
        assert_eq!(skipped, 0);
        assert_eq!(server.calls("tasks.get_all"), 3, "500 + 500 + 203");
        assert_eq!(server.calls("auth.login"), 1);
        let client = client.with_page_size(100);
        let (tasks, _) = client.tasks_requesting_endpoints(&[], &[]).await.unwrap();
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
    async fn listened_queues_match_by_id_or_by_the_k8s_glues_property() {
        let server = MockServer::start().await;
        server.add_task("by-id", json!({}));
        server.add_task("glued", json!({}));
        server.set("glued", "execution", json!({"queue": "k8s-scheduler"}));
        let property = json!({"section": "properties", "name": "k8s-queue", "value": "gpu"});
        server.set(
            "glued",
            "hyperparams",
            json!({"properties": {"k8s-queue": property}}),
        );
        server.add_task("both", json!({}));
        server.set(
            "both",
            "hyperparams",
            json!({"properties": {"k8s-queue": property}}),
        );
        server.add_task("other", json!({}));
        server.set("other", "execution", json!({"queue": "cpu-id"}));
        let client = Client::new(&config(&server.url)).unwrap();
        let (tasks, _) = client
            .tasks_requesting_endpoints(&["q-default".into()], &["gpu".into()])
            .await
            .unwrap();
        let mut ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["both", "by-id", "glued"]);
        assert_eq!(server.calls("tasks.get_all"), 2, "one listing per filter");
        let glued = tasks.iter().find(|t| t.id == "glued").unwrap();
        assert_eq!(glued.k8s_queue.as_deref(), Some("gpu"));
    }
}
