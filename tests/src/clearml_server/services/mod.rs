//! The endpoints this server knows, with the version each appeared in, whether it needs
//! authorization and its required fields, like the real server's `ServiceRepo` registry.

mod misc;
mod queueing;
mod runtime;
mod tasks;

pub use misc::SERVER_BUILD;
pub use runtime::escape_key;

use super::auth::Identity;
use super::error::ApiError;
use super::store::State;
use serde_json::{Map, Value};

/// One API call after parsing: the body (or query string) as an object, and for
/// `application/json-lines` requests the batch items.
pub struct Call {
    pub data: Map<String, Value>,
    pub batch: Option<Vec<Value>>,
    pub identity: Identity,
}

impl Call {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
    pub fn flag(&self, key: &str) -> bool {
        self.data.get(key).and_then(Value::as_bool) == Some(true)
    }
}

pub type Handler = fn(&mut State, &Call) -> Result<Value, ApiError>;

pub struct Endpoint {
    pub name: &'static str,
    /// The lowest API version serving this endpoint (`actual_version` in the envelope).
    pub min_version: (u32, u32),
    /// The server API level that brought it (a server posing as an older release answers it
    /// as unknown); mostly `min_version`, but `tasks.edit_runtime` came with API 2.34 while
    /// being served from version 1.0.
    pub added_in: (u32, u32),
    pub authorize: bool,
    pub required: &'static [&'static str],
    pub handler: Handler,
}

const fn ep(
    name: &'static str,
    min_version: (u32, u32),
    required: &'static [&'static str],
    handler: Handler,
) -> Endpoint {
    Endpoint {
        name,
        min_version,
        added_in: min_version,
        authorize: true,
        required,
        handler,
    }
}

/// `e`, brought by server API level `api`.
const fn added_in(api: (u32, u32), e: Endpoint) -> Endpoint {
    Endpoint { added_in: api, ..e }
}

const fn open(name: &'static str, min_version: (u32, u32), handler: Handler) -> Endpoint {
    Endpoint {
        name,
        min_version,
        added_in: min_version,
        authorize: false,
        required: &[],
        handler,
    }
}

/// The registry. `auth.login` is answered by the HTTP layer (it sets a cookie) but is listed
/// here so that versions and authorization are checked like any other call.
pub static ENDPOINTS: &[Endpoint] = &[
    ep("auth.login", (2, 1), &[], misc::auth_login_placeholder),
    open("server.info", (2, 1), misc::server_info),
    open("debug.ping", (1, 5), misc::debug_ping),
    ep(
        "users.get_current_user",
        (1, 5),
        &[],
        misc::users_get_current_user,
    ),
    ep("users.get_vaults", (2, 15), &[], misc::users_get_vaults),
    ep("users.get_all", (1, 5), &[], misc::users_get_all),
    ep("queues.get_all", (2, 4), &[], misc::queues_get_all),
    ep("queues.get_all_ex", (2, 4), &[], misc::queues_get_all),
    ep(
        "queues.get_by_id",
        (2, 4),
        &["queue"],
        misc::queues_get_by_id,
    ),
    ep("queues.get_default", (2, 4), &[], misc::queues_get_default),
    ep("queues.create", (2, 4), &["name"], misc::queues_create),
    ep("projects.get_all", (2, 1), &[], misc::projects_get_all),
    ep("projects.get_all_ex", (2, 1), &[], misc::projects_get_all),
    ep(
        "projects.get_by_id",
        (2, 1),
        &["project"],
        misc::projects_get_by_id,
    ),
    ep("projects.create", (2, 1), &["name"], misc::projects_create),
    ep("models.get_all", (2, 1), &[], misc::models_get_all),
    ep("models.get_all_ex", (2, 1), &[], misc::models_get_all),
    ep(
        "models.get_by_id",
        (2, 1),
        &["model"],
        misc::models_get_by_id,
    ),
    ep("events.add", (2, 1), &[], misc::events_add),
    ep("events.add_batch", (2, 1), &[], misc::events_add_batch),
    ep("tasks.get_all", (2, 1), &[], tasks::get_all),
    ep("tasks.get_all_ex", (2, 1), &[], tasks::get_all),
    ep("tasks.get_by_id", (2, 1), &["task"], tasks::get_by_id),
    ep("tasks.create", (2, 1), &["name", "type"], tasks::create),
    ep("tasks.edit", (2, 1), &["task"], tasks::edit),
    ep("tasks.update", (2, 1), &["task"], tasks::update),
    ep("tasks.reset", (2, 1), &["task"], tasks::reset),
    ep("tasks.stop", (2, 1), &["task"], tasks::stop),
    ep("tasks.stopped", (2, 1), &["task"], tasks::stopped),
    ep("tasks.started", (2, 1), &["task"], tasks::started),
    ep("tasks.completed", (2, 2), &["task"], tasks::completed),
    ep("tasks.failed", (2, 1), &["task"], tasks::failed),
    ep("tasks.close", (2, 1), &["task"], tasks::close),
    ep("tasks.ping", (2, 1), &["task"], tasks::ping),
    ep("tasks.enqueue", (2, 1), &["task"], queueing::enqueue),
    ep("tasks.dequeue", (2, 1), &["task"], queueing::dequeue),
    ep("tasks.delete", (2, 1), &["task"], tasks::delete),
    ep(
        "tasks.edit_hyper_params",
        (2, 9),
        &["task"],
        tasks::edit_hyper_params,
    ),
    ep(
        "tasks.edit_configuration",
        (2, 9),
        &["task"],
        tasks::edit_configuration,
    ),
    ep(
        "tasks.add_or_update_artifacts",
        (2, 10),
        &["task"],
        tasks::add_or_update_artifacts,
    ),
    ep(
        "tasks.add_or_update_model",
        (2, 13),
        &["task"],
        tasks::add_or_update_model,
    ),
    // Registered without `min_version` (so from 1.0) and validated by its data model only
    // (`services/tasks.py:1425`, `service_repo/__init__.py:17-24`), new in 2.3.0 = API 2.34
    // (`service_repo.py:42` at v2.3.0; absent at v2.2.0).
    added_in(
        (2, 34),
        ep("tasks.edit_runtime", (1, 0), &[], runtime::edit_runtime),
    ),
    ep(
        "tasks.set_requirements",
        (2, 1),
        &["task", "requirements"],
        tasks::set_requirements,
    ),
];

/// The endpoint `name` as a server of API level `api` has it.
pub fn find(name: &str, api: (u32, u32)) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| e.name == name && e.added_in <= api)
}
