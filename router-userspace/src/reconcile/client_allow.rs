//! The client allow-list of a task's TCP endpoint: the operator's `ROUTER_TCP_CLIENT_ALLOW`,
//! narrowed by the runtime key the task may set (`_ROUTER_CLIENT_ALLOW<sfx>`). The task can
//! only narrow: a CIDR the operator's list does not wholly admit refuses the request (the route
//! is not served, the reason goes to `router_endpoint_error<sfx>`), as does a malformed list;
//! serving the endpoint wider than the task asked would open it to clients the task meant to
//! keep out.

use crate::clearml::task::{Task, runtime_key};
use crate::client_allow::ClientAllow;
use crate::validate;

/// The runtime key (per endpoint, with the request keys' suffix) a task sets to narrow who may
/// connect to its TCP endpoint: IPv4 CIDRs separated by commas or spaces.
pub const CLIENT_ALLOW_KEY: &str = "_ROUTER_CLIENT_ALLOW";

/// The effective allow-list of TCP endpoint `name` of `task` under the operator's list
/// `operator`, or why the request is refused.
pub fn effective(task: &Task, name: &str, operator: &ClientAllow) -> Result<ClientAllow, String> {
    let key = runtime_key(CLIENT_ALLOW_KEY, name);
    let Some(text) = task.runtime_str(&key) else {
        return Ok(operator.clone());
    };
    let asked = ClientAllow::parse(&text).map_err(|reason| {
        format!(
            "{key} {:?} is not a client allow-list: {reason}",
            validate::truncate(&text)
        )
    })?;
    operator.narrow(&asked).map_err(|outside| {
        format!(
            "{key} may only narrow who connects: {outside} is outside this router's \
             ROUTER_TCP_CLIENT_ALLOW ({operator})"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::test_support::{policy, reconciler, settings, task};
    use crate::routes::RouteSet;
    use serde_json::json;

    fn list(text: &str) -> ClientAllow {
        ClientAllow::parse(text).expect("a valid list")
    }

    #[test]
    fn without_the_key_the_operators_list_holds() {
        let t = task("t", json!({"external_tcp_port": 22}));
        assert_eq!(effective(&t, "", &ClientAllow::Any), Ok(ClientAllow::Any));
        let op = list("10.0.0.0/8");
        assert_eq!(effective(&t, "", &op), Ok(op.clone()));
        // A blank value, or everyone, asks for nothing more.
        let t = task("t", json!({"_ROUTER_CLIENT_ALLOW": " "}));
        assert_eq!(effective(&t, "", &op), Ok(op.clone()));
        let t = task("t", json!({"_ROUTER_CLIENT_ALLOW": "0.0.0.0/0"}));
        assert_eq!(effective(&t, "", &op), Ok(op));
    }

    #[test]
    fn the_task_narrows_its_own_endpoint() {
        let t = task(
            "t",
            json!({"_ROUTER_CLIENT_ALLOW__ssh": "10.8.0.0/16, 10.9.1.1",
                   "_ROUTER_CLIENT_ALLOW": "192.168.0.0/24"}),
        );
        assert_eq!(
            effective(&t, "ssh", &list("10.0.0.0/8")),
            Ok(list("10.8.0.0/16,10.9.1.1"))
        );
        assert_eq!(
            effective(&t, "", &ClientAllow::Any),
            Ok(list("192.168.0.0/24"))
        );
        // Another endpoint's key does not apply.
        assert_eq!(
            effective(&t, "web", &ClientAllow::Any),
            Ok(ClientAllow::Any)
        );
    }

    #[test]
    fn widening_or_malformed_keys_are_refused_with_the_reason() {
        let op = list("10.0.0.0/8");
        let t = task(
            "t",
            json!({"_ROUTER_CLIENT_ALLOW": "10.1.0.0/16,192.168.0.0/16"}),
        );
        let err = effective(&t, "", &op).unwrap_err();
        assert!(err.contains("may only narrow"), "{err}");
        assert!(err.contains("192.168.0.0/16 is outside"), "{err}");
        assert!(err.contains("(10.0.0.0/8)"), "{err}");
        let t = task(
            "t",
            json!({"_ROUTER_CLIENT_ALLOW__db": "10.1.0.0/16;10.2.0.0/16"}),
        );
        let err = effective(&t, "db", &op).unwrap_err();
        assert!(
            err.starts_with("_ROUTER_CLIENT_ALLOW__db \"10.1.0.0/16;10.2.0.0/16\""),
            "{err}"
        );
        assert!(err.contains("is not an IPv4 CIDR"), "{err}");
    }

    #[test]
    fn the_plan_carries_each_routes_list_and_refuses_a_widening_key_alone() {
        let mut r = reconciler(30000, 30010);
        let mut s = settings();
        s.client_allow = list("10.0.0.0/8");
        let tcp = |id: &str, allow: Option<&str>| {
            let mut rt = json!({"external_address": "10.0.0.9", "external_tcp_port": 22});
            if let Some(allow) = allow {
                rt["_ROUTER_CLIENT_ALLOW"] = json!(allow);
            }
            task(id, rt)
        };
        let tasks = vec![
            tcp("narrow", Some("10.8.0.0/16")),
            tcp("plain", None),
            tcp("wide", Some("0.0.0.0/1")),
        ];
        let (none, p) = (RouteSet::default(), policy());
        let plan = r.plan(&tasks, &none, &none, &s, &p, 0);
        let allow_of: std::collections::BTreeMap<&str, String> = plan
            .routes
            .tcp
            .values()
            .map(|t| (t.owner.id.task_id.as_str(), t.allow.to_string()))
            .collect();
        assert_eq!(
            allow_of,
            [
                ("narrow", "10.8.0.0/16".into()),
                ("plain", "10.0.0.0/8".into())
            ]
            .into()
        );
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].owner.id.task_id, "wide");
        assert!(plan.refused[0].reason.contains("0.0.0.0/1 is outside"));
    }
}
