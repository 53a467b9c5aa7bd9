//! What the reconciler needs to know about this router (from the configuration).

use crate::client_allow::ClientAllow;
use crate::routes::HttpMode;

/// What the reconciler needs to know about this router.
#[derive(Clone, Debug)]
pub struct Settings {
    pub router_name: String,
    /// `TCP_ROUTER_ADDRESS`.
    pub tcp_address: String,
    /// `ROUTER_URL`, no trailing slash.
    pub url: String,
    pub domain: Option<String>,
    pub default_mode: HttpMode,
    /// Ids of the listened queues; empty (with `queue_names`) = all.
    pub queue_ids: Vec<String>,
    /// Names of the listened queues, as a task the open-source Kubernetes glue moved keeps
    /// them (`clearml::task::K8S_QUEUE_PROPERTY`).
    pub queue_names: Vec<String>,
    /// `ROUTER_MAX_ENDPOINTS_PER_TASK`: routes (TCP and HTTP together) one task may hold.
    pub max_endpoints_per_task: usize,
    /// `ROUTER_TCP_CLIENT_ALLOW`: who may connect to a task's TCP endpoint unless the task
    /// narrows it (`client_allow`).
    pub client_allow: ClientAllow,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Settings {
            router_name: cfg.router.name.clone(),
            tcp_address: cfg.tcp.router_address.clone(),
            url: cfg.router.url.clone(),
            domain: cfg.http.domain.clone(),
            default_mode: cfg.http.mode,
            queue_ids: Vec::new(),
            queue_names: Vec::new(),
            max_endpoints_per_task: cfg.router.max_endpoints_per_task as usize,
            client_allow: cfg.tcp.client_allow.clone(),
        }
    }
}
