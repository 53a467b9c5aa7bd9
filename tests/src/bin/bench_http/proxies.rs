//! The nginx instances the benchmark loads: the app behind every route, the generated
//! configuration, the hand-written one, and the wait for each to answer.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{Context, Result};
use router_tests::http_client::get;
use router_tests::nginx::{ExternalNginx, ManagedDir, settings};
use router_tests::wait;
use router_userspace::nginx::{Nginx, NginxHttpRouter};
use router_userspace::routes::{HttpRoute, HttpRouter};

/// The hand-written configuration an operator would write for the same routes: per route an
/// upstream with keep-alive and a location with the same forwarding headers, WebSocket upgrade
/// and streaming, the prefix stripped by nginx.
pub fn hand_written(routes: &BTreeMap<String, HttpRoute>) -> String {
    let mut t = String::from(
        "map $http_upgrade $connection_upgrade {\n    default upgrade;\n    \"\" \"\";\n}\n",
    );
    for (key, r) in routes {
        t.push_str(&format!(
            "upstream app_{key} {{\n    server {};\n    keepalive 16;\n}}\n",
            r.upstream
        ));
    }
    t.push_str("server {\n    listen 8081;\n");
    for key in routes.keys() {
        t.push_str(&format!(
            r#"    location /service/{key}/ {{
        proxy_pass http://app_{key}/;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-Prefix /service/{key};
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 86400s;
        proxy_send_timeout 86400s;
    }}
"#
        ));
    }
    t.push_str("}\n");
    t
}

/// The app behind every route: nginx answering `ok`, so the proxies, not the app, set the pace.
pub fn app() -> Result<(ExternalNginx, SocketAddrV4)> {
    let addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9000);
    let nginx = ExternalNginx::start(|conf_d| {
        std::fs::write(
            conf_d.join("app.conf"),
            format!(
                "server {{\n    listen {addr};\n    keepalive_requests 1000000;\n    location / {{\n        return 200 \"ok\";\n    }}\n}}\n"
            ),
        )?;
        Ok(())
    })?;
    Ok((nginx, addr))
}

/// Waits until `GET path` on `addr` answers `ok`.
pub fn wait_ok(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<()> {
    wait::within(Duration::from_secs(15), || {
        (get(addr, path, headers).map(|r| r.text()).ok().as_deref() == Some("ok")).then_some(())
    })
    .with_context(|| format!("{addr}{path} does not answer"))
}

/// The generated configuration on a managed nginx listening on `port`, with the auth check
/// when `auth` is set.
pub fn generated(
    port: u16,
    auth: Option<std::net::SocketAddr>,
    wanted: &BTreeMap<String, HttpRoute>,
) -> Result<(ManagedDir, Nginx, NginxHttpRouter)> {
    let dir = ManagedDir::new()?;
    let nginx = Nginx::managed(&dir.config())?;
    let mut s = settings(auth);
    s.listen_port = port;
    let mut router = NginxHttpRouter::with_settings(nginx.clone(), s);
    router.apply(wanted)?;
    Ok((dir, nginx, router))
}
