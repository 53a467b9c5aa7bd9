//! The deploy files run for real, as root, inside network namespaces and private mount
//! namespaces the tests create: the daemon under exactly the capabilities docker-compose.yml
//! grants it (and its healthcheck command), the systemd unit under `systemd-analyze verify` and
//! its bpffs mount step, the base nginx.conf under `nginx -t` with those capabilities, and the
//! webserver's reload watcher reloading a real nginx.

mod deploy_support;

use deploy_support::*;
use router_tests::http_client;
use router_tests::netns::Netns;
use router_tests::topology::ClientRouter;
use router_tests::{daemon::Daemon, daemon_binary, require_root, wait};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory on the host's bpffs for one test's pins, removed with its contents on drop.
/// The pins of a daemon under test: a bpffs of the test's own (see `router_tests::pins`).
type BpffsDir = router_tests::pins::PinRoot;

/// `task-router run` in `ns` on `dev`, as root with only `caps`, the eBPF datapath forced (no
/// silent fallback to nginx), its pins and state in test-owned places.
fn daemon_with_caps(
    ns: &Netns,
    dev: &str,
    caps: &[String],
    bpffs: &BpffsDir,
    state: &Path,
) -> Command {
    let mut cmd = ns.command("setpriv");
    cmd.args(setpriv_args(caps)).arg(daemon_binary()).arg("run");
    for var in router_userspace::config::ENV_VARS {
        cmd.env_remove(var.name);
    }
    cmd.env("ROUTER_INTERFACES", dev)
        .env("ROUTER_DATAPATH", "tc")
        .env("ROUTER_BPFFS", bpffs.path())
        .env("ROUTER_STATE_DIR", state);
    cmd
}

#[test]
fn daemon_starts_and_is_healthy_with_only_the_compose_capabilities() {
    require_root();
    let compose = compose();
    let caps = compose_router_caps(&compose);
    let net = ClientRouter::new(&[211]).expect("client and router namespaces");
    let (router, r) = (&net.router, net.router_end(0));
    let bpffs = BpffsDir::new("trdep");
    let state = tempfile::tempdir().expect("state dir");
    let mut daemon = Daemon::spawn(daemon_with_caps(
        router,
        &r.dev,
        &caps,
        &bpffs,
        state.path(),
    ))
    .expect("start the daemon under setpriv");
    daemon.wait_for_log("ready", Duration::from_secs(30));
    let attached = router_tests::attached::program_names(router, &r.dev).expect("query");
    assert!(
        attached.iter().any(|p| p == "task_router_tc"),
        "attached: {attached:?}\n{}",
        daemon.log()
    );

    // The compose healthcheck itself (`$$` is compose's escape for `$`), run where the
    // container would run it: in the router's network namespace.
    let test = compose["services"]["router"]["healthcheck"]["test"]
        .as_array()
        .expect("healthcheck test");
    assert_eq!(test[0], "CMD-SHELL");
    let check = test[1].as_str().expect("shell command").replace("$$", "$");
    wait::until(
        "the compose healthcheck to pass",
        Duration::from_secs(20),
        || {
            let out = router
                .command("sh")
                .args(["-c", &check])
                .env_remove("ROUTER_ADMIN_ADDR")
                .output()
                .expect("run the healthcheck");
            out.status.success().then_some(())
        },
    );

    daemon.terminate();
}

#[test]
fn without_cap_bpf_the_daemon_refuses_to_start() {
    // The capability restriction above is real: one fewer and eBPF cannot load.
    require_root();
    let caps: Vec<String> = compose_router_caps(&compose())
        .into_iter()
        .filter(|c| c != "CAP_BPF")
        .collect();
    let router = Netns::new("tdhn").expect("router ns");
    router
        .ip(&[
            "link", "add", "name", "tdhv0", "type", "veth", "peer", "name", "tdhv1",
        ])
        .expect("veth");
    router.ip(&["link", "set", "tdhv0", "up"]).expect("up");
    let bpffs = BpffsDir::new("trdep");
    let state = tempfile::tempdir().expect("state dir");
    let out = daemon_with_caps(&router, "tdhv0", &caps, &bpffs, state.path())
        .output()
        .expect("run the daemon");
    assert!(
        !out.status.success(),
        "started without CAP_BPF:\n{}",
        show(&out)
    );
    assert!(
        show(&out).contains("Operation not permitted"),
        "{}",
        show(&out)
    );
}

/// The unit file with ExecStart pointing at the binary this build made.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let unit = read_deploy("task-router.service");
    let installed = "ExecStart=/usr/local/bin/task-router ";
    assert_eq!(
        unit.matches(installed).count(),
        1,
        "one ExecStart at the install path"
    );
    let built = format!("ExecStart={} ", daemon_binary().display());
    let path = dir.join("task-router.service");
    std::fs::write(&path, unit.replace(installed, &built)).expect("write unit");
    path
}

fn systemd_verify(unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze (Debian package systemd)")
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_this_build(dir.path());
    let out = systemd_verify(&unit);
    // verify exits 0 on mere warnings (an unknown key is "ignored"): any output is a failure.
    assert!(
        out.status.success() && show(&out).trim().is_empty(),
        "systemd-analyze verify:\n{}",
        show(&out)
    );

    // The checks are live: a misspelt key and a missing binary are both reported.
    let text = read(&unit);
    std::fs::write(&unit, text.replace("RestartSec=", "RestartSecs=")).expect("write");
    let out = systemd_verify(&unit);
    assert!(show(&out).contains("Unknown key"), "{}", show(&out));
    std::fs::write(
        &unit,
        text.replace(
            &daemon_binary().display().to_string(),
            "/nonexistent/task-router",
        ),
    )
    .expect("write");
    let out = systemd_verify(&unit);
    assert!(!out.status.success(), "{}\n{}", show(&out), read(&unit));
}

#[test]
fn systemd_unit_runs_the_daemon_with_its_defaults() {
    let unit = read_deploy("task-router.service");
    let exec = unit_values(&unit, "Service", "ExecStart");
    assert_eq!(exec, ["/usr/local/bin/task-router run"]);
    let out = Command::new(daemon_binary())
        .args(["run", "--help"])
        .output()
        .expect("task-router run --help");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        unit_values(&unit, "Service", "EnvironmentFile"),
        ["/etc/task-router/runtime.env"]
    );
    // StateDirectory= creates the daemon's default state dir; the pins' default lies on the
    // bpffs ExecStartPre mounts.
    let default = |name: &str| {
        router_userspace::config::env_var(name)
            .expect("a daemon variable")
            .default
    };
    let state = unit_values(&unit, "Service", "StateDirectory");
    assert_eq!(
        Path::new("/var/lib").join(&state[0]),
        Path::new(default("ROUTER_STATE_DIR"))
    );
    assert!(default("ROUTER_BPFFS").starts_with("/sys/fs/bpf/"));
    // SIGTERM is the daemon's hitless stop; systemd must not escalate to the whole group first.
    assert_eq!(unit_values(&unit, "Service", "KillSignal"), ["SIGTERM"]);
    assert_eq!(unit_values(&unit, "Service", "Restart"), ["always"]);
    // The unit grants at least what the container gets.
    let unit_caps = unit_caps(&unit);
    for cap in compose_router_caps(&compose()) {
        assert!(unit_caps.contains(&cap), "{cap} missing from the unit");
    }
}

/// The script of `ExecStartPre=+/bin/sh -c '...'`.
fn exec_start_pre_script() -> String {
    let unit = read_deploy("task-router.service");
    let pre = unit_values(&unit, "Service", "ExecStartPre");
    assert_eq!(pre.len(), 1, "one ExecStartPre: {pre:?}");
    pre[0]
        .strip_prefix("+/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("ExecStartPre is not +/bin/sh -c '...': {}", pre[0]))
        .to_string()
}

#[test]
fn exec_start_pre_mounts_bpffs_only_when_it_is_missing() {
    require_root();
    let script = exec_start_pre_script();
    // In a private mount namespace (the host's mounts are untouched): take bpffs away, run the
    // step twice, and count bpffs mounts at /sys/fs/bpf.
    let probe = format!(
        "while findmnt -rn -t bpf /sys/fs/bpf >/dev/null; do umount /sys/fs/bpf; done\n\
         echo before=$(findmnt -rn -t bpf /sys/fs/bpf | wc -l)\n\
         {script}\n\
         echo first=$(findmnt -rn -t bpf /sys/fs/bpf | wc -l)\n\
         {script}\n\
         echo second=$(findmnt -rn -t bpf /sys/fs/bpf | wc -l)\n"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", &probe])
        .output()
        .expect("run unshare");
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["before=0", "first=1", "second=1"],
        "{}",
        show(&out)
    );
}

/// `nginx -t` with Debian's stock configuration as root with only `caps`, in `ns`, over a
/// fresh /var/lib/nginx (a tmpfs in a private mount namespace), as on a host nginx has just
/// been installed on.
fn host_nginx_test_with_caps(ns: &Netns, caps: &[String]) -> Output {
    let setpriv = setpriv_args(caps).join(" ");
    ns.command("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            &format!("mount -t tmpfs tmpfs /var/lib/nginx; exec setpriv {setpriv} nginx -t -q"),
        ])
        .output()
        .expect("run nginx -t")
}

#[test]
fn systemd_unit_capabilities_let_the_daemon_drive_the_host_nginx() {
    require_root();
    let unit_caps = unit_caps(&read_deploy("task-router.service"));
    let ns = Netns::new("tdhs").expect("ns");
    let out = host_nginx_test_with_caps(&ns, &unit_caps);
    assert!(
        out.status.success(),
        "nginx -t under the unit's capabilities:\n{}",
        show(&out)
    );
    // Without CAP_DAC_OVERRIDE root cannot open Debian's www-data-owned logs: the list is not
    // longer than it has to be for that.
    let fewer: Vec<String> = unit_caps
        .into_iter()
        .filter(|c| c != "CAP_DAC_OVERRIDE")
        .collect();
    let out = host_nginx_test_with_caps(&ns, &fewer);
    assert!(!out.status.success(), "{}", show(&out));
}

/// A scratch copy of the /etc/nginx the containers see: the base nginx.conf (with pid and error
/// log moved into the scratch dir), Debian's mime.types and module loaders, and `fragments`
/// written under conf.d/ as the daemon would. Temp paths and the access log live in the
/// scratch dir too, owned by the worker user like the image's (created at build time).
struct NginxTree {
    dir: tempfile::TempDir,
}

impl NginxTree {
    fn new(fragments: &[(&str, &str)]) -> NginxTree {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let base = read_deploy("nginx.conf");
        let conf = format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\n{base}",
            root.display()
        );
        std::fs::write(root.join("nginx.conf"), conf).expect("nginx.conf");
        for link in ["mime.types", "modules-enabled"] {
            std::os::unix::fs::symlink(Path::new("/etc/nginx").join(link), root.join(link))
                .expect("symlink");
        }
        for sub in ["conf.d/stream.d", "local.d"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("getpwnam")
            .expect("user nobody");
        let mut paths = String::new();
        for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let p = root.join(format!("{kind}_temp"));
            std::fs::create_dir(&p).expect("temp path");
            nix::unistd::chown(&p, Some(nobody.uid), Some(nobody.gid)).expect("chown");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .expect("chmod");
            paths.push_str(&format!("{kind}_temp_path {};\n", p.display()));
        }
        paths.push_str(&format!("access_log {}/access.log;\n", root.display()));
        std::fs::write(root.join("conf.d/00-test-paths.conf"), paths).expect("paths");
        let tree = NginxTree { dir };
        for (name, text) in fragments {
            tree.write(name, text);
        }
        tree
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.root().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    fn conf(&self) -> String {
        self.root().join("nginx.conf").display().to_string()
    }

    fn test_with_caps(&self, ns: &Netns, caps: &[String]) -> Output {
        let conf = self.conf();
        let error_log = format!("{}/error.log", self.root().display());
        let mut cmd = ns.command("setpriv");
        cmd.args(setpriv_args(caps))
            .args(["nginx", "-t", "-q", "-e", &error_log, "-c", &conf]);
        cmd.output().expect("run nginx -t")
    }
}

/// Fragments shaped like the daemon's: an HTTP route on a privileged port, a TCP route of the
/// stream fallback.
const HTTP_ROUTE: &str = "server {\n  listen 127.0.0.1:80;\n  location /service/t1/ {\n    \
                          proxy_pass http://10.0.0.5:8888/;\n  }\n}\n";
const STREAM_ROUTE: &str = "server {\n  listen 127.0.0.1:30001;\n  proxy_pass 10.0.0.5:22;\n}\n";

#[test]
fn base_nginx_conf_passes_nginx_t_with_the_router_capabilities() {
    require_root();
    let caps = compose_router_caps(&compose());
    let ns = Netns::new("tdng").expect("ns");
    let tree = NginxTree::new(&[
        ("conf.d/route.conf", HTTP_ROUTE),
        ("conf.d/stream.d/route.conf", STREAM_ROUTE),
    ]);
    // The TLS example, with a certificate made for the test.
    let (crt, key) = (
        tree.root().join("router.crt"),
        tree.root().join("router.key"),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=router.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{}", show(&out));
    let tls = read_deploy("local.d/tls.conf.example")
        .replace("/etc/nginx/certs/router.crt", &crt.display().to_string())
        .replace("/etc/nginx/certs/router.key", &key.display().to_string());
    tree.write("local.d/tls.conf", &tls);

    let out = tree.test_with_caps(&ns, &caps);
    assert!(
        out.status.success(),
        "nginx -t as the router runs it:\n{}",
        show(&out)
    );
    // The stream fragment really is in the stream context: a stream directive in the http
    // include would fail.
    tree.write("conf.d/misplaced.conf", STREAM_ROUTE);
    let out = tree.test_with_caps(&ns, &caps);
    assert!(
        !out.status.success(),
        "stream server accepted in http context"
    );
    std::fs::remove_file(tree.root().join("conf.d/misplaced.conf")).expect("rm");
    // NET_BIND_SERVICE is why it is in the compose file: `nginx -t` test-binds port 80.
    let fewer: Vec<String> = caps
        .into_iter()
        .filter(|c| c != "CAP_NET_BIND_SERVICE")
        .collect();
    let out = tree.test_with_caps(&ns, &fewer);
    assert!(
        !out.status.success() && show(&out).contains("Permission denied"),
        "{}",
        show(&out)
    );
}

/// The webserver container's command, started in `ns`: nginx plus the reload watcher, in a
/// process group of its own so the watcher goes too.
struct Webserver {
    child: Child,
}

impl Drop for Webserver {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The body of `GET path` from nginx on `port` inside `ns`, once it answers.
fn http_get(ns: &Netns, port: u16, path: &str) -> Option<String> {
    http_client::get_in(
        ns,
        (Ipv4Addr::LOCALHOST, port).into(),
        path,
        &[("Host", "t")],
    )
    .ok()
    .map(|r| r.text())
}

#[test]
fn webserver_reloads_when_the_router_writes_the_stamp() {
    require_root();
    let ns = Netns::new("tdwr").expect("ns");
    let tree = NginxTree::new(&[(
        "conf.d/a.conf",
        "server { listen 127.0.0.1:8080; location = /a { return 200 \"route a\\n\"; } }\n",
    )]);
    let stamp = tree.root().join("conf.d/.reload");
    let mut cmd = ns.command("sh");
    cmd.arg(deploy_dir().join("nginx-reload.sh"))
        .args(["-c", &tree.conf()])
        .env("TASK_ROUTER_RELOAD_STAMP", &stamp)
        .env("TASK_ROUTER_RELOAD_INTERVAL", "0.1")
        .process_group(0);
    let _web = Webserver {
        child: cmd.spawn().expect("start the webserver command"),
    };
    wait::until("nginx serving route a", Duration::from_secs(20), || {
        http_get(&ns, 8080, "/a").filter(|r| r.contains("route a"))
    });

    // The router installs a new fragment and asks for a reload the way compose configures it.
    tree.write(
        "conf.d/b.conf",
        "server { listen 127.0.0.1:8081; location = /b { return 200 \"route b\\n\"; } }\n",
    );
    let reload = router_environment(&compose())["NGINX_RELOAD_CMD"]
        .as_str()
        .expect("NGINX_RELOAD_CMD")
        .replace("/etc/nginx/conf.d/.reload", &stamp.display().to_string());
    let out = Command::new("sh")
        .args(["-c", &reload])
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", show(&out));
    wait::until(
        "nginx serving route b after the reload",
        Duration::from_secs(20),
        || http_get(&ns, 8081, "/b").filter(|r| r.contains("route b")),
    );
    // Route a is still served: a reload, not a restart with a different config.
    assert!(http_get(&ns, 8080, "/a").is_some_and(|r| r.contains("route a")));
}
