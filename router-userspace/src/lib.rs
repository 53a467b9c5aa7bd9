//! task-router: gives ClearML tasks reachable endpoints.
//!
//! Modules are split by owner: `datapath` owns the kernel programs and their maps, `logging` the
//! log pipeline (tracing, with the kernel's aya-log records forwarded into it).

pub mod auth;
pub mod config;
pub mod datapath;
pub mod logging;
pub mod nginx;
pub mod routes;
