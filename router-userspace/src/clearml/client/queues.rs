//! Queue names to ids (`LISTEN_QUEUE_NAME`).

use super::{Client, MAX_PAGE_SIZE};
use crate::clearml::error::ApiError;
use serde_json::{Value, json};

impl Client {
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
    use crate::clearml::mock::{MockServer, client_config as config};

    #[test]
    fn queue_names_are_escaped() {
        assert_eq!(regex_escape("gpu.queue+1"), "gpu\\.queue\\+1");
        assert_eq!(regex_escape("plain_name"), "plain_name");
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
