//! The ClearML API as task-router uses it (contract: `../shared/clearml-api.md`): log in and keep
//! the token fresh, list the tasks that asked for an endpoint (paged, hidden ones included),
//! resolve queue names, and write endpoints back with read-merge-write.

pub mod client;
pub mod error;
pub mod task;

#[cfg(test)]
pub(crate) mod mock;

pub use client::{Client, WriteOutcome};
pub use error::ApiError;
pub use task::Task;
