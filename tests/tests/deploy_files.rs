//! The deploy files (`deploy/`) as an operator relies on them: the compose file is valid
//! Compose and has the layout the README promises, runtime.env.example names every variable the
//! daemon reads (and nothing else) with its default, and the image is built by the same recipe
//! as everything else. No Docker engine is needed: these read the files.

mod deploy_support;

use deploy_support::*;
use router_tests::workspace_root;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

/// dclint's findings on `file` (JSON formatter): (rule, message) pairs.
fn dclint(file: &std::path::Path) -> Vec<(String, String)> {
    let tools = node_tools();
    let out = Command::new(tools.join("node_modules/.bin/dclint"))
        .arg(file)
        .args(["--formatter", "json", "--color", "false"])
        .current_dir(&tools)
        .output()
        .expect("run dclint");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dclint printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings: Vec<(String, String)> = report
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["messages"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            (
                m["rule"].as_str().unwrap_or("?").to_string(),
                m["message"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(
        out.status.success(),
        findings
            .iter()
            .all(|(rule, _)| !is_error_rule(rule, &report)),
        "dclint's exit status disagrees with its report: {findings:?}"
    );
    findings
}

fn is_error_rule(rule: &str, report: &Value) -> bool {
    report
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["messages"].as_array().cloned().unwrap_or_default())
        .any(|m| m["rule"] == rule && m["type"] == "error")
}

#[test]
fn compose_file_is_valid_against_the_compose_specification() {
    // dclint validates against the Compose specification's JSON schema before its own rules
    // (which are kept at their defaults: no finding at all is accepted).
    let findings = dclint(&deploy_dir().join("docker-compose.yml"));
    assert!(findings.is_empty(), "docker-compose.yml: {findings:#?}");
}

#[test]
fn the_compose_validator_rejects_what_compose_would() {
    // The same file with one mistake an editor could make: the check above can fail.
    let good = read_deploy("docker-compose.yml");
    let bad = good.replacen("condition: service_healthy", "condition: healthy", 1);
    assert_ne!(good, bad);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("docker-compose.yml");
    std::fs::write(&path, bad).expect("write");
    let findings = dclint(&path);
    assert!(
        findings.iter().any(|(rule, _)| rule == "invalid-schema"),
        "an invalid depends_on condition must fail schema validation: {findings:?}"
    );
}

fn workspace_version() -> String {
    let manifest: toml::Table = read(&workspace_root().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml");
    manifest["workspace"]["package"]["version"]
        .as_str()
        .expect("workspace.package.version")
        .to_string()
}

/// `FROM image AS stage` lines of the Dockerfile, in order, each with the image it starts from:
/// `${ARG}` resolved to the default of the `ARG` lines above the first stage, and an earlier
/// stage's name to that stage's image.
fn dockerfile_stages() -> Vec<(String, String)> {
    let text = read_deploy("Dockerfile");
    let args: Vec<(String, String)> = text
        .lines()
        .take_while(|l| !l.starts_with("FROM "))
        .filter_map(|l| l.strip_prefix("ARG ")?.split_once('='))
        .map(|(k, v)| (format!("${{{k}}}"), v.to_string()))
        .collect();
    let mut stages: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [from, image, as_, stage] = words[..] else {
            continue;
        };
        if from != "FROM" || !as_.eq_ignore_ascii_case("AS") {
            continue;
        }
        let resolved = args
            .iter()
            .find(|(k, _)| k == image)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                stages
                    .iter()
                    .find(|(_, s)| s == image)
                    .map(|(i, _)| i.clone())
            })
            .unwrap_or_else(|| image.to_string());
        stages.push((resolved, stage.to_string()));
    }
    stages
}

#[test]
fn compose_layout_is_the_one_the_readme_describes() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["router", "webserver"]));
    let router = &compose["services"]["router"];
    let web = &compose["services"]["webserver"];

    // Host network for both, no port publishing (an error with host networking).
    for (name, svc) in [("router", router), ("webserver", web)] {
        assert_eq!(svc["network_mode"], "host", "{name} uses the host network");
        assert!(svc.get("ports").is_none(), "{name} publishes no ports");
        assert_eq!(svc["restart"], "unless-stopped", "{name} restart policy");
        assert!(svc.get("privileged").is_none(), "{name} is not privileged");
    }

    // The capabilities eBPF needs, plus the one `nginx -t` needs for ports below 1024.
    let caps: BTreeSet<String> = compose_router_caps(&compose).into_iter().collect();
    let expected: BTreeSet<String> = [
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_PERFMON",
        "CAP_SYS_RESOURCE",
        "CAP_NET_BIND_SERVICE",
    ]
    .map(String::from)
    .into();
    assert_eq!(caps, expected);

    // The image tag is the workspace version; the webserver runs the image the router's own
    // runtime stage is built on, so the daemon's `nginx -t` tests with the same nginx.
    assert_eq!(
        router["image"].as_str(),
        Some(format!("task-router:{}", workspace_version()).as_str())
    );
    let stages = dockerfile_stages();
    let runtime_base = &stages.last().expect("a runtime stage").0;
    assert_eq!(web["image"].as_str(), Some(runtime_base.as_str()));

    // Mounts: the host's bpffs (pins survive the container), the state volume, and the
    // generated nginx config shared read-write with the router and read-only with nginx.
    let env = router_environment(&compose);
    let env_str = |k: &str| env.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mounts = router["volumes"].as_array().expect("router volumes");
    let bpffs_target = mounts
        .iter()
        .find(|m| m["type"] == "bind" && m["source"] == "/sys/fs/bpf")
        .and_then(|m| m["target"].as_str())
        .expect("the host's /sys/fs/bpf is bind-mounted into the router");
    assert!(
        !bpffs_target.starts_with("/sys/"),
        "Docker's AppArmor profile denies writes under /sys/fs in a container"
    );
    assert!(
        env_str("ROUTER_BPFFS").starts_with(&format!("{bpffs_target}/")),
        "ROUTER_BPFFS must lie on the mounted bpffs"
    );
    let has = |svc: &Value, mount: &str| {
        svc["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m.as_str() == Some(mount))
    };
    assert!(has(
        router,
        &format!("state:{}", env_str("ROUTER_STATE_DIR"))
    ));
    let conf_dir = env_str("NGINX_CONF_DIR");
    assert!(has(router, &format!("nginx-conf:{conf_dir}")));
    assert!(has(web, &format!("nginx-conf:{conf_dir}:ro")));
    for svc in [router, web] {
        assert!(has(svc, "./nginx.conf:/etc/nginx/nginx.conf:ro"));
    }
    assert_eq!(
        env_str("NGINX_MANAGED"),
        "false",
        "nginx is its own container"
    );

    // The router asks for reloads through the stamp file the webserver's watcher polls.
    let watcher = read_deploy("nginx-reload.sh");
    let stamp = watcher
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("stamp=\"${TASK_ROUTER_RELOAD_STAMP:-")
        })
        .and_then(|rest| rest.strip_suffix("}\""))
        .expect("the watcher's default stamp path");
    assert!(stamp.starts_with(&format!("{conf_dir}/")));
    assert!(
        env_str("NGINX_RELOAD_CMD").ends_with(&format!("> {stamp}")),
        "NGINX_RELOAD_CMD writes the stamp the watcher polls ({stamp})"
    );
    assert!(has(
        web,
        "./nginx-reload.sh:/etc/nginx/task-router-reload.sh:ro"
    ));
    assert_eq!(
        web["command"],
        serde_json::json!(["sh", "/etc/nginx/task-router-reload.sh"])
    );

    // Health: the router's check calls /healthz on ROUTER_ADMIN_ADDR, defaulting like the
    // daemon; nginx starts once the router is healthy.
    let check = router["healthcheck"]["test"]
        .as_array()
        .expect("router healthcheck")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let admin_default = env_example()
        .into_iter()
        .find(|l| l.name == "ROUTER_ADMIN_ADDR")
        .expect("ROUTER_ADMIN_ADDR in runtime.env.example")
        .value;
    assert!(
        check.contains(&format!(
            "http://$${{ROUTER_ADMIN_ADDR:-{admin_default}}}/healthz"
        )),
        "healthcheck: {check}"
    );
    assert_eq!(
        web["depends_on"]["router"]["condition"], "service_healthy",
        "nginx waits for a healthy router"
    );
}

#[test]
fn every_variable_the_daemon_reads_is_in_runtime_env_example_and_compose() {
    let example = env_example();
    let listed: BTreeSet<String> = example.iter().map(|l| l.name.clone()).collect();
    let daemon = daemon_variables();
    let missing: Vec<_> = daemon.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "not in runtime.env.example: {missing:?}"
    );
    let unknown: Vec<_> = listed.difference(&daemon).collect();
    assert!(
        unknown.is_empty(),
        "in runtime.env.example but not read by the daemon: {unknown:?}"
    );

    let compose = compose();
    let env = router_environment(&compose);
    let passed: BTreeSet<String> = env.keys().cloned().collect();
    let missing: Vec<_> = daemon.difference(&passed).collect();
    assert!(
        missing.is_empty(),
        "not in the router's environment: {missing:?}"
    );
    // Compose passes exactly what runtime.env can say, and interpolates nothing else.
    assert_eq!(passed, listed, "compose environment vs runtime.env.example");
    let text = read_deploy("docker-compose.yml");
    let interpolated = interpolated_names(&text);
    let unknown: Vec<_> = interpolated.difference(&listed).collect();
    assert!(
        unknown.is_empty(),
        "compose interpolates unknown variables: {unknown:?}"
    );
}

#[test]
fn runtime_env_example_shows_the_daemons_defaults() {
    // A commented-out `#NAME=value` line shows the default in force: it must be the daemon's.
    for l in env_example().iter().filter(|l| !l.active) {
        let var = router_userspace::config::env_var(&l.name);
        let default = var.map_or("", |v| v.default);
        assert_eq!(
            l.value, default,
            "line {}: {} shows a default the daemon does not have",
            l.line, l.name
        );
    }
}

#[test]
fn runtime_env_example_has_one_comment_and_one_line_per_variable() {
    let example = env_example();
    let mut seen = BTreeSet::new();
    for l in &example {
        assert!(seen.insert(&l.name), "{} appears twice", l.name);
        let help = l
            .help
            .as_deref()
            .unwrap_or_else(|| panic!("line {}: {} has no comment line above", l.line, l.name));
        assert!(
            help.len() > 10 && !help.split_once('=').is_some_and(|(n, _)| is_var_name(n)),
            "line {}: {} needs a one-line description, got {help:?}",
            l.line,
            l.name
        );
    }
}

#[test]
fn required_variables_are_left_for_the_operator() {
    // `${NAME:?...}` in compose = required: runtime.env.example leaves those active and empty,
    // like every value the operator must fill in; the rest are commented out at their default.
    let compose = compose();
    let env = router_environment(&compose);
    let required: BTreeSet<String> = env
        .iter()
        .filter(|(name, v)| {
            v.as_str()
                .is_some_and(|s| s.starts_with(&format!("${{{name}:?")))
        })
        .map(|(name, _)| name.clone())
        .collect();
    assert!(required.contains("CLEARML_API_HOST"));
    let active: BTreeSet<String> = env_example()
        .into_iter()
        .filter(|l| l.active)
        .inspect(|l| assert_eq!(l.value, "", "{}: an example value would be used", l.name))
        .map(|l| l.name)
        .collect();
    let not_active: Vec<_> = required.difference(&active).collect();
    assert!(
        not_active.is_empty(),
        "required but commented out: {not_active:?}"
    );
}

/// A plausible value for each variable runtime.env.example leaves to the operator.
fn sample_value(name: &str) -> &'static str {
    match name {
        "CLEARML_API_HOST" => "http://127.0.0.1:8008",
        "CLEARML_API_ACCESS_KEY" => "EXAMPLEACCESSKEY0000",
        "CLEARML_API_SECRET_KEY" => "example-secret-key",
        "TCP_ROUTER_ADDRESS" => "192.0.2.10",
        "AUTH_BASE64_JWKS_KEY" => "ZXhhbXBsZS1obWFjLWtleS1mb3ItdGVzdHM",
        "ROUTER_INTERFACES" => "eth0",
        other => panic!("no sample value for {other}: add one when the example asks for it"),
    }
}

#[test]
fn the_example_filled_in_is_a_valid_configuration() {
    // What an operator does: fill in the empty lines and keep every default. The daemon's own
    // parser (`--env-file`, the same file compose and systemd read) must accept the result, so
    // the file's format and its "required" lines agree with the daemon.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = check_config_on_filled_example(dir.path(), None);
    assert!(
        out.status.success(),
        "task-router check-config rejects the filled-in example:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With one of them left empty, the configuration is refused naming it.
    let out = check_config_on_filled_example(dir.path(), Some("TCP_ROUTER_ADDRESS"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("TCP_ROUTER_ADDRESS"),
        "{stderr}"
    );
}

/// `task-router check-config` on runtime.env.example with its empty lines filled in (all but
/// `skip`), with nothing else in the environment.
fn check_config_on_filled_example(
    dir: &std::path::Path,
    skip: Option<&str>,
) -> std::process::Output {
    let filled: String = read_deploy("runtime.env.example")
        .lines()
        .map(|line| match line.strip_suffix('=') {
            Some(name) if is_var_name(name) && Some(name) != skip => {
                format!("{line}{}\n", sample_value(name))
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let path = dir.join("runtime.env");
    std::fs::write(&path, filled).expect("write runtime.env");
    Command::new(router_tests::daemon_binary())
        .arg("check-config")
        .arg("--env-file")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run task-router check-config")
}

#[test]
fn read_outside_the_table_is_really_read() {
    // RUST_LOG is listed although the daemon's table does not hold it: tracing reads it.
    let src = read(&workspace_root().join("router-userspace/src/logging.rs"));
    for name in READ_OUTSIDE_THE_TABLE {
        assert!(
            src.contains(&format!("\"{name}\"")),
            "{name} is not read by the daemon's logging"
        );
    }
}

/// RUN instructions of the Dockerfile stage `stage`, continuation lines joined, flags dropped.
fn run_commands(stage: &str) -> Vec<String> {
    let text = read_deploy("Dockerfile").replace("\\\n", " ");
    let mut current = String::new();
    let mut runs = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"FROM") => current = words.last().unwrap_or(&"").to_string(),
            // The instruction's own flags (`--mount=...`) come first; the command follows.
            Some(&"RUN") if current == stage => runs.push(
                words[1..]
                    .iter()
                    .skip_while(|w| w.starts_with("--"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => {}
        }
    }
    runs
}

#[test]
fn the_image_builds_with_the_project_recipe() {
    let runs = run_commands("build");
    // The build stage installs the toolchain xtask expects and runs the xtask build: there is
    // no second recipe (cargo build lines, bpf-linker installs) to drift from the real one.
    assert_eq!(
        runs,
        [
            "rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly \
             --profile minimal",
            "cargo xtask build --release",
        ],
        "build stage RUN lines"
    );
    // That is the build every developer and CI run: `cargo xtask` is what .ci/run calls, and
    // the xtask binary has a `build --release`.
    assert!(read(&workspace_root().join(".ci/run")).contains("cargo xtask"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let xtask = target.join("debug/xtask");
    let help = Command::new(&xtask)
        .args(["build", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("run {} (built by `cargo xtask`): {e}", xtask.display()));
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--release"));

    // The runtime stage takes what that build produces: target/release/<the daemon's bin>.
    let manifest: toml::Table = read(&workspace_root().join("router-userspace/Cargo.toml"))
        .parse()
        .expect("router-userspace/Cargo.toml");
    let bin = manifest["bin"][0]["name"].as_str().expect("bin name");
    let dockerfile = read_deploy("Dockerfile");
    assert!(
        dockerfile.contains(&format!(
            "COPY --from=build /src/target/release/{bin} /usr/local/bin/{bin}"
        )),
        "the runtime stage copies the xtask build's binary"
    );
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")));
}

#[test]
fn the_image_stages_match_the_workspace_and_each_other() {
    let stages = dockerfile_stages();
    let names: Vec<&str> = stages.iter().map(|(_, s)| s.as_str()).collect();
    // `runtime` (the default target) adds the build stage's daemon to `runtime-base`;
    // `runtime-prebuilt` adds one built elsewhere (`cargo xtask image --prebuilt`).
    assert_eq!(
        names,
        ["build", "runtime-base", "runtime-prebuilt", "runtime"]
    );
    let (build, runtime) = (&stages[0].0, &stages[3].0);
    let manifest: toml::Table = read(&workspace_root().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml");
    let rust = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    // The workspace's Rust, on the Debian release the runtime image is (the binary's glibc).
    let (rust_tag, build_suite) = build
        .strip_prefix("rust:")
        .and_then(|t| t.split_once('-'))
        .expect("build stage is rust:<version>-<debian>");
    assert_eq!(rust_tag, rust, "build image Rust version vs rust-version");
    let runtime_suite = runtime.rsplit('-').next().expect("runtime tag suite");
    assert_eq!(
        build_suite, runtime_suite,
        "build and runtime Debian releases"
    );
    // The nginx image stops with SIGQUIT; the daemon's hitless stop is SIGTERM.
    let dockerfile = read_deploy("Dockerfile");
    let runtime_part = &dockerfile[dockerfile.find("AS runtime").expect("runtime stage")..];
    assert!(runtime_part.contains("\nSTOPSIGNAL SIGTERM\n"));
    assert!(
        runtime_part.contains("rm -f /etc/nginx/conf.d/default.conf"),
        "the image's default site must not land in the shared conf volume"
    );
}
