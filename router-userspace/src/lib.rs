//! task-router: gives ClearML tasks reachable endpoints.
//!
//! Modules are split by owner: `datapath` owns the kernel programs and their maps, `logging` the
//! log pipeline (tracing, with the kernel's aya-log records forwarded into it); the control plane
//! is `config`, `clearml` (API client), `reconcile` (tasks → wanted routes), `ports` (allocator),
//! `routes_file`, `validate` (untrusted input), `admin` (health/status) and `daemon` (wiring).

pub mod admin;
pub mod auth;
pub mod clearml;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod logging;
pub mod metrics;
pub mod nginx;
pub mod ports;
pub mod reconcile;
pub mod routes;
pub mod routes_file;
pub mod validate;
