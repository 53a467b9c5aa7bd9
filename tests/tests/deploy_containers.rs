//! deploy/docker-compose.yml run for real, with podman-compose, against the ClearML test server:
//! the router image built by `cargo xtask image` (the Dockerfile, on local Debian base images
//! since registries cannot be pulled here), the router container loading and pinning the
//! datapath on test veths from the host's namespace (never a real NIC) into a client and a task
//! namespace, the webserver container serving an HTTP route with cookie authentication, a TCP
//! route forwarding, a live connection kept through `down` and `up` (the pins outlive the
//! container), and both healthchecks passing. The override file changes only what this machine
//! needs (see `override_file`).
//!
//! ```text
//!  client ns 10.214.1.2 ── 10.214.1.1 host (router + webserver containers) 10.214.2.1 ── 10.214.2.2 task ns
//! ```

mod deploy_podman;
mod deploy_support;

use deploy_podman::*;
use deploy_support::{compose, compose_router_caps, read_deploy};
use router_tests::clearml_server::{ClearmlServer, TaskSpec};
use router_tests::e2e::ServerThread;
use router_tests::http_client::get_url_in;
use router_tests::netns::{Netns, unique};
use router_tests::{require_root, wait, workspace_root};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HOST_TO_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 214, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 214, 1, 2);
const HOST_TO_TASK: Ipv4Addr = Ipv4Addr::new(10, 214, 2, 1);
const TASK: Ipv4Addr = Ipv4Addr::new(10, 214, 2, 2);
const TASK_TCP_PORT: u16 = 7000;
const TASK_WEB_PORT: u16 = 8000;
const TCP_PORT_START: u16 = 31200;
const TCP_PORT_END: u16 = 31209;

/// A podman-compose project of deploy/docker-compose.yml with the test's env file and override;
/// `down -v` on drop, then whatever is still labelled with the project is removed.
struct ComposeProject {
    name: String,
    dir: tempfile::TempDir,
}

impl ComposeProject {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(venv_tool("podman-compose"));
        // Only what the test gives: the shell's variables would pass through compose.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CONTAINERS_CONF", containers_conf())
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(workspace_root().join("deploy/docker-compose.yml"))
            .arg("-f")
            .arg(self.dir.path().join("override.yml"))
            .arg("--env-file")
            .arg(self.dir.path().join("runtime.env"))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) {
        let out = self.command(args).output().expect("run podman-compose");
        assert!(
            out.status.success(),
            "podman-compose {} failed:\n{}\n{}",
            args.join(" "),
            show(&out),
            self.logs()
        );
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn logs(&self) -> String {
        ["router", "webserver"]
            .iter()
            .map(|s| {
                let out = podman()
                    .args(["logs", "--tail", "60", &self.container(s)])
                    .output();
                format!("--- {s}:\n{}", out.map(|o| show(&o)).unwrap_or_default())
            })
            .collect()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.command(&["down", "-v", "-t", "10"]).output();
        let label = format!("label=io.podman.compose.project={}", self.name);
        if let Ok(out) = podman().args(["ps", "-aq", "--filter", &label]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = podman().args(["rm", "-f", id]).output();
            }
        }
        let _ = podman()
            .args(["pod", "rm", "-f", &format!("pod_{}", self.name)])
            .output();
        for volume in ["state", "nginx-conf"] {
            let _ = podman()
                .args(["volume", "rm", "-f", &format!("{}_{volume}", self.name)])
                .output();
        }
    }
}

/// What the test changes in deploy/docker-compose.yml, each for this machine only.
fn override_file(images: &Images) -> String {
    format!(
        "services:\n\
         \x20 router:\n\
         \x20   # Built by `cargo xtask image` (above), so compose runs `up --no-build`.\n\
         \x20   image: {router}\n\
         \x20   # This sandbox cannot raise rlimits (no CAP_SYS_RESOURCE anywhere); kernels since\n\
         \x20   # 5.11 charge BPF memory to the cgroup, not to memlock.\n\
         \x20   ulimits: !reset {{}}\n\
         \x20   healthcheck:\n\
         \x20     # podman 4.3 has no --health-startup-interval.\n\
         \x20     start_interval: !reset null\n\
         \x20 webserver:\n\
         \x20   # nginx:1.28-bookworm cannot be pulled here: the local Debian nginx base instead,\n\
         \x20   # the router image's own runtime base as with the public image.\n\
         \x20   image: {webserver}\n",
        router = images.router,
        webserver = images.webserver,
    )
}

struct Ports {
    admin: u16,
    web: u16,
}

fn runtime_env(server: &ClearmlServer, devs: &[&str], ports: &Ports) -> String {
    use base64::Engine;
    let creds = server.credentials();
    let jwks =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(server.admin().token_secret());
    [
        ("CLEARML_API_HOST", format!("http://{}", server.addr())),
        ("CLEARML_API_ACCESS_KEY", creds.access_key),
        ("CLEARML_API_SECRET_KEY", creds.secret_key),
        ("TCP_ROUTER_ADDRESS", HOST_TO_CLIENT.to_string()),
        ("ROUTER_INTERFACES", devs.join(",")),
        ("ROUTER_NAME", "compose-test".into()),
        (
            "ROUTER_URL",
            format!("http://{HOST_TO_CLIENT}:{}", ports.web),
        ),
        ("ROUTER_POLL_INTERVAL", "500ms".into()),
        ("TCP_PORT_START", TCP_PORT_START.to_string()),
        ("TCP_PORT_END", TCP_PORT_END.to_string()),
        ("ROUTER_ADMIN_ADDR", format!("127.0.0.1:{}", ports.admin)),
        ("ROUTER__WEBSERVER__SERVER_PORT", ports.web.to_string()),
        ("AUTH_BASE64_JWKS_KEY", jwks),
        ("AUTH_SECURE_ENABLED", "false".into()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={v}\n"))
    .collect()
}

/// GET `path` on the admin endpoint (the host's loopback); the status code.
fn admin_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = String::new();
    stream.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

fn wait_ready(project: &ComposeProject, admin: u16) {
    let ready = wait::within(Duration::from_secs(120), || {
        (admin_status(admin, "/readyz") == Some(200)).then_some(())
    });
    assert!(
        ready.is_some(),
        "the router container was not ready in 120 s:\n{}",
        project.logs()
    );
}

/// Waits for `check` (60 s), failing with the containers' logs.
fn until<T>(project: &ComposeProject, what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait::within(Duration::from_secs(60), check)
        .unwrap_or_else(|| panic!("timed out waiting for {what}:\n{}", project.logs()))
}

/// A runtime value the router writes back, once it is there.
fn written_back(project: &ComposeProject, server: &ClearmlServer, task: &str, key: &str) -> Value {
    until(
        project,
        &format!("the router to write {key} on {task}"),
        || server.admin().runtime(task).get(key).cloned(),
    )
}

fn echo(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).expect("send");
    let mut got = vec![0u8; text.len()];
    stream.read_exact(&mut got).expect("echo back");
    assert_eq!(String::from_utf8_lossy(&got), text);
}

#[test]
fn compose_runs_the_router_and_the_webserver_for_real() {
    require_root();
    let pins = HostPins::claim();
    let started = Instant::now();
    let images = Images::build("tdc");
    eprintln!("images built in {:?}", started.elapsed());
    check_image(&images);

    let client = Netns::new("tdcc").expect("client ns");
    let task = Netns::new("tdct").expect("task ns");
    let to_client = HostLink::new(&client, HOST_TO_CLIENT, CLIENT);
    let to_task = HostLink::new(&task, HOST_TO_TASK, TASK);
    let _echo = ServerThread::echo(&task, SocketAddr::from((TASK, TASK_TCP_PORT))).expect("echo");
    let _web =
        ServerThread::web(&task, SocketAddr::from((TASK, TASK_WEB_PORT)), "web").expect("web");

    let server = ClearmlServer::start().expect("ClearML test server");
    let admin = server.admin();
    let running = |name: &str, runtime: Value| {
        admin.create_task(
            TaskSpec::new(name)
                .status("in_progress")
                .system_tags(&["external_service"])
                .runtime(runtime),
        )
    };
    let tcp_task = running(
        "tcp",
        json!({"_SERVICE": "EXTERNAL_TCP", "external_address": TASK.to_string(),
               "external_tcp_port": TASK_TCP_PORT, "upstream_task_port": TASK_TCP_PORT}),
    );
    let web_task = running(
        "web",
        json!({"_SERVICE": "EXTERNAL", "_ADDRESS": TASK.to_string(), "_PORT": TASK_WEB_PORT}),
    );

    let ports = Ports {
        admin: free_port(),
        web: free_port(),
    };
    let project = ComposeProject {
        name: unique("tdcp"),
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let devs = [to_client.host_dev.as_str(), to_task.host_dev.as_str()];
    std::fs::write(
        project.dir.path().join("runtime.env"),
        runtime_env(&server, &devs, &ports),
    )
    .expect("runtime.env");
    std::fs::write(
        project.dir.path().join("override.yml"),
        override_file(&images),
    )
    .expect("override.yml");

    project.run(&["up", "-d", "--no-build"]);
    wait_ready(&project, ports.admin);
    eprintln!("compose up and ready after {:?}", started.elapsed());
    check_containers(&project);
    check_datapath(&pins, &devs);

    // TCP: the route ClearML asked for, forwarded by the kernel.
    let port = written_back(&project, &server, &tcp_task, "external_tcp_port")
        .as_u64()
        .expect("a port number") as u16;
    assert!((TCP_PORT_START..=TCP_PORT_END).contains(&port));
    let endpoint = SocketAddr::V4(SocketAddrV4::new(HOST_TO_CLIENT, port));
    let mut live = client
        .connect(endpoint, Duration::from_secs(5))
        .expect("connect through the router");
    echo(&mut live, "before down");

    // HTTP: nginx in the webserver container, the auth check on the router's admin endpoint.
    let url = written_back(&project, &server, &web_task, "endpoint");
    let url = url.as_str().expect("endpoint URL").to_string();
    let cookie = format!(
        "{}={}",
        router_tests::clearml_server::AUTH_COOKIE,
        admin.issue_token(Duration::from_secs(600))
    );
    let routed = until(&project, "nginx to serve the HTTP route", || {
        get_url_in(&client, &url, &[("Cookie", &cookie)])
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(routed.text().contains("app web"), "{}", routed.text());
    let refused = get_url_in(&client, &url, &[]).expect("request without a cookie");
    assert!(
        refused.status != 200 && !refused.text().contains("app web"),
        "served without a cookie: {} {}",
        refused.status,
        refused.text()
    );

    // down: both containers go, the kernel keeps forwarding the live connection.
    project.run(&["down", "-t", "30"]);
    assert_eq!(
        admin_status(ports.admin, "/healthz"),
        None,
        "the router is gone"
    );
    echo(&mut live, "while no container runs");
    // up: a new router container adopts the pins; the connection never noticed.
    project.run(&["up", "-d", "--no-build"]);
    wait_ready(&project, ports.admin);
    echo(&mut live, "after up");
    let mut fresh = client
        .connect(endpoint, Duration::from_secs(5))
        .expect("a new connection after up");
    echo(&mut fresh, "new");
    let logs = podman()
        .args(["logs", &project.container("router")])
        .output()
        .expect("podman logs");
    let adopted = show(&logs);
    assert!(adopted.contains("adopted the pinned datapath"), "{adopted}");
    check_containers(&project);
    eprintln!("whole scenario {:?}", started.elapsed());
}

/// The OCI labels, and the build identity the binary reports.
fn check_image(images: &Images) {
    let labels = images.labels();
    let manifest: toml::Table = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    let package = &manifest["workspace"]["package"];
    let label = |k: &str| {
        labels
            .get(&format!("org.opencontainers.image.{k}"))
            .cloned()
    };
    for (label_key, manifest_key) in [
        ("version", "version"),
        ("licenses", "license"),
        ("source", "repository"),
    ] {
        let want = package.get(manifest_key).and_then(|v| v.as_str());
        assert_eq!(
            label(label_key),
            want.map(|v| json!(v)),
            "label {label_key}"
        );
    }
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .expect("git");
    if head.status.success() {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert_eq!(label("revision"), Some(json!(head)));
    }
    for key in ["title", "created"] {
        assert!(
            label(key).is_some_and(|v| v != ""),
            "label {key}: {labels:?}"
        );
    }
    let version = podman_ok(&["run", "--rm", &images.router, "--version"]);
    assert!(
        version.contains("revision: ") && version.contains("program tag: task_router_tc "),
        "{version}"
    );
}

/// Healthchecks pass (podman 4.3 runs them from systemd timers, which this machine has not:
/// `podman healthcheck run` runs the compose-defined check in the container, as a timer
/// would), and the router runs as uid 0 with exactly the listed capabilities.
fn check_containers(project: &ComposeProject) {
    for service in ["router", "webserver"] {
        let name = project.container(service);
        let out = podman()
            .args(["healthcheck", "run", &name])
            .output()
            .expect("podman");
        assert!(
            out.status.success(),
            "{service} healthcheck:\n{}\n{}",
            show(&out),
            project.logs()
        );
        let health = podman_ok(&["inspect", "--format", "{{.State.Health.Status}}", &name]);
        assert_eq!(health.trim(), "healthy", "{service}");
    }
    assert_daemon_privileges(
        &project.container("router"),
        &compose_router_caps(&compose()),
    );
}

/// The router pinned its datapath on the host's bpffs and attached it to the two test links
/// (and nothing else): the programs the image's binary embeds, by their kernel tags.
fn check_datapath(pins: &HostPins, devs: &[&str]) {
    let layout = pins.layout_dir();
    for dev in devs {
        assert!(
            layout.join(format!("link-tc-{dev}")).exists(),
            "no pinned link for {dev} in {}",
            layout.display()
        );
    }
    let tags = router_userspace::build_info::program_tags().expect("program tags");
    let tc = tags
        .iter()
        .find(|t| t.program == "task_router_tc")
        .expect("the tc program's tag");
    for dev in devs {
        let attached = tcx_programs(dev);
        assert!(
            attached
                .iter()
                .any(|(name, tag)| name == "task_router_tc"
                    && (tag == &tc.sha256 || tag == &tc.sha1)),
            "{dev}: {attached:?}, this build's tag {tc:?}"
        );
    }
    let pinned: Vec<String> = std::fs::read_dir(&layout)
        .expect("pin dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("link-"))
        .collect();
    assert_eq!(pinned.len(), devs.len(), "links pinned: {pinned:?}");
}

#[test]
fn the_dockerfile_labels_and_tags_follow_the_workspace() {
    // The image's version label default and the compose tag are bumped with the workspace
    // (docs/releasing.md); `cargo xtask image` passes the version anyway.
    let dockerfile = read_deploy("Dockerfile");
    let manifest: toml::Table = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("TOML");
    let package = &manifest["workspace"]["package"];
    let version = package["version"].as_str().expect("version");
    assert!(dockerfile.contains(&format!("\nARG VERSION={version}\n")));
    let repository = package["repository"].as_str().expect("repository");
    assert!(dockerfile.contains(&format!("org.opencontainers.image.source=\"{repository}\"")));
    let license = package["license"].as_str().expect("license");
    assert!(dockerfile.contains(&format!("org.opencontainers.image.licenses=\"{license}\"")));
    assert!(Path::new(&workspace_root().join("deploy/bases/webserver.Containerfile")).exists());
}

#[test]
#[ignore = "the in-image build compiles the whole workspace in release (about 20 minutes on \
            two cores): run it before a release with `cargo xtask test --no-lint -- --test \
            deploy_containers -- --ignored`"]
fn the_image_builds_from_source_inside_the_build_stage() {
    require_root();
    let tag = format!("localhost/{}:test", unique("tdf"));
    let started = Instant::now();
    let out = Command::new(workspace_root().join("target/debug/xtask"))
        .args(["image", "--local-bases", "--tag", &tag])
        .env("CONTAINERS_CONF", containers_conf())
        .output()
        .expect("run xtask");
    let version = podman().args(["run", "--rm", &tag, "--version"]).output();
    for image in image_names(&tag) {
        let _ = podman().args(["image", "rm", "--force", &image]).output();
    }
    assert!(
        out.status.success(),
        "in-image build failed:\n{}",
        show(&out)
    );
    let version = version.expect("podman run");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("program tag: task_router_tc"),
        "{}",
        show(&version)
    );
    eprintln!("in-image build took {:?}", started.elapsed());
}
