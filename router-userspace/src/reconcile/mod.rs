//! ClearML tasks → the wanted route set, plus the runtime keys to write back.
//!
//! Pure and synchronous: given the tasks of one successful listing, [`Reconciler::plan`]
//! computes every route that should exist now (ports from the allocator, the server winning on
//! conflicts) and which tasks still need their endpoint written. The daemon applies the route
//! set through the owners' traits and only then writes back; a failed listing produces no plan,
//! so an API error never removes a route.
//!
//! Contract (section 7 of `shared/clearml-api.md`):
//! - a request is `_SERVICE<sfx>` = `EXTERNAL` (HTTP: `_ADDRESS<sfx>`, `_PORT<sfx>`) or
//!   `EXTERNAL_TCP` (TCP: `external_address<sfx>`, `external_tcp_port<sfx>`) on a running task
//!   with the `external_service` system tag, for the default endpoint and each `__<name>`;
//! - `_ROUTER_NAME<sfx>` claims the endpoint; another router's claim is left alone;
//! - TCP write-back: `external_address` = `TCP_ROUTER_ADDRESS`, `external_tcp_port` = the
//!   router port, the task's own values kept as `upstream_task_address` / `upstream_task_port`;
//!   "already routed" = our claim, our address and a port in the range;
//! - HTTP write-back: `endpoint` = `browser_endpoint` = `{ROUTER_URL}/service/{key}/` (or
//!   `{label}.{ROUTER_DOMAIN}` in subdomain mode), the key `task[__name]`, or for names outside
//!   `[A-Za-z0-9_-]{1,32}` `task__<readable>-<hash>` (`naming`).
//!
//! The rooms: `request` reads a task's runtime into requests, `naming` and `urls` name an
//! endpoint's route, `write_back` says what to write on the task, `refusal_write` says why a
//! refused request is not served (on the task, for the web app), `limit` applies
//! `ROUTER_MAX_ENDPOINTS_PER_TASK`, `plan` puts it together. None of them does I/O: the ClearML
//! client writes, the daemon applies.

mod client_allow;
mod limit;
mod naming;
mod plan;
mod refusal_write;
mod request;
mod settings;
mod urls;
mod write_back;

pub use client_allow::CLIENT_ALLOW_KEY;
pub use limit::over_limit_reason;
pub use naming::{route_key, subdomain_label};
pub use plan::{Plan, Reconciler};
pub use refusal_write::{RefusalWrite, recheck_refusal};
pub use request::{Kind, Parsed, Refusal, SERVICE_HTTP, SERVICE_TCP, Want, parse_task};
pub use settings::Settings;
pub use urls::endpoint_url;
pub use write_back::{ENDPOINT_ERROR_KEY, WriteBack, error_patch, http_patch, recheck, tcp_patch};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod test_support;
