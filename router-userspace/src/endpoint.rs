//! The identity of a task endpoint, declared once.

/// One endpoint of one task (or a routes-file entry): the identity a port, a route, a write-back
/// and a status row are keyed by. Shown as `task` for the default endpoint, `task__name` else
/// (the SDK's runtime-key suffix convention).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct EndpointId {
    pub task_id: String,
    /// Empty for the default endpoint.
    pub endpoint: String,
}

impl EndpointId {
    pub fn new(task_id: impl Into<String>, endpoint: impl Into<String>) -> Self {
        EndpointId {
            task_id: task_id.into(),
            endpoint: endpoint.into(),
        }
    }
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.endpoint.is_empty() {
            f.write_str(&self.task_id)
        } else {
            write!(f, "{}__{}", self.task_id, self.endpoint)
        }
    }
}
