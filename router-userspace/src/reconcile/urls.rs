//! The URL of an HTTP endpoint, as written back to the task.

use super::naming::{route_key, subdomain_label};
use super::settings::Settings;
use crate::endpoint::EndpointId;
use crate::routes::HttpMode;

/// The URL written as `endpoint` / `browser_endpoint` (the one place it is built): path mode
/// `{ROUTER_URL}/service/{route key}/`; subdomain mode
/// `{scheme}://{label}.{ROUTER_DOMAIN}[:port]/` with the scheme and port of `ROUTER_URL` (see
/// [`super::naming`] for the key and the label).
pub fn endpoint_url(s: &Settings, key: &EndpointId, mode: HttpMode) -> String {
    match (mode, &s.domain) {
        (HttpMode::Subdomain, Some(domain)) => {
            let (scheme, rest) = s.url.split_once("://").unwrap_or(("http", &s.url));
            let authority = rest.split('/').next().unwrap_or("");
            let port = match authority.strip_prefix('[') {
                Some(v6) => v6.split_once(']').map(|(_, after)| after).unwrap_or(""),
                None => authority.find(':').map(|i| &authority[i..]).unwrap_or(""),
            };
            let label = subdomain_label(&key.task_id, &key.endpoint).unwrap_or_default();
            format!("{scheme}://{label}.{domain}{port}/")
        }
        _ => {
            let key = route_key(&key.task_id, &key.endpoint, HttpMode::Path)
                .unwrap_or_else(|_| key.to_string());
            format!("{}/service/{key}/", s.url)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::test_support::*;
    use serde_json::Value;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn http_requests_get_urls_default_and_named() {
        let mut r = reconciler(30000, 30010);
        let tasks = vec![task(
            "abc",
            json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.5", "_PORT": 7860,
                   "_SERVICE__api": "EXTERNAL", "_ADDRESS__api": "10.0.0.5", "_PORT__api": "8000",
                   "_SERVICE__ui": "EXTERNAL", "_ADDRESS__ui": "10.0.0.5", "_PORT__ui": 8501,
                   "_ROUTER_ENDPOINT_MODE__ui": "subdomain"}),
        )];
        let p = plan(&mut r, &tasks);
        assert_eq!(p.routes.http.len(), 3);
        assert!(p.routes.tcp.is_empty());
        let def = &p.routes.http["abc"];
        assert_eq!(def.upstream, "10.0.0.5:7860".parse().unwrap());
        assert_eq!(def.mode, HttpMode::Path);
        assert_eq!(p.routes.http["abc__api"].owner.id.endpoint, "api");
        assert_eq!(p.routes.http["abc__ui"].mode, HttpMode::Subdomain);
        let urls: BTreeMap<String, Value> = p
            .writes
            .iter()
            .flat_map(|w| w.patch.clone())
            .filter(|(k, _)| k.starts_with("endpoint"))
            .collect();
        assert_eq!(
            urls["endpoint"],
            json!("https://router.example.com/service/abc/")
        );
        assert_eq!(
            urls["endpoint__api"],
            json!("https://router.example.com/service/abc__api/")
        );
        assert_eq!(
            urls["endpoint__ui"],
            json!("https://abc--ui.apps.example.com/")
        );
        let w = p.writes.iter().find(|w| w.key.endpoint == "api").unwrap();
        assert_eq!(w.patch["browser_endpoint__api"], w.patch["endpoint__api"]);
        assert_eq!(w.patch["_ROUTER_NAME__api"], json!("r1"));
    }

    #[test]
    fn any_name_the_sdk_takes_is_routed_under_a_derived_key() {
        let mut r = reconciler(30000, 30010);
        let tasks = vec![task(
            "abc",
            json!({"_SERVICE__My App 2.0": "EXTERNAL", "_ADDRESS__My App 2.0": "10.0.0.5",
                   "_PORT__My App 2.0": 7860,
                   "_SERVICE__café": "EXTERNAL", "_ADDRESS__café": "10.0.0.5", "_PORT__café": 80,
                   "_ROUTER_ENDPOINT_MODE__café": "subdomain"}),
        )];
        let p = plan(&mut r, &tasks);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let (key, route) = p
            .routes
            .http
            .iter()
            .find(|(_, r)| r.owner.id.endpoint == "My App 2.0")
            .expect("route of the name as written");
        assert!(key.starts_with("abc__my-app-2-0-"), "{key}");
        let w = p.writes.iter().find(|w| w.key == route.owner.id).unwrap();
        assert_eq!(
            w.patch["endpoint__My App 2.0"],
            json!(format!("https://router.example.com/service/{key}/"))
        );
        assert_eq!(w.patch["_ROUTER_NAME__My App 2.0"], json!("r1"));
        let w = p.writes.iter().find(|w| w.key.endpoint == "café").unwrap();
        let url = w.patch["endpoint__café"].as_str().unwrap();
        assert!(url.starts_with("https://abc--caf-"), "{url}");
        assert!(url.ends_with(".apps.example.com/"), "{url}");
    }

    #[test]
    fn two_names_deriving_one_key_are_not_both_served() {
        let mut r = reconciler(30000, 30010);
        let derived = crate::reconcile::naming::route_key("abc", "a.b", HttpMode::Path).unwrap();
        let literal = derived.trim_start_matches("abc__").to_string();
        let mut rt = serde_json::Map::new();
        for name in ["a.b", literal.as_str()] {
            rt.insert(format!("_ADDRESS__{name}"), json!("10.0.0.5"));
            rt.insert(format!("_PORT__{name}"), json!(80));
        }
        let p = plan(&mut r, &[running_task("abc", rt)]);
        assert_eq!(p.routes.http.len(), 1);
        assert_eq!(p.refused.len(), 1);
        assert!(
            p.refused[0].reason.contains("is taken by endpoint"),
            "{:?}",
            p.refused
        );
    }

    #[test]
    fn subdomain_urls_keep_the_router_port() {
        let mut s = settings();
        s.url = "http://203.0.113.7:8080".into();
        let key = EndpointId::new("abc", "");
        assert_eq!(
            endpoint_url(&s, &key, HttpMode::Subdomain),
            "http://abc.apps.example.com:8080/"
        );
        assert_eq!(
            endpoint_url(&s, &key, HttpMode::Path),
            "http://203.0.113.7:8080/service/abc/"
        );
    }
}
