//! The generated `http`-context configuration: one `location` per path-mode route on the main
//! server, one `server` per subdomain-mode route, the shared maps, upstreams and the
//! `auth_request` wiring.
//!
//! Requests are proxied the way a hand-written `proxy_pass http://upstream/;` does (nginx strips
//! the prefix from its normalised URI), with one exception: a path holding an encoded slash
//! (`%2F`, which normalisation would decode; Jupyter-style contents APIs and RabbitMQ-style vhost
//! paths use it) is passed raw, the prefix cut from `$request_uri`, when its raw prefix names
//! the same route. The raw branch costs a variable `proxy_pass`, whose upstream lookup is a
//! linear search over every upstream block, so it is kept off the common path (measured: a
//! variable `proxy_pass` on every request costs about a quarter of the requests/s with 100
//! routes).
//!
//! With authentication on, nginx caches the daemon's `auth_request` answers (a loopback round
//! trip per request cost about 40 % of the requests/s): keyed by the request's whole `Cookie`
//! and `Authorization` headers, so only a request carrying exactly the same token (and the same
//! other cookies, which the answer's forwarded `Cookie` is made of) reuses a yes; a forged or
//! different token is a different key. How long an answer may be reused is the daemon's to say
//! (`X-Accel-Expires`, `auth::web`): a yes at most `auth`'s cache lifetime and never past its
//! token's `exp`, a refusal never; nothing else makes an answer cacheable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{AuthConfig, HttpConfig, RouterConfig};
use crate::routes::{HttpMode, HttpRoute, RouteRef};

use super::names::{self, NameError};

/// Path-mode URLs: `{ROUTER_URL}/service/{key}/`.
pub const SERVICE_PREFIX: &str = "/service/";
/// The internal location nginx sends `auth_request` subrequests to.
const AUTH_LOCATION: &str = "/.task-router/auth";
/// Notebook cells and idle WebSockets can go quiet for hours; a day bounds a hung upstream.
const IDLE_TIMEOUT: &str = "86400s";
/// An upstream that does not accept within this is not coming.
const CONNECT_TIMEOUT: &str = "10s";
/// Idle keep-alive connections kept per upstream per worker: saves a TCP handshake per request.
const UPSTREAM_KEEPALIVE: u32 = 16;
/// The cache of `auth_request` answers: its directory, relative to nginx's prefix (a managed
/// nginx's is `NGINX_CONF_DIR`; a packaged one's is compiled in, `/etc/nginx` in the official
/// image, `/usr/share/nginx` on Debian), so each nginx has its own. nginx creates it for its
/// worker user, mode 0700; the files hold the request's cookies.
pub const AUTH_CACHE_DIR: &str = "task-router-auth-cache";
/// Its shared-memory zone, and the zone's size: 4 MiB hold about 32 000 answers.
const AUTH_CACHE_ZONE: &str = "task_router_auth_answers";
const AUTH_CACHE_ZONE_SIZE: &str = "4m";
/// Files of answers no request asked for this long are removed (every answer has run out by
/// then: none is reused longer than the daemon's cache lifetime).
const AUTH_CACHE_INACTIVE_SECS: u64 = crate::auth::CACHE_TTL.as_secs();
/// Answer files each worker keeps open (descriptors: Debian's stock configuration leaves
/// workers 1024).
const AUTH_OPEN_FILES: u32 = 256;
/// The auth subrequest's header buffer, which a cached answer also shares with its key (the
/// request's `Cookie` and `Authorization`, up to nginx's 8 KiB per header line each): large
/// enough that any request whose answer fitted the default 4 KiB still fits beside its key.
const AUTH_BUFFER: &str = "16k";

/// What the HTTP configuration is generated from, validated once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// The port the routes are served on (`ROUTER__WEBSERVER__SERVER_PORT`).
    pub listen_port: u16,
    /// `ROUTER_DOMAIN`, normalised; subdomain routes need it.
    pub domain: Option<String>,
    /// `X-Forwarded-Proto` as users reach the router (the scheme of `ROUTER_URL`); `None` =
    /// nginx's own `$scheme`.
    pub forwarded_proto: Option<&'static str>,
    /// Where `auth_request` subrequests go (the daemon's admin endpoint serving
    /// [`crate::auth::AUTH_PATH`]); `None` = authentication off.
    pub auth_upstream: Option<SocketAddr>,
}

impl HttpSettings {
    /// Settings from the configuration sections. `admin_addr` is where the daemon serves
    /// [`crate::auth::router`]; an unspecified address is reached over loopback.
    pub fn from_config(
        http: &HttpConfig,
        auth: &AuthConfig,
        router: &RouterConfig,
        admin_addr: SocketAddr,
    ) -> Result<HttpSettings, NameError> {
        if http.server_port == 0 {
            return Err(NameError::Port);
        }
        let domain = http.domain.as_deref().map(names::domain).transpose()?;
        if http.mode == HttpMode::Subdomain && domain.is_none() {
            return Err(NameError::NoDomain);
        }
        let forwarded_proto = scheme_of(&router.url);
        let auth_upstream = auth.enabled.then(|| loopback_if_unspecified(admin_addr));
        Ok(HttpSettings {
            listen_port: http.server_port,
            domain,
            forwarded_proto,
            auth_upstream,
        })
    }
}

fn scheme_of(url: &str) -> Option<&'static str> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("https://") {
        Some("https")
    } else if lower.starts_with("http://") {
        Some("http")
    } else {
        None
    }
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// A rendered configuration and what went into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderedHttp {
    pub text: String,
    /// The routes the text serves.
    pub accepted: BTreeMap<String, HttpRoute>,
    /// Routes left out, with the reason.
    pub failed: Vec<(RouteRef, String)>,
}

/// Renders the whole `http`-context file for `wanted`. Routes with an invalid key, upstream or
/// host name are left out (listed in `failed`); nothing else about them reaches the text.
pub fn render(settings: &HttpSettings, wanted: &BTreeMap<String, HttpRoute>) -> RenderedHttp {
    let mut out = RenderedHttp::default();
    let mut path_routes = Vec::new();
    let mut host_routes = Vec::new();
    let mut labels = BTreeSet::new();
    for (map_key, route) in wanted {
        match check_route(settings, map_key, route, &mut labels) {
            Ok(Some(label)) => host_routes.push((route, label)),
            Ok(None) => path_routes.push(route),
            Err(reason) => {
                out.failed.push((RouteRef::Http(map_key.clone()), reason));
                continue;
            }
        }
        out.accepted.insert(map_key.clone(), route.clone());
    }

    let t = &mut out.text;
    t.push_str("# Generated by task-router; rewritten on every route change. Do not edit.\n\n");
    // The raw key of a /service/ URI whose path holds an encoded slash, and the raw remainder.
    let _ = writeln!(
        t,
        "map $request_uri $task_router_raw_key {{\n    \"~^{SERVICE_PREFIX}([^/?]*)/[^?]*%2[Ff]\" $1;\n    default \"\";\n}}"
    );
    let _ = writeln!(
        t,
        "map $request_uri $task_router_rest {{\n    \"~^{SERVICE_PREFIX}[^/?]*(/.*)$\" $1;\n    default /;\n}}"
    );
    // Upgrade requests keep `Connection: upgrade`; all others send none, so upstream
    // connections stay alive.
    t.push_str(
        "map $http_upgrade $task_router_connection {\n    default upgrade;\n    \"\" \"\";\n}\n\n",
    );
    if let Some(auth) = settings.auth_upstream {
        let _ = writeln!(
            t,
            "proxy_cache_path {AUTH_CACHE_DIR} levels=1:2 keys_zone={AUTH_CACHE_ZONE}:{AUTH_CACHE_ZONE_SIZE} max_size=64m inactive={AUTH_CACHE_INACTIVE_SECS}s use_temp_path=off;\n"
        );
        let _ = writeln!(
            t,
            "upstream task_router_auth {{\n    server {auth};\n    keepalive 8;\n}}\n"
        );
    }
    for route in path_routes.iter().chain(host_routes.iter().map(|(r, _)| r)) {
        let _ = writeln!(
            t,
            "upstream {} {{\n    server {};\n    keepalive {UPSTREAM_KEEPALIVE};\n}}\n",
            upstream_name(&route.key),
            route.upstream
        );
    }

    let _ = writeln!(t, "server {{\n    listen {};", settings.listen_port);
    server_common(t, settings, !path_routes.is_empty());
    t.push_str("    location / {\n        return 404;\n    }\n");
    for route in &path_routes {
        let key = &route.key;
        let upstream = upstream_name(key);
        let _ = writeln!(t, "    location {SERVICE_PREFIX}{key}/ {{");
        proxy(
            t,
            settings,
            &format!("http://{upstream}/"),
            Some(&format!("{SERVICE_PREFIX}{key}")),
        );
        // The block inherits every other directive of the location.
        let _ = writeln!(
            t,
            "        if ($task_router_raw_key = \"{key}\") {{\n            proxy_pass http://{upstream}$task_router_rest;\n        }}"
        );
        t.push_str("    }\n");
    }
    t.push_str("}\n");

    for (route, label) in &host_routes {
        let domain = settings.domain.as_deref().unwrap_or_default();
        let _ = writeln!(
            t,
            "\nserver {{\n    listen {};\n    server_name {label}.{domain};",
            settings.listen_port
        );
        server_common(t, settings, true);
        t.push_str("    location / {\n");
        proxy(
            t,
            settings,
            &format!("http://{}", upstream_name(&route.key)),
            None,
        );
        t.push_str("    }\n}\n");
    }
    out
}

/// Validates one route; `Some(label)` for a subdomain route.
fn check_route(
    settings: &HttpSettings,
    map_key: &str,
    route: &HttpRoute,
    labels: &mut BTreeSet<String>,
) -> Result<Option<String>, String> {
    names::route_key(&route.key).map_err(|e| e.to_string())?;
    if map_key != route.key {
        return Err(format!(
            "route is filed under {map_key:?} but its key is {:?}",
            route.key
        ));
    }
    names::upstream(route.upstream).map_err(|e| e.to_string())?;
    match route.mode {
        HttpMode::Path => Ok(None),
        HttpMode::Subdomain => {
            if settings.domain.is_none() {
                return Err("subdomain mode needs ROUTER_DOMAIN".to_string());
            }
            let label = names::host_label(&route.key).map_err(|e| e.to_string())?;
            if !labels.insert(label.clone()) {
                return Err(format!(
                    "host name {label:?} is already served by another route"
                ));
            }
            Ok(Some(label))
        }
    }
}

fn upstream_name(key: &str) -> String {
    format!("task_router_u_{key}")
}

/// Directives every generated server has: relative redirects (the router sits behind a load
/// balancer whose port nginx does not know), no slash merging (`//service/x/` names no route),
/// and the authentication locations. `proxies` says whether the server has route locations:
/// the 401 location reads `$task_router_login`, which only their `auth_request_set` defines, so
/// nginx refuses a server that has the one without the other.
fn server_common(t: &mut String, settings: &HttpSettings, proxies: bool) {
    t.push_str("    absolute_redirect off;\n    merge_slashes off;\n");
    if settings.auth_upstream.is_none() {
        return;
    }
    let proto = settings.forwarded_proto.unwrap_or("$scheme");
    let _ = writeln!(
        t,
        "    location = {AUTH_LOCATION} {{\n        internal;\n        proxy_pass http://task_router_auth{};\n        proxy_pass_request_body off;\n        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n        proxy_set_header Upgrade \"\";\n        proxy_set_header Content-Length \"\";\n        proxy_set_header X-Original-URI $request_uri;\n        proxy_set_header X-Original-Method $request_method;\n        proxy_set_header X-Forwarded-Host $http_host;\n        proxy_set_header X-Forwarded-Proto {proto};\n        proxy_connect_timeout 2s;\n        proxy_read_timeout 10s;",
        crate::auth::AUTH_PATH
    );
    auth_cache(t);
    t.push_str("    }\n");
    if !proxies {
        return;
    }
    // Browsers sent to the login page when the auth endpoint names one; others get a 401 that
    // says what is missing.
    t.push_str(
        "    location @task_router_unauthorized {\n        if ($task_router_login != \"\") {\n            return 302 $task_router_login;\n        }\n        add_header WWW-Authenticate 'Bearer realm=\"task-router\"' always;\n        default_type text/plain;\n        return 401 \"ClearML sign-in required: no valid ClearML token in the cookie or Authorization header.\\n\";\n    }\n",
    );
}

/// The auth location's cache of answers. The key is every request header the daemon's yes
/// depends on, separated by a newline (which no header value holds), so two requests share an
/// answer only if they carry the same credentials. Only `X-Accel-Expires` decides whether and
/// how long an answer is kept (`Set-Cookie` would otherwise keep a bearer answer out, and
/// nginx 1.22 lets a `Cache-Control` seen first override `X-Accel-Expires`).
///
/// Each worker keeps the files of the answers it reads open (`open_file_cache`: an open, fstat
/// and close less per request, measured at about 15 % of nginx's CPU per cached request): the
/// cache's own index says which file holds the current answer (a replaced one is reopened),
/// and every answer carries its own expiry, checked on every read.
fn auth_cache(t: &mut String) {
    let _ = writeln!(
        t,
        "        proxy_cache {AUTH_CACHE_ZONE};\n        proxy_cache_key \"$http_cookie\\n$http_authorization\";\n        proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;\n        proxy_buffer_size {AUTH_BUFFER};\n        proxy_busy_buffers_size {AUTH_BUFFER};\n        open_file_cache max={AUTH_OPEN_FILES} inactive={AUTH_CACHE_INACTIVE_SECS}s;"
    );
}

/// The proxying directives of one route's location.
fn proxy(t: &mut String, settings: &HttpSettings, pass: &str, prefix: Option<&str>) {
    let proto = settings.forwarded_proto.unwrap_or("$scheme");
    let _ = writeln!(t, "        proxy_pass {pass};");
    t.push_str(
        "        proxy_http_version 1.1;\n        proxy_set_header Host $http_host;\n        proxy_set_header Upgrade $http_upgrade;\n        proxy_set_header Connection $task_router_connection;\n        proxy_set_header X-Real-IP $remote_addr;\n        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        proxy_set_header X-Forwarded-Host $http_host;\n",
    );
    let _ = writeln!(t, "        proxy_set_header X-Forwarded-Proto {proto};");
    // An empty value removes a client-sent header.
    let _ = writeln!(
        t,
        "        proxy_set_header X-Forwarded-Prefix \"{}\";",
        prefix.unwrap_or_default()
    );
    let _ = writeln!(
        t,
        "        proxy_buffering off;\n        proxy_request_buffering off;\n        proxy_redirect off;\n        client_max_body_size 0;\n        proxy_connect_timeout {CONNECT_TIMEOUT};\n        proxy_read_timeout {IDLE_TIMEOUT};\n        proxy_send_timeout {IDLE_TIMEOUT};"
    );
    if settings.auth_upstream.is_some() {
        let _ = writeln!(t, "        auth_request {AUTH_LOCATION};");
        t.push_str(
            "        auth_request_set $task_router_user $upstream_http_x_clearml_user;\n        auth_request_set $task_router_company $upstream_http_x_clearml_company;\n        auth_request_set $task_router_cookie $upstream_http_x_task_router_cookie;\n        auth_request_set $task_router_authorization $upstream_http_x_task_router_authorization;\n        auth_request_set $task_router_login $upstream_http_x_task_router_login;\n        auth_request_set $task_router_set_cookie $upstream_http_set_cookie;\n        error_page 401 = @task_router_unauthorized;\n        proxy_set_header X-ClearML-User $task_router_user;\n        proxy_set_header X-ClearML-Company $task_router_company;\n        proxy_set_header Cookie $task_router_cookie;\n        proxy_set_header Authorization $task_router_authorization;\n        add_header Set-Cookie $task_router_set_cookie;\n",
        );
    } else {
        // Identity headers come only from the auth check: never trust a client-sent one.
        t.push_str(
            "        proxy_set_header X-ClearML-User \"\";\n        proxy_set_header X-ClearML-Company \"\";\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointId;
    use crate::routes::RouteOwner;
    use std::net::SocketAddrV4;

    fn settings(auth: bool) -> HttpSettings {
        HttpSettings {
            listen_port: 8080,
            domain: Some("apps.example.com".into()),
            forwarded_proto: Some("https"),
            auth_upstream: auth.then(|| "127.0.0.1:9180".parse().unwrap()),
        }
    }

    fn route(key: &str, mode: HttpMode) -> HttpRoute {
        HttpRoute {
            key: key.into(),
            upstream: SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 8888),
            mode,
            owner: RouteOwner::new(EndpointId::new(key, String::new()), "name"),
        }
    }

    fn set(routes: &[HttpRoute]) -> BTreeMap<String, HttpRoute> {
        routes.iter().map(|r| (r.key.clone(), r.clone())).collect()
    }

    #[test]
    fn path_route_strips_prefix_and_forwards_headers() {
        let r = render(&settings(false), &set(&[route("aabb", HttpMode::Path)]));
        assert!(r.failed.is_empty());
        let t = &r.text;
        assert!(t.contains("upstream task_router_u_aabb {\n    server 10.1.2.3:8888;"));
        assert!(
            t.contains("location /service/aabb/ {\n        proxy_pass http://task_router_u_aabb/;")
        );
        assert!(t.contains(
            "if ($task_router_raw_key = \"aabb\") {\n            proxy_pass http://task_router_u_aabb$task_router_rest;"
        ));
        assert!(t.contains("proxy_set_header X-Forwarded-Prefix \"/service/aabb\";"));
        assert!(t.contains("proxy_set_header X-Forwarded-Proto https;"));
        assert!(t.contains("proxy_set_header Connection $task_router_connection;"));
        assert!(t.contains("proxy_buffering off;"));
        assert!(t.contains("proxy_set_header X-ClearML-User \"\";"));
        assert!(!t.contains("auth_request"));
    }

    #[test]
    fn subdomain_route_gets_its_own_server() {
        let r = render(
            &settings(false),
            &set(&[route("aabb__api", HttpMode::Subdomain)]),
        );
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert!(r.text.contains("server_name aabb--api.apps.example.com;"));
        assert!(
            r.text
                .contains("proxy_pass http://task_router_u_aabb__api;")
        );
        assert!(!r.text.contains("location /service/aabb__api/"));
    }

    #[test]
    fn subdomain_without_domain_or_with_bad_label_fails_only_that_route() {
        let mut s = settings(false);
        s.domain = None;
        let r = render(
            &s,
            &set(&[
                route("good", HttpMode::Path),
                route("sub", HttpMode::Subdomain),
            ]),
        );
        assert_eq!(r.failed.len(), 1);
        assert!(r.failed[0].1.contains("ROUTER_DOMAIN"));
        assert!(r.accepted.contains_key("good"));

        let r = render(
            &settings(false),
            &set(&[
                route("Dup", HttpMode::Subdomain),
                route("dup", HttpMode::Subdomain),
                route("a__b_c", HttpMode::Subdomain),
            ]),
        );
        assert_eq!(r.accepted.len(), 1, "{:?}", r.failed);
        assert_eq!(r.failed.len(), 2);
    }

    #[test]
    fn auth_wires_auth_request_and_credential_stripping() {
        let r = render(&settings(true), &set(&[route("aabb", HttpMode::Path)]));
        let t = &r.text;
        assert!(t.contains("upstream task_router_auth {\n    server 127.0.0.1:9180;"));
        assert!(t.contains("proxy_pass http://task_router_auth/auth;"));
        assert!(t.contains("auth_request /.task-router/auth;"));
        assert!(t.contains("proxy_set_header Cookie $task_router_cookie;"));
        assert!(t.contains("error_page 401 = @task_router_unauthorized;"));
    }

    #[test]
    fn auth_answers_are_cached_by_credentials_for_as_long_as_the_daemon_says() {
        let r = render(&settings(true), &set(&[route("aabb", HttpMode::Path)]));
        let t = &r.text;
        assert!(t.contains(
            "proxy_cache_path task-router-auth-cache levels=1:2 keys_zone=task_router_auth_answers:4m max_size=64m inactive=10s use_temp_path=off;"
        ));
        let auth = &t[t.find("location = /.task-router/auth {").unwrap()..];
        let auth = &auth[..auth.find("\n    }").unwrap()];
        assert!(auth.contains("proxy_cache task_router_auth_answers;"));
        // The whole credentials, never a part of them (the user, the cookie's name).
        assert!(auth.contains("proxy_cache_key \"$http_cookie\\n$http_authorization\";"));
        // Only the daemon's X-Accel-Expires makes an answer cacheable: no lifetime of nginx's
        // own, and that header is not among the ignored ones.
        assert!(auth.contains("proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;"));
        assert!(!auth.contains("proxy_cache_valid") && !auth.contains("X-Accel-Expires"));
        assert!(auth.contains("open_file_cache max=256 inactive=10s;"));
        assert_eq!(t.matches("proxy_cache_path").count(), 1);

        let off = render(&settings(false), &set(&[route("aabb", HttpMode::Path)]));
        assert!(!off.text.contains("proxy_cache"));
    }

    #[test]
    fn task_controlled_values_never_reach_the_text() {
        let mut evil = route("ok", HttpMode::Path);
        evil.owner.task_name = "x; } server { listen 1; $evil \"'\n".into();
        evil.owner.id.endpoint = "}\n".into();
        evil.owner.id.task_id = "../../etc".into();
        let plain = render(&settings(true), &set(&[route("ok", HttpMode::Path)]));
        let r = render(&settings(true), &set(&[evil]));
        assert_eq!(r.text, plain.text);

        let bad_keys = ["a;b", "a}b", "a\nb", "a$b", "a\"b", "../x", "a b", ""];
        let mut wanted = set(&[route("ok", HttpMode::Path)]);
        for k in bad_keys {
            wanted.insert(k.into(), route(k, HttpMode::Path));
        }
        let mut sneaky = route("ok2", HttpMode::Path);
        sneaky.key = "ok2;}".into();
        wanted.insert("ok2".into(), sneaky);
        let r = render(&settings(true), &wanted);
        assert_eq!(r.failed.len(), bad_keys.len() + 1);
        assert_eq!(r.text, plain.text);
    }

    #[test]
    fn settings_check_domain_and_reach_admin_over_loopback() {
        let http = HttpConfig {
            server_port: 8080,
            mode: HttpMode::Subdomain,
            domain: None,
        };
        let auth = AuthConfig {
            enabled: true,
            cookie_name: "c".into(),
            secure_cookie: true,
            hmac_key: vec![1],
            algorithm: "HS256".into(),
            login_url: None,
        };
        let router = RouterConfig {
            name: "r".into(),
            url: "HTTPS://r.example.com".into(),
            max_endpoints_per_task: crate::config::DEFAULT_MAX_ENDPOINTS_PER_TASK,
        };
        let admin: SocketAddr = "0.0.0.0:9180".parse().unwrap();
        assert!(HttpSettings::from_config(&http, &auth, &router, admin).is_err());
        let http = HttpConfig {
            domain: Some("apps.example.com".into()),
            ..http
        };
        let s = HttpSettings::from_config(&http, &auth, &router, admin).unwrap();
        assert_eq!(s.forwarded_proto, Some("https"));
        assert_eq!(s.auth_upstream, Some("127.0.0.1:9180".parse().unwrap()));
    }
}
