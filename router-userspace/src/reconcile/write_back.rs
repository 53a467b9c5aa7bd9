//! What to write back on a task once its route is programmed: the runtime keys and their values,
//! and the check on the freshly re-read task that they still answer its request (the write
//! itself is the ClearML client's).

use super::request::{Parsed, Want, parse_task};
use super::settings::Settings;
use crate::clearml::task::{Task, runtime_key};
use crate::endpoint::EndpointId;
use crate::routes::RouteRef;
use crate::validate::UpstreamPolicy;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// The runtime key (per endpoint, with the request keys' suffix: `router_endpoint_error`,
/// `router_endpoint_error__<name>`) that says why the router does not serve an endpoint the
/// task asked for. It has no leading `_`, so the ClearML web app lists it on the task's INFO
/// tab. Written instead of the endpoint while the route cannot be served; every endpoint patch
/// below removes it, so it goes when the endpoint is written.
pub const ENDPOINT_ERROR_KEY: &str = "router_endpoint_error";

/// The keys that say why endpoint `name` is not served.
pub fn error_patch(name: &str, reason: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([(runtime_key(ENDPOINT_ERROR_KEY, name), Value::from(reason))])
}

/// The patch entry removing the endpoint's error key (a `null` in a patch removes the key:
/// `crate::clearml::task::applied`).
fn clear_error(name: &str) -> (String, Value) {
    (runtime_key(ENDPOINT_ERROR_KEY, name), Value::Null)
}

/// Runtime keys to write on one task endpoint once its route is programmed.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteBack {
    pub key: EndpointId,
    pub task_name: String,
    pub route: RouteRef,
    /// The request the write answers; the write is skipped if the task changed it meanwhile.
    pub want: Want,
    pub patch: BTreeMap<String, Value>,
}

/// The keys for a TCP endpoint routed on `port`.
pub fn tcp_patch(
    s: &Settings,
    name: &str,
    port: u16,
    upstream: SocketAddrV4,
) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (
            runtime_key("external_address", name),
            Value::from(s.tcp_address.clone()),
        ),
        (runtime_key("external_tcp_port", name), Value::from(port)),
        (
            runtime_key("upstream_task_address", name),
            Value::from(upstream.ip().to_string()),
        ),
        (
            runtime_key("upstream_task_port", name),
            Value::from(upstream.port()),
        ),
        (
            runtime_key("_ROUTER_NAME", name),
            Value::from(s.router_name.clone()),
        ),
        clear_error(name),
    ])
}

/// The keys for an HTTP endpoint served at `url`.
pub fn http_patch(s: &Settings, name: &str, url: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (runtime_key("endpoint", name), Value::from(url)),
        (runtime_key("browser_endpoint", name), Value::from(url)),
        (
            runtime_key("_ROUTER_NAME", name),
            Value::from(s.router_name.clone()),
        ),
        clear_error(name),
    ])
}

/// Called on the freshly re-read task before (and after) a write: the keys to write if the task
/// still asks for exactly what `wb` answers, else why not.
pub fn recheck(
    task: &Task,
    wb: &WriteBack,
    s: &Settings,
    policy: &UpstreamPolicy,
) -> Result<BTreeMap<String, Value>, String> {
    if !task.wants_routes(&s.queue_ids, &s.queue_names) {
        return Err(format!(
            "task is {} (or untagged, archived, requeued)",
            task.status
        ));
    }
    let kind = wb.want.kind();
    let parsed = parse_task(task, s, policy).into_iter().find(|p| match p {
        Parsed::Request { key, want } => *key == wb.key && want.kind() == kind,
        Parsed::Refused { key, kind: k, .. } => *key == wb.key && k.is_none_or(|k| k == kind),
        Parsed::Foreign { key, .. } => *key == wb.key,
    });
    match parsed {
        None => Err("the task withdrew the request".into()),
        Some(Parsed::Foreign { router, .. }) => Err(format!("claimed by router {router:?}")),
        Some(Parsed::Refused { reason, .. }) => {
            Err(format!("the request is now refused: {reason}"))
        }
        Some(Parsed::Request { want, .. }) => {
            let same = match (&want, &wb.want, &wb.route) {
                (
                    Want::Tcp {
                        upstream,
                        routed_port,
                        ..
                    },
                    Want::Tcp { upstream: ours, .. },
                    RouteRef::Tcp(port),
                ) => upstream == ours && routed_port.is_none_or(|p| p == *port),
                (
                    Want::Http { upstream, mode },
                    Want::Http {
                        upstream: u,
                        mode: m,
                    },
                    _,
                ) => upstream == u && mode == m,
                _ => false,
            };
            if same {
                Ok(wb.patch.clone())
            } else {
                Err("the task changed its request".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::test_support::*;
    use serde_json::json;

    #[test]
    fn sdk_tcp_request_is_routed_and_written_back() {
        let mut r = reconciler(30000, 30010);
        let mut tasks = vec![task(
            "t1",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.1.2.3",
                   "external_tcp_port": 22, "upstream_task_port": 22, "CLEARML VERSION": "2.1"}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(p.routes.tcp.len(), 1);
        let route = &p.routes.tcp[&30000];
        assert_eq!(route.upstream, "10.1.2.3:22".parse().unwrap());
        assert_eq!(route.owner.id.task_id, "t1");
        assert_eq!(p.writes.len(), 1);
        let patch = &p.writes[0].patch;
        assert_eq!(patch["external_address"], json!("203.0.113.7"));
        assert_eq!(patch["external_tcp_port"], json!(30000));
        assert_eq!(patch["upstream_task_address"], json!("10.1.2.3"));
        assert_eq!(patch["upstream_task_port"], json!(22));
        assert_eq!(patch["_ROUTER_NAME"], json!("r1"));
        assert_eq!(
            patch[ENDPOINT_ERROR_KEY],
            Value::Null,
            "clears an earlier error"
        );

        // After the write-back the task reads as routed: same route, nothing more to write.
        write_back(&mut tasks, &p);
        let p2 = plan(&mut r, &tasks);
        assert_eq!(p2.routes, p.routes);
        assert!(p2.writes.is_empty(), "{:?}", p2.writes);
    }

    #[test]
    fn an_error_written_instead_of_the_endpoint_goes_with_the_endpoint() {
        let mut r = reconciler(30000, 30010);
        let mut tasks = vec![task(
            "t",
            json!({"_SERVICE__ssh": "EXTERNAL_TCP", "external_address__ssh": "10.0.0.9",
                   "external_tcp_port__ssh": 22}),
        )];
        let p = plan(&mut r, &tasks);
        let error = error_patch("ssh", "nothing listens on port 30000");
        assert_eq!(
            error,
            BTreeMap::from([(
                "router_endpoint_error__ssh".to_string(),
                json!("nothing listens on port 30000")
            )])
        );
        tasks[0].runtime.extend(error);
        // Still to be written, and the write removes the error.
        let p2 = plan(&mut r, &tasks);
        assert_eq!(p2.writes.len(), 1);
        assert_eq!(
            p2.writes[0].patch["router_endpoint_error__ssh"],
            Value::Null
        );
        write_back(&mut tasks, &p);
        assert!(plan(&mut r, &tasks).writes.is_empty());
    }

    #[test]
    fn a_rewritten_request_is_rerouted_on_the_same_port() {
        let mut r = reconciler(30000, 30010);
        let mut tasks = vec![task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
        )];
        let p = plan(&mut r, &tasks);
        write_back(&mut tasks, &p);
        // The task asks again with a new port (its own address back in external_address).
        let rt = &mut tasks[0].runtime;
        rt.insert("external_address".into(), json!("10.0.0.9"));
        rt.insert("external_tcp_port".into(), json!(2222));
        let p = plan(&mut r, &tasks);
        assert_eq!(
            p.routes.tcp[&30000].upstream,
            "10.0.0.9:2222".parse().unwrap()
        );
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].patch["upstream_task_port"], json!(2222));
    }

    #[test]
    fn recheck_follows_the_task() {
        let mut r = reconciler(30000, 30010);
        let t = task(
            "t",
            json!({"_SERVICE": "EXTERNAL_TCP", "external_address": "10.0.0.9", "external_tcp_port": 22}),
        );
        let p = plan(&mut r, std::slice::from_ref(&t));
        let wb = &p.writes[0];
        let (s, pol) = (settings(), policy());
        assert_eq!(recheck(&t, wb, &s, &pol), Ok(wb.patch.clone()));
        // After our write it still matches (now read through upstream_task_*).
        let mut written = t.clone();
        written.runtime.extend(wb.patch.clone());
        assert_eq!(recheck(&written, wb, &s, &pol), Ok(wb.patch.clone()));
        // Changed request, another router, stopped: no write.
        let mut changed = t.clone();
        changed
            .runtime
            .insert("external_tcp_port".into(), json!(23));
        assert!(
            recheck(&changed, wb, &s, &pol)
                .unwrap_err()
                .contains("changed")
        );
        let mut other = t.clone();
        other.runtime.insert("_ROUTER_NAME".into(), json!("r2"));
        assert!(recheck(&other, wb, &s, &pol).unwrap_err().contains("r2"));
        let mut stopped = t.clone();
        stopped.status = "stopped".into();
        assert!(recheck(&stopped, wb, &s, &pol).is_err());
        let withdrawn = task("t", json!({}));
        assert!(
            recheck(&withdrawn, wb, &s, &pol)
                .unwrap_err()
                .contains("withdrew")
        );
    }
}
