//! deploy/kubernetes as a cluster would take it: the example overlay rendered (base and overlay
//! resolved by `tests/deploy/kustomize_render.py`, the subset of kustomize the manifests use),
//! every manifest valid against the Kubernetes 1.37 API schema (kubernetes-validate, offline),
//! the policy scan (checkov) clean with every skipped check justified where it is skipped, the
//! alert rules and the ServiceMonitor consistent with the daemon and the Service, and the
//! DaemonSet's pod template running the daemon for real under `podman kube play`, as a Pod
//! (podman 4.3 plays Pods, not DaemonSets) with the same containers, mounts and capabilities.

mod deploy_podman;
mod deploy_support;

use deploy_podman::*;
use deploy_support::read_deploy;
use router_tests::clearml_server::ClearmlServer;
use router_tests::netns::{Netns, unique};
use router_tests::{require_root, wait, workspace_root};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A copy of deploy/ with the example overlay's credentials.env filled in (as an operator
/// does), rendered; the resources as JSON.
fn render_example(credentials: &str) -> (tempfile::TempDir, Vec<Value>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(workspace_root().join("deploy"))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    let example = dir.path().join("deploy/kubernetes/example");
    std::fs::write(example.join("credentials.env"), credentials).expect("credentials.env");
    let out = Command::new(venv_tool("python"))
        .arg(workspace_root().join("tests/deploy/kustomize_render.py"))
        .arg(&example)
        .output()
        .expect("run the renderer");
    assert!(out.status.success(), "render:\n{}", show(&out));
    let resources: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    (dir, resources)
}

const EXAMPLE_CREDENTIALS: &str =
    "CLEARML_API_ACCESS_KEY=EXAMPLE\nCLEARML_API_SECRET_KEY=example\nAUTH_BASE64_JWKS_KEY=a2V5\n";

fn find<'a>(resources: &'a [Value], kind: &str, name: &str) -> &'a Value {
    resources
        .iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// The resources as a YAML stream (JSON documents are YAML).
fn write_stream(dir: &Path, resources: &[Value]) -> PathBuf {
    let path = dir.join("rendered.yaml");
    let text: String = resources.iter().map(|r| format!("---\n{r}\n")).collect();
    std::fs::write(&path, text).expect("write the manifests");
    path
}

#[test]
fn every_manifest_validates_against_the_kubernetes_api_schema() {
    let (dir, resources) = render_example(EXAMPLE_CREDENTIALS);
    let stream = write_stream(dir.path(), &resources);
    let out = Command::new(venv_tool("kubernetes-validate"))
        .args(["--kubernetes-version", "1.37.0", "--strict"])
        .arg(&stream)
        .output()
        .expect("run kubernetes-validate");
    let report = show(&out);
    assert!(out.status.success(), "{report}");
    // Every built-in kind passed; the two Prometheus operator kinds have no schema there and
    // are checked below.
    for r in &resources {
        let (kind, name) = (
            r["kind"].as_str().unwrap_or("?"),
            r["metadata"]["name"].as_str().unwrap_or("?"),
        );
        let crd = r["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("monitoring.coreos.com/"));
        let passed = format!("passed for resource {}/{name}", kind.to_ascii_lowercase());
        assert!(crd || report.contains(&passed), "{kind} {name}: {report}");
    }
    // The overlay's own resources land in the base's namespace (the Secret the pods mount).
    for r in resources.iter().filter(|r| r["kind"] != "Namespace") {
        assert_eq!(
            r["metadata"]["namespace"], "task-router",
            "{}",
            r["metadata"]["name"]
        );
    }
}

#[test]
fn the_ds_follows_the_layout_docs_kubernetes_md_describes() {
    let (_dir, resources) = render_example(EXAMPLE_CREDENTIALS);
    let ds = find(&resources, "DaemonSet", "task-router");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": 1})
    );
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["nodeSelector"]["task-router/gateway"], "true");
    assert!(
        spec["priorityClassName"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );
    let router = &spec["containers"][0];
    assert_eq!(router["name"], "router");
    // The compose file's capabilities, nothing else.
    let caps: Vec<String> = deploy_support::compose_router_caps(&deploy_support::compose())
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let mut added: Vec<String> = router["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("add")
        .iter()
        .map(|c| c.as_str().expect("name").to_string())
        .collect();
    added.sort();
    let mut want = caps.clone();
    want.sort();
    assert_eq!(added, want);
    assert_eq!(
        router["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    // Probes over loopback on the admin port; ROUTER_NAME is the node's name.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(router[probe]["httpGet"]["host"], "127.0.0.1", "{probe}");
        assert_eq!(router[probe]["httpGet"]["path"], path, "{probe}");
    }
    let env = router["env"].as_array().expect("env");
    let name = env
        .iter()
        .find(|e| e["name"] == "ROUTER_NAME")
        .expect("ROUTER_NAME");
    assert_eq!(name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    // The fixed variables are the compose file's.
    let compose_env = deploy_support::router_environment(&deploy_support::compose());
    for var in [
        "ROUTER_BPFFS",
        "ROUTER_STATE_DIR",
        "NGINX_MANAGED",
        "NGINX_CONF_DIR",
        "NGINX_RELOAD_CMD",
    ] {
        let here = env
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("{var}"));
        assert_eq!(here["value"], compose_env[var], "{var}");
    }
    // bpffs from the host with the propagation pins need; the state directory on the host.
    let volumes = spec["volumes"].as_array().expect("volumes");
    let host_path = |v: &str| {
        volumes
            .iter()
            .find(|x| x["name"] == v)
            .and_then(|x| x["hostPath"]["path"].as_str())
    };
    assert_eq!(host_path("bpffs"), Some("/sys/fs/bpf"));
    assert_eq!(host_path("state"), Some("/var/lib/task-router"));
    let mount = |c: &Value, v: &str| {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == v)
            .cloned()
    };
    assert_eq!(
        mount(router, "bpffs").expect("bpffs")["mountPropagation"],
        "HostToContainer"
    );
    let init = &spec["initContainers"][0];
    assert_eq!(
        mount(init, "bpffs").expect("bpffs")["mountPropagation"],
        "Bidirectional"
    );
    // The TCP port range stays out of Kubernetes' NodePort range (30000-32767).
    let config = find(&resources, "ConfigMap", "task-router-config");
    let port = |k: &str| {
        config["data"][k]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            .expect(k)
    };
    let (start, end) = (port("TCP_PORT_START"), port("TCP_PORT_END"));
    assert!(
        start <= end && (end < 30000 || start > 32767),
        "{start}-{end}"
    );
    // The Grafana dashboard is deploy/grafana-dashboard.json, labelled for Grafana's sidecar.
    let dashboard = find(&resources, "ConfigMap", "task-router-grafana-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["data"]["task-router.json"],
        read_deploy("grafana-dashboard.json")
    );
}

#[test]
fn the_alerts_and_the_service_monitor_fit_the_daemon() {
    let (_dir, resources) = render_example(EXAMPLE_CREDENTIALS);
    // The ServiceMonitor selects the metrics Service, whose port is the pods' metrics port.
    let monitor = find(&resources, "ServiceMonitor", "task-router");
    let service = find(&resources, "Service", "task-router-metrics");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "label {k}");
    }
    let port = monitor["spec"]["endpoints"][0]["port"]
        .as_str()
        .expect("port name");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == port)
    );
    let ds = find(&resources, "DaemonSet", "task-router");
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &ds["spec"]["template"]["metadata"]["labels"][k], v,
            "pod label {k}"
        );
    }
    // The four alerts, each on metrics the daemon exports (or `up` of the metrics job).
    let rules = find(&resources, "PrometheusRule", "task-router");
    let alerts: Vec<&Value> = rules["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    let names: Vec<&str> = alerts.iter().filter_map(|a| a["alert"].as_str()).collect();
    assert_eq!(
        names,
        [
            "TaskRouterDown",
            "TaskRouterClearMLUnreachable",
            "TaskRouterConntrackNearlyFull",
            "TaskRouterNginxReloadFailing"
        ]
    );
    let metrics_source =
        std::fs::read_to_string(workspace_root().join("router-userspace/src/metrics.rs"))
            .expect("metrics.rs");
    for alert in &alerts {
        let expr = alert["expr"].as_str().expect("expr");
        for metric in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("task_router_"))
        {
            assert!(
                metrics_source.contains(&format!("\"{metric}\"")),
                "{metric} in {expr}"
            );
        }
        if expr.starts_with("up{") {
            assert!(expr.contains(&format!(
                "job=\"{}\"",
                service["metadata"]["name"].as_str().expect("name")
            )));
        }
        assert!(
            alert["annotations"]["summary"].is_string() && alert["labels"]["severity"].is_string()
        );
    }
}

/// `# checkov:` justifications: each `checkov.io/skipN` annotation in the DaemonSet's source
/// has a reason after `=` and a comment line somewhere above it in its block.
#[test]
fn the_policy_scan_passes_and_every_skip_is_justified() {
    let (dir, resources) = render_example(EXAMPLE_CREDENTIALS);
    let stream = write_stream(dir.path(), &resources);
    let out = Command::new(venv_tool("checkov"))
        .args([
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "-f",
        ])
        .arg(&stream)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .expect("run checkov");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("checkov JSON ({e}):\n{}", show(&out)));
    let summary = &report["summary"];
    assert_eq!(
        summary["failed"], 0,
        "checkov findings:\n{:#}",
        report["results"]["failed_checks"]
    );
    assert!(summary["passed"].as_u64().unwrap_or(0) > 50, "{summary}");
    let skipped = summary["skipped"].as_u64().expect("skipped");

    let source = read_deploy("kubernetes/base/daemonset.yaml");
    let lines: Vec<&str> = source.lines().collect();
    let mut skips = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix("checkov.io/skip") else {
            continue;
        };
        skips += 1;
        let (_, value) = rest.split_once(": ").expect("annotation value");
        let (check, reason) = value
            .split_once('=')
            .unwrap_or_else(|| panic!("no reason: {line}"));
        assert!(
            check.starts_with("CKV") && reason.trim().len() > 30,
            "a real reason: {line}"
        );
        assert!(
            lines[..i]
                .iter()
                .rev()
                .take_while(|l| !l.trim().starts_with("metadata:"))
                .any(|l| l.trim().starts_with('#')),
            "no comment above {line}"
        );
    }
    assert_eq!(
        skipped, skips,
        "every skip checkov reports is one of the annotated ones"
    );
}

/// The test's copy of the DaemonSet's pod template as a Pod podman 4.3 can play: the same
/// containers, commands, capabilities, security settings, probes and mount targets, with
/// test-owned sources where the template names node-wide ones, and what 4.3 cannot express
/// given as kubelet would resolve it.
fn pod_from_template(
    ds: &Value,
    images: &Images,
    name: &str,
    state: &Path,
    credentials: &Path,
) -> Value {
    let mut spec = ds["spec"]["template"]["spec"].clone();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().expect("containers") {
            let image = c["image"].as_str().expect("image").to_string();
            c["image"] = json!(if image.starts_with("nginx:") {
                &images.webserver
            } else {
                &images.router
            });
            // With hostNetwork a container port is the node's port already (kubelet maps it
            // one to one); podman 4.3 turns it into a port mapping, which host networking
            // refuses.
            if let Some(c) = c.as_object_mut() {
                c.remove("ports");
            }
            // podman 4.3 resolves no fieldRef but metadata ones: the values kubelet would give.
            for e in c["env"].as_array_mut().into_iter().flatten() {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => *e = json!({"name": e["name"], "value": "gateway-1"}),
                    Some("status.hostIP") => *e = json!({"name": e["name"], "value": "192.0.2.10"}),
                    _ => {}
                }
            }
        }
    }
    for v in spec["volumes"].as_array_mut().expect("volumes") {
        match v["name"].as_str() {
            // The node's state directory: a test directory (the mount target is the same).
            Some("state") => v["hostPath"] = json!({"path": state, "type": "Directory"}),
            // podman 4.3 crashes on Secret volumes: the same file from a host directory.
            Some("credentials") => {
                *v = json!({"name": "credentials", "hostPath": {"path": credentials, "type": "Directory"}})
            }
            _ => {}
        }
    }
    // podman 4.3 races removing a finished init container of the default type `once` (the pod
    // then never starts its containers); `always` keeps it and runs it at each pod start, as
    // kubelet runs init containers for each new pod.
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": ds["spec"]["template"]["metadata"]["labels"],
            "annotations": {"io.podman.annotations.init.container.type": "always"},
        },
        "spec": spec,
    })
}

/// The local image podman builds for a pod's infra container (`localhost/podman-pause:<ver>`).
fn pause_images() -> String {
    podman_ok(&[
        "images",
        "-q",
        "--filter",
        "reference=localhost/podman-pause",
    ])
}

fn volumes() -> Vec<String> {
    podman_ok(&["volume", "ls", "-q"])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// podman 4.3 mounts a ConfigMap volume whole, ignoring `subPath`: each file the template
/// mounts from a ConfigMap becomes a host file with the ConfigMap's content, mounted at the same
/// place (read-only, as the template says).
fn files_for_config_map_mounts(spec: &mut Value, maps: &[&Value], dir: &Path) {
    let sources: Vec<(String, String)> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_string(),
                v["configMap"]["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut added = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().expect("containers") {
            for m in c["volumeMounts"].as_array_mut().into_iter().flatten() {
                let Some((volume, map)) = sources.iter().find(|(v, _)| m["name"] == v.as_str())
                else {
                    continue;
                };
                let key = m["subPath"]
                    .as_str()
                    .expect("a ConfigMap mounted by subPath")
                    .to_string();
                let data = maps
                    .iter()
                    .find(|c| c["metadata"]["name"] == map.as_str())
                    .and_then(|c| c["data"][&key].as_str())
                    .unwrap_or_else(|| panic!("{map} has no {key}"));
                let path = dir.join(volume).join(&key);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
                std::fs::write(&path, data).expect("write the file");
                let name = format!("{volume}-{}", added.len());
                added.push(json!({"name": name, "hostPath": {"path": path, "type": "File"}}));
                m["name"] = json!(name);
                m.as_object_mut().expect("mount").remove("subPath");
            }
        }
    }
    let volumes = spec["volumes"].as_array_mut().expect("volumes");
    volumes.retain(|v| v["configMap"].is_null());
    volumes.extend(added);
}

/// A pod played from a manifest file, removed (with its containers) on drop, with the volumes
/// podman made for its ConfigMaps and its infra image when playing it made them.
struct PlayedPod {
    name: String,
    file: PathBuf,
    pause_before: String,
    volumes_before: Vec<String>,
}

impl Drop for PlayedPod {
    fn drop(&mut self) {
        let _ = podman().args(["kube", "down"]).arg(&self.file).output();
        let _ = podman().args(["pod", "rm", "-f", &self.name]).output();
        for volume in volumes() {
            if !self.volumes_before.contains(&volume) {
                let _ = podman().args(["volume", "rm", "-f", &volume]).output();
            }
        }
        if self.pause_before.trim().is_empty() {
            for id in pause_images().split_whitespace() {
                let _ = podman().args(["image", "rm", "-f", id]).output();
            }
        }
    }
}

fn admin_answers(path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, 9180)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_pod_template_runs_the_daemon_under_podman_kube_play() {
    require_root();
    assert!(
        admin_answers("/healthz").is_none(),
        "something already answers on 127.0.0.1:9180"
    );
    let pins = HostPins::claim();
    let images = Images::build("tdk");
    let server = ClearmlServer::start().expect("ClearML test server");
    let creds = server.credentials();
    let jwks = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(server.admin().token_secret())
    };
    let credentials = format!(
        "CLEARML_API_ACCESS_KEY={}\nCLEARML_API_SECRET_KEY={}\nAUTH_BASE64_JWKS_KEY={jwks}\n",
        creds.access_key, creds.secret_key
    );
    let (dir, resources) = render_example(&credentials);
    let ns = Netns::new("tdkn").expect("ns");
    let link = HostLink::new(
        &ns,
        Ipv4Addr::new(10, 215, 1, 1),
        Ipv4Addr::new(10, 215, 1, 2),
    );

    // The site's ConfigMap with the test's ClearML and interface; the admin endpoint on
    // loopback (the probes' address) instead of every address of this machine.
    let mut config = find(&resources, "ConfigMap", "task-router-config").clone();
    config["data"]["CLEARML_API_HOST"] = json!(format!("http://{}", server.addr()));
    config["data"]["ROUTER_INTERFACES"] = json!(link.host_dev);
    config["data"]["ROUTER_ADMIN_ADDR"] = json!("127.0.0.1:9180");
    // The queues the site listens on exist on its server.
    for queue in config["data"]["LISTEN_QUEUE_NAME"]
        .as_str()
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|q| !q.is_empty())
    {
        server.admin().create_queue(queue);
    }
    let nginx = find(&resources, "ConfigMap", "task-router-nginx").clone();
    let state = dir.path().join("state");
    let secret_dir = dir.path().join("credentials");
    for d in [&state, &secret_dir] {
        std::fs::create_dir_all(d).expect("dir");
    }
    std::fs::write(secret_dir.join("credentials.env"), &credentials).expect("credentials");
    let name = unique("tdkp");
    let mut pod = pod_from_template(
        find(&resources, "DaemonSet", "task-router"),
        &images,
        &name,
        &state,
        &secret_dir,
    );
    files_for_config_map_mounts(&mut pod["spec"], &[&nginx], &dir.path().join("config-maps"));
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, pod.to_string()).expect("pod.yaml");
    let mut play = podman();
    play.args(["kube", "play"]);
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, config.to_string()).expect("configmap");
    play.arg("--configmap").arg(&config_file);
    let played = PlayedPod {
        name: name.clone(),
        file: file.clone(),
        pause_before: pause_images(),
        volumes_before: volumes(),
    };

    let started = Instant::now();
    let out = play.arg(&played.file).output().expect("podman kube play");
    let report = show(&out);
    assert!(out.status.success(), "{report}");
    let logs = || {
        let out = podman()
            .args(["logs", "--tail", "40", &format!("{name}-router")])
            .output();
        let exit = podman()
            .args([
                "inspect",
                "--format",
                "exit {{.State.ExitCode}} {{.State.Error}}",
                &format!("{name}-router"),
            ])
            .output();
        let states = podman()
            .args(["ps", "-a", "--pod", "--format", "{{.Names}} {{.Status}}"])
            .output();
        format!(
            "{}\n{}\n{}",
            states.map(|o| show(&o)).unwrap_or_default(),
            exit.map(|o| show(&o)).unwrap_or_default(),
            out.map(|o| show(&o)).unwrap_or_default()
        )
    };
    let ready = wait::within(Duration::from_secs(90), || {
        (admin_answers("/readyz") == Some(200)).then_some(())
    });
    assert!(
        ready.is_some(),
        "the router never got ready:\n{report}\n{}",
        logs()
    );
    eprintln!("pod ready {:?} after kube play", started.elapsed());
    assert_eq!(admin_answers("/healthz"), Some(200));
    // The datapath pinned on the host's bpffs and attached to the test link.
    assert!(
        pins.layout_dir()
            .join(format!("link-tc-{}", link.host_dev))
            .exists(),
        "{}",
        logs()
    );
    assert!(
        tcx_programs(&link.host_dev)
            .iter()
            .any(|(n, _)| n == "task_router_tc")
    );
    // The init container ran and succeeded; both containers run (and stay up).
    let init = podman_ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}} {{.RestartCount}}",
        &format!("{name}-mount-bpffs"),
    ]);
    assert!(init.starts_with("0 "), "mount-bpffs: {init}");
    for container in ["router", "webserver"] {
        let state = podman_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} restarts={{.RestartCount}}",
            &format!("{name}-{container}"),
        ]);
        assert!(
            state.starts_with("running"),
            "{container}: {state}\n{}",
            logs()
        );
    }
    let web = podman()
        .args(["logs", "--tail", "20", &format!("{name}-webserver")])
        .output()
        .expect("podman logs");
    eprintln!("webserver:\n{}\nstates:\n{}", show(&web), logs());
    // The router runs as uid 0 with the template's capabilities (less any this machine has
    // not got at all) and a read-only root.
    let router =
        &find(&resources, "DaemonSet", "task-router")["spec"]["template"]["spec"]["containers"][0];
    let caps: Vec<String> = router["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("caps")
        .iter()
        .map(|c| c.as_str().expect("name").to_string())
        .collect();
    assert_daemon_privileges(&format!("{name}-router"), &caps);
    let readonly = podman_ok(&[
        "inspect",
        &format!("{name}-router"),
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}",
    ]);
    assert_eq!(readonly.trim(), "true");
    drop(played);
    drop(link);
}
