//! Nothing breaks on bad input: a configuration nginx rejects never replaces the working one
//! (with an existing nginx sharing its config directory, as in the compose layout), and
//! injection attempts through every task-controlled field change nothing nginx serves.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use router_tests::http_backend::Servers;
use router_tests::http_client::get;
use router_tests::nginx::{
    DOMAIN, ExternalNginx, Rig, http_addr, in_netns, route, settings, wanted,
};
use router_tests::wait::until;
use router_userspace::nginx::{Nginx, NginxHttpRouter, Slot};
use router_userspace::routes::{HttpMode, HttpRoute, HttpRouter};

const WAIT: Duration = Duration::from_secs(15);

fn wait_served_by(target: &str, name: &str) {
    until(&format!("{target} served by {name}"), WAIT, || {
        let r = get(http_addr(), target, &[]).ok()?;
        (r.status == 200 && r.echo().ok()?.backend == name).then_some(())
    });
}

#[test]
fn a_config_nginx_rejects_never_replaces_the_working_one() {
    in_netns("thsa", || {
        let servers = Servers::new().expect("servers");
        let a = servers.backend("A").expect("backend");
        let b = servers.backend("B").expect("backend");
        let ext = ExternalNginx::start(|_| Ok(())).expect("nginx");
        let nginx = Nginx::external(&ext.config()).expect("external nginx");
        let mut router = NginxHttpRouter::with_settings(nginx.clone(), settings(None));
        let ra = route("taska", a.addr, HttpMode::Path);
        let rb = route("taskb", b.addr, HttpMode::Path);
        router
            .apply(&wanted(std::slice::from_ref(&ra)))
            .expect("apply a");
        wait_served_by("/service/taska/", "A");
        let live = std::fs::read_to_string(nginx.path(Slot::Http)).expect("installed file");
        let reloads = nginx.status().reloads;

        // Someone else's file in the shared directory collides with the next configuration.
        let operator = ext.conf_dir().join("zz-operator.conf");
        std::fs::write(
            &operator,
            "upstream task_router_u_taskb { server 127.0.0.1:9; }\n",
        )
        .expect("operator file");
        let err = router
            .apply(&wanted(&[ra.clone(), rb.clone()]))
            .expect_err("nginx must reject the candidate");
        let err = format!("{err:#}");
        assert!(err.contains("duplicate upstream"), "{err}");

        // The old file is in place, nothing was reloaded, the old routes still serve, and the
        // error is there for health and status.
        assert_eq!(
            std::fs::read_to_string(nginx.path(Slot::Http)).unwrap(),
            live
        );
        let status = nginx.status();
        assert_eq!(status.reloads, reloads);
        assert!(!status.healthy());
        assert_eq!(status.rejected.len(), 1, "{status:?}");
        assert!(status.rejected[0].error.contains("duplicate upstream"));
        ext.reload().expect("an unrelated reload");
        wait_served_by("/service/taska/", "A");
        assert_eq!(
            get(http_addr(), "/service/taskb/", &[]).unwrap().status,
            404
        );
        let leftovers: Vec<String> = std::fs::read_dir(ext.conf_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

        // Once the collision is gone the same wanted set goes through.
        std::fs::remove_file(&operator).expect("remove operator file");
        let report = router
            .apply(&wanted(&[ra, rb]))
            .expect("apply after the fix");
        assert_eq!(report.added, 1);
        wait_served_by("/service/taskb/", "B");
        assert!(nginx.status().healthy());
    });
}

/// Route keys a hostile task or a bug upstream might produce.
fn evil_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a;b",
        "a}b",
        "a{b",
        "a\nb",
        "a\rb",
        "a$b",
        "$host",
        "a\"b",
        "a'b",
        "a\\b",
        "a#b",
        "a b",
        "a\0b",
        "../x",
        "..",
        "a/b",
        "",
        "x; } server { listen 8081; location / { proxy_pass http://127.0.0.1:1; } } #",
        "taska/ { return 200; } location /service/x",
        "t\u{202e}x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push("k".repeat(300));
    keys
}

#[test]
fn injection_attempts_through_task_fields_change_nothing() {
    in_netns("thsb", || {
        let mut rig = Rig::managed(None).expect("rig");
        let a = rig.servers.backend("A").expect("backend");
        let benign = [
            route("taska", a.addr, HttpMode::Path),
            route("taskb__ui", a.addr, HttpMode::Subdomain),
        ];
        rig.router.apply(&wanted(&benign)).expect("apply");
        wait_served_by("/service/taska/", "A");
        let before = std::fs::read_to_string(rig.nginx.path(Slot::Http)).expect("file");
        let reloads = rig.nginx.status().reloads;

        let mut hostile = wanted(&benign);
        let mut expected_failures = 0;
        for key in evil_keys() {
            for mode in [HttpMode::Path, HttpMode::Subdomain] {
                let mut r = route("placeholder", a.addr, mode);
                r.key = key.clone();
                hostile.insert(format!("{key}/{mode:?}"), r.clone());
                // Filed under its own key too, as the control plane would.
                hostile.insert(key.clone(), r);
            }
            // Three entries per key: two under decorated map keys, one under the key itself.
            expected_failures += 3;
        }
        // A clean map key with a different key inside.
        let mut sneaky = route("taskz", a.addr, HttpMode::Path);
        sneaky.key = "taskz;}".into();
        hostile.insert("taskz".into(), sneaky);
        expected_failures += 1;
        // Names that are fine for a path but not as a host label.
        for key in ["taskc__under_score", "taskc__dash-", "-taskc"] {
            hostile.insert(key.into(), route(key, a.addr, HttpMode::Subdomain));
            expected_failures += 1;
        }
        // Addresses no task can listen on.
        for (i, up) in [
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 80),
            SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), 80),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("taskd{i}");
            hostile.insert(key.clone(), route(&key, up, HttpMode::Path));
            expected_failures += 1;
        }
        // The served routes with every owner field hostile: the text nginx gets is the same.
        for r in &benign {
            let mut evil: HttpRoute = r.clone();
            evil.owner.id.task_id = "x\"; } server { listen 81; } #".into();
            evil.owner.task_name = "$request_uri ; { } \n\r ' \" \\ ../../etc/passwd".into();
            evil.owner.id.endpoint = "api}; include /etc/shadow; #".into();
            hostile.insert(r.key.clone(), evil);
        }

        let report = rig.router.apply(&hostile).expect("apply hostile set");
        assert_eq!(
            report.failed.len(),
            expected_failures,
            "{:#?}",
            report.failed
        );
        assert_eq!((report.added, report.changed, report.removed), (0, 0, 0));
        let after = std::fs::read_to_string(rig.nginx.path(Slot::Http)).expect("file");
        assert_eq!(after, before, "the generated configuration changed");
        assert_eq!(rig.nginx.status().reloads, reloads, "nginx was reloaded");
        assert!(rig.nginx.status().healthy());

        // Hostile requests reach nothing they do not name, and nginx keeps serving.
        let host = format!("taskb--ui.{DOMAIN}");
        for (target, host_header) in [
            ("/service/a;b/", None),
            ("/service/a%3Bb/", None),
            ("/service/$host/", None),
            ("/service/taska%2F..%2F..%2F/", None),
            ("/", Some("taskb--ui.apps.test;x")),
            ("/", Some("x.apps.test\\")),
            ("/", Some("$host")),
        ] {
            let headers: Vec<(&str, &str)> = host_header.map(|h| ("Host", h)).into_iter().collect();
            let r = get(rig.addr(), target, &headers).expect("request");
            assert!(
                matches!(r.status, 400 | 404),
                "{target} {host_header:?}: {} {}",
                r.status,
                r.text()
            );
        }
        wait_served_by("/service/taska/", "A");
        let r = get(rig.addr(), "/", &[("Host", &host)]).unwrap();
        assert_eq!(r.echo().unwrap().backend, "A");
    });
}

#[test]
fn managed_nginx_starts_over_files_it_no_longer_accepts() {
    in_netns("thsc", || {
        let dir = router_tests::nginx::ManagedDir::new().expect("dir");
        // Left by an earlier daemon, unusable now (a directive this nginx lacks, say).
        std::fs::write(
            dir.path().join(Slot::Http.file_name()),
            "no_such_directive on;\n",
        )
        .expect("stale file");
        let nginx = Nginx::managed(&dir.config()).expect("starts anyway");
        assert_eq!(nginx.status().running, Some(true));
        let servers = Servers::new().expect("servers");
        let a = servers.backend("A").expect("backend");
        let mut router = NginxHttpRouter::with_settings(nginx.clone(), settings(None));
        router
            .apply(&wanted(&[route("taska", a.addr, HttpMode::Path)]))
            .expect("apply");
        wait_served_by("/service/taska/", "A");
    });
}
