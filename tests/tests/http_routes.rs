//! HTTP routes through a real nginx driven by the daemon's HTTP router: routes follow the wanted
//! set, requests reach the right task with the prefix stripped and the forwarding headers apps
//! need, WebSockets and streamed responses pass unbuffered, subdomain routes are served by host
//! name, and the managed nginx survives its own death and a daemon restart.

use std::io::{BufReader, Read};
use std::time::Duration;

use router_tests::http_client::{self, get, read_chunk, read_head, websocket, ws_roundtrip};
use router_tests::nginx::{DOMAIN, Rig, in_netns, route, wanted};
use router_tests::wait::until;
use router_userspace::nginx::{Installed, Nginx, Slot};
use router_userspace::routes::{HttpMode, HttpRouter};

const WAIT: Duration = Duration::from_secs(15);

/// Waits until `target` is answered by the echo backend `name`.
fn wait_served_by(rig: &Rig, target: &str, name: &str) {
    until(&format!("{target} served by {name}"), WAIT, || {
        let r = get(rig.addr(), target, &[]).ok()?;
        (r.status == 200 && r.echo().ok()?.backend == name).then_some(())
    });
}

fn wait_status(rig: &Rig, target: &str, status: u16) {
    until(&format!("{target} answered {status}"), WAIT, || {
        let r = get(rig.addr(), target, &[]).ok()?;
        (r.status == status).then_some(())
    });
}

#[test]
fn routes_appear_and_disappear_as_the_wanted_set_changes() {
    in_netns("thra", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend A");
        let b = rig.servers.backend("B").expect("backend B");
        let ra = route("taska", a.addr, HttpMode::Path);
        let rb = route("taskb", b.addr, HttpMode::Path);

        let report = rig
            .router
            .apply(&wanted(std::slice::from_ref(&ra)))
            .expect("apply a");
        assert_eq!((report.added, report.removed), (1, 0));
        wait_served_by(&rig, "/service/taska/", "A");
        assert_eq!(get(rig.addr(), "/service/taskb/", &[]).unwrap().status, 404);

        let report = rig
            .router
            .apply(&wanted(&[ra.clone(), rb.clone()]))
            .expect("apply a+b");
        assert_eq!((report.added, report.removed), (1, 0));
        wait_served_by(&rig, "/service/taskb/", "B");

        let report = rig
            .router
            .apply(&wanted(std::slice::from_ref(&rb)))
            .expect("apply b");
        assert_eq!((report.added, report.removed), (0, 1));
        wait_status(&rig, "/service/taska/", 404);
        wait_served_by(&rig, "/service/taskb/", "B");

        // The same set again changes nothing and reloads nothing.
        let reloads = rig.nginx.status().reloads;
        let report = rig
            .router
            .apply(&wanted(std::slice::from_ref(&rb)))
            .expect("same set");
        assert!(report.is_noop(), "{report:?}");
        assert_eq!(rig.nginx.status().reloads, reloads);

        // A task that moves is followed.
        let moved = route("taskb", a.addr, HttpMode::Path);
        let report = rig.router.apply(&wanted(&[moved])).expect("moved");
        assert_eq!(report.changed, 1);
        wait_served_by(&rig, "/service/taskb/", "A");
        assert!(rig.nginx.status().healthy());
    });
}

#[test]
fn requests_reach_the_task_with_prefix_stripped_and_forwarding_headers() {
    in_netns("thrb", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        let b = rig.servers.backend("B").expect("backend");
        rig.router
            .apply(&wanted(&[
                route("taska", a.addr, HttpMode::Path),
                route("taska__api", b.addr, HttpMode::Path),
            ]))
            .expect("apply");
        wait_served_by(&rig, "/service/taska/", "A");

        // The raw path and query reach the app unchanged (encoded slashes included), and the
        // headers tell it where it is mounted and who asked.
        let r = get(
            rig.addr(),
            "/service/taska/api/contents/dir%2Ffile%20x.ipynb?content=1&x=%2F",
            &[
                ("Host", "router.example.com:8443"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Prefix", "/spoofed"),
                ("X-ClearML-User", "spoofed"),
            ],
        )
        .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        let e = r.echo().expect("echo");
        assert_eq!(e.backend, "A");
        assert_eq!(e.uri, "/api/contents/dir%2Ffile%20x.ipynb?content=1&x=%2F");
        let h = |n: &str| e.headers.get(n).map(String::as_str);
        assert_eq!(h("x-forwarded-prefix"), Some("/service/taska"));
        assert_eq!(h("x-forwarded-host"), Some("router.example.com:8443"));
        assert_eq!(h("host"), Some("router.example.com:8443"));
        assert_eq!(h("x-forwarded-proto"), Some("https"));
        assert_eq!(h("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
        assert_eq!(h("x-real-ip"), Some("127.0.0.1"));
        assert_eq!(
            h("x-clearml-user"),
            None,
            "client-sent identity must not pass"
        );

        // The root of the route, and a named endpoint beside the default one.
        assert_eq!(
            get(rig.addr(), "/service/taska/", &[])
                .unwrap()
                .echo()
                .unwrap()
                .uri,
            "/"
        );
        let e = get(rig.addr(), "/service/taska__api/v1/predict?q=1", &[])
            .unwrap()
            .echo()
            .unwrap();
        assert_eq!(
            (e.backend.as_str(), e.uri.as_str()),
            ("B", "/v1/predict?q=1")
        );

        // Without the trailing slash: a relative redirect that keeps the query.
        let r = get(rig.addr(), "/service/taska?x=1", &[]).unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.header("location"), Some("/service/taska/?x=1"));

        // A path is routed by its normalised form and the app gets that form: a raw prefix
        // naming another route never picks the upstream, nor the path sent to it.
        for (sneaky, backend, uri) in [
            ("/service/taska__api/../taska/x", "A", "/x"),
            ("/service/%74aska/x", "A", "/x"),
            ("/service/taska/../taska__api/", "B", "/"),
            ("/service/taska__api/../taska/a%2Fb", "A", "/a/b"),
        ] {
            let e = get(rig.addr(), sneaky, &[]).unwrap().echo().expect(sneaky);
            assert_eq!(
                (e.backend.as_str(), e.uri.as_str()),
                (backend, uri),
                "{sneaky}"
            );
        }
        // Other paths are not proxied anywhere.
        for other in ["/", "/service/", "/service/nope/", "//service/taska/"] {
            assert_eq!(get(rig.addr(), other, &[]).unwrap().status, 404, "{other}");
        }
    });
}

#[test]
fn websocket_echo_works_through_nginx() {
    in_netns("thrc", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        wait_served_by(&rig, "/service/taska/", "A");
        let mut ws = websocket(rig.addr(), "/service/taska/ws", &[]).expect("handshake");
        for i in 0..20 {
            let msg = format!("message {i} {}", "x".repeat(i * 500));
            assert_eq!(ws_roundtrip(&mut ws, &msg).expect("echo"), msg);
        }
        ws.close(None).ok();
    });
}

#[test]
fn streamed_responses_are_not_buffered() {
    in_netns("thrd", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        wait_served_by(&rig, "/service/taska/", "A");
        let conn =
            http_client::send(rig.addr(), "GET", "/service/taska/stream", &[]).expect("send");
        let mut reader = BufReader::new(conn);
        let (status, headers) = read_head(&mut reader).expect("head");
        assert_eq!(status, 200);
        assert!(
            headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked"),
            "{headers:?}"
        );
        // The first half arrives while the app still holds the second: nginx passes it on
        // at once instead of waiting for the whole response.
        let first = read_chunk(&mut reader)
            .expect("first chunk")
            .expect("not the end");
        assert_eq!(first, b"first\n");
        a.release.notify_one();
        let mut rest = Vec::new();
        while let Some(chunk) = read_chunk(&mut reader).expect("chunk") {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(rest, b"second\n");
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).ok();
    });
}

#[test]
fn subdomain_routes_are_served_by_host_name() {
    in_netns("thre", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        let b = rig.servers.backend("B").expect("backend");
        let report = rig
            .router
            .apply(&wanted(&[
                route("taska", a.addr, HttpMode::Path),
                route("taskb__ui", b.addr, HttpMode::Subdomain),
                route("taskc", b.addr, HttpMode::Subdomain),
            ]))
            .expect("apply");
        assert!(report.failed.is_empty(), "{report:?}");
        wait_served_by(&rig, "/service/taska/", "A");
        let host = format!("taskb--ui.{DOMAIN}");
        let r = get(rig.addr(), "/app/_stcore/health?x=1", &[("Host", &host)]).unwrap();
        let e = r.echo().expect("echo");
        assert_eq!(
            (e.backend.as_str(), e.uri.as_str()),
            ("B", "/app/_stcore/health?x=1")
        );
        assert_eq!(e.headers.get("x-forwarded-prefix"), None);
        assert_eq!(e.headers.get("host"), Some(&host));
        // Host names are case-insensitive; the default endpoint has no `--name`.
        let upper = host.to_ascii_uppercase();
        assert_eq!(
            get(rig.addr(), "/", &[("Host", &upper)]).unwrap().status,
            200
        );
        let c = format!("taskc.{DOMAIN}");
        assert_eq!(
            get(rig.addr(), "/", &[("Host", &c)])
                .unwrap()
                .echo()
                .unwrap()
                .backend,
            "B"
        );
        // Subdomain routes are not reachable by path, unknown hosts reach nothing.
        assert_eq!(
            get(rig.addr(), "/service/taskb__ui/", &[]).unwrap().status,
            404
        );
        let other = format!("nope.{DOMAIN}");
        assert_eq!(
            get(rig.addr(), "/", &[("Host", &other)]).unwrap().status,
            404
        );
        // WebSockets work on a subdomain route too.
        let mut ws = websocket(rig.addr(), "/ws", &[("Host", &host)]).expect("handshake");
        assert_eq!(ws_roundtrip(&mut ws, "hi").unwrap(), "hi");
    });
}

#[test]
fn managed_nginx_is_started_again_when_it_dies() {
    in_netns("thrf", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        wait_served_by(&rig, "/service/taska/", "A");
        let pid = rig.dir.pid().expect("nginx runs");
        // Kill the master we started (by its PID), as an OOM kill would.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill nginx");
        until("a new nginx master", WAIT, || {
            rig.dir.pid().filter(|p| *p != pid)
        });
        wait_served_by(&rig, "/service/taska/", "A");
        let status = rig.nginx.status();
        assert!(status.restarts >= 1, "{status:?}");
        assert_eq!(status.running, Some(true));
    });
}

#[test]
fn a_restarted_daemon_adopts_nginx_without_dropping_connections() {
    in_netns("thrg", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        let routes = wanted(&[route("taska", a.addr, HttpMode::Path)]);
        rig.router.apply(&routes).expect("apply");
        wait_served_by(&rig, "/service/taska/", "A");
        let pid = rig.dir.pid().expect("nginx runs");
        let mut ws = websocket(rig.addr(), "/service/taska/ws", &[]).expect("handshake");
        assert_eq!(ws_roundtrip(&mut ws, "before").unwrap(), "before");

        // The daemon goes away (its handles drop, nginx keeps running) and a new one starts
        // on the same directory and applies the same routes.
        let config = rig.dir.config();
        let Rig {
            router,
            nginx,
            servers,
            dir,
        } = rig;
        drop(router);
        drop(nginx);
        let nginx = Nginx::managed(&config).expect("adopt");
        assert_eq!(
            dir.pid(),
            Some(pid),
            "the running nginx is adopted, not replaced"
        );
        let mut router = router_userspace::nginx::NginxHttpRouter::with_settings(
            nginx.clone(),
            router_tests::nginx::settings(None),
        );
        router.apply(&routes).expect("apply again");
        assert_eq!(nginx.status().reloads, 0, "same content: no reload");
        assert_eq!(
            nginx
                .install(
                    Slot::Http,
                    &std::fs::read_to_string(nginx.path(Slot::Http)).unwrap()
                )
                .unwrap(),
            Installed::Unchanged
        );
        assert_eq!(ws_roundtrip(&mut ws, "after").unwrap(), "after");
        let rig = Rig {
            router,
            nginx,
            servers,
            dir,
        };
        wait_served_by(&rig, "/service/taska/", "A");

        // Stopping it for good (not a restart) ends it.
        drop(ws);
        rig.nginx.stop(true, Duration::from_secs(5)).expect("stop");
        assert_eq!(rig.dir.pid(), None);
    });
}

/// `apply` returns only once nginx serves the new configuration: the daemon writes an endpoint
/// back right after it, and the SDK's first request must not be refused. A reload nginx cannot
/// take (its port is held by someone else; `nginx -t` does not bind, so only the reload fails)
/// is an error, not a silent success, and the next apply after the port is free serves.
#[test]
fn apply_returns_when_nginx_serves_and_reports_a_reload_it_could_not_take() {
    in_netns("thrr", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");

        let blocker = std::net::TcpListener::bind(rig.addr()).expect("hold the HTTP port");
        let err = rig
            .router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect_err("nginx cannot bind its port: the reload must fail");
        let text = format!("{err:#}");
        assert!(
            text.contains("did not take the new configuration"),
            "{text}"
        );
        drop(blocker);

        rig.router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply once the port is free");
        // No waiting: served at once.
        let r = get(rig.addr(), "/service/taska/x", &[]).expect("GET right after apply");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.echo().expect("echo").backend, "A");
    });
}
