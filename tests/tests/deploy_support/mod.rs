//! Shared by the deploy tests: the files under `deploy/`, read the way their consumers read them
//! (compose's YAML through the same parser dclint validates with, runtime.env line by line, the
//! systemd unit's directives), and the list of variables the daemon reads.

#![allow(dead_code)] // each test binary uses a different part

use router_tests::workspace_root;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn read_deploy(name: &str) -> String {
    read(&deploy_dir().join(name))
}

/// `tests/deploy`, where `cargo xtask test` installs the npm validators.
pub fn node_tools() -> PathBuf {
    let dir = workspace_root().join("tests/deploy");
    assert!(
        dir.join("node_modules/.bin/dclint").exists(),
        "the deploy validators are not installed in {}: run the tests with `cargo xtask test` \
         (it runs `npm ci` there)",
        dir.display()
    );
    dir
}

/// A YAML file as JSON, parsed by the `yaml` package dclint uses.
pub fn yaml_as_json(path: &Path) -> Value {
    let tools = node_tools();
    let out = Command::new("node")
        .arg(tools.join("yaml-to-json.mjs"))
        .arg(path)
        .current_dir(&tools)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "cannot parse {} as YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("yaml-to-json prints JSON")
}

pub fn compose() -> Value {
    yaml_as_json(&deploy_dir().join("docker-compose.yml"))
}

/// The router service's `environment:` map.
pub fn router_environment(compose: &Value) -> serde_json::Map<String, Value> {
    compose["services"]["router"]["environment"]
        .as_object()
        .expect("router.environment is a map")
        .clone()
}

/// One `NAME=value` line of runtime.env.example; `active` = not commented out.
#[derive(Debug, Clone)]
pub struct EnvLine {
    pub name: String,
    pub value: String,
    pub active: bool,
    /// The comment line right above it, without `# `.
    pub help: Option<String>,
    pub line: usize,
}

pub fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Every assignment in runtime.env.example, commented out (`#NAME=default`) or not.
pub fn env_example() -> Vec<EnvLine> {
    let text = read_deploy("runtime.env.example");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (active, body) = match line.strip_prefix('#') {
            Some(rest) => (false, rest),
            None => (true, *line),
        };
        let Some((name, value)) = body.split_once('=') else {
            continue;
        };
        if !is_var_name(name) {
            continue;
        }
        let help = i
            .checked_sub(1)
            .and_then(|j| lines[j].strip_prefix("# "))
            .map(str::to_string);
        out.push(EnvLine {
            name: name.to_string(),
            value: value.to_string(),
            active,
            help,
            line: i + 1,
        });
    }
    out
}

/// Variables read outside the daemon's variable table, by the libraries it uses (tracing's
/// filter). Each must really be read: `read_outside_the_table` checks the source says so.
pub const READ_OUTSIDE_THE_TABLE: &[&str] = &["RUST_LOG"];

/// Every variable the daemon reads: its table (`config::ENV_VARS`) and the few read elsewhere.
pub fn daemon_variables() -> BTreeSet<String> {
    router_userspace::config::ENV_VARS
        .iter()
        .map(|v| v.name.to_string())
        .chain(READ_OUTSIDE_THE_TABLE.iter().map(|s| s.to_string()))
        .collect()
}

/// The names `${NAME...}` refers to in `text` (compose interpolation; `$$` is a literal `$`).
pub fn interpolated_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'$' && bytes[i + 1] == b'$' {
            i += 2;
            continue;
        }
        if bytes[i] == b'$' && bytes[i + 1] == b'{' {
            let rest = &text[i + 2..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_string());
        }
        i += 1;
    }
    names
}

/// The values of `key=` in `[section]` of a systemd unit, in order.
pub fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = String::new();
    let mut values = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].to_string();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            values.push(v.trim().to_string());
        }
    }
    values
}

/// The capabilities compose grants the router, as `CAP_*` names.
pub fn compose_router_caps(compose: &Value) -> Vec<String> {
    let router = &compose["services"]["router"];
    assert_eq!(
        router["cap_drop"],
        serde_json::json!(["ALL"]),
        "the router drops every default capability"
    );
    router["cap_add"]
        .as_array()
        .expect("router.cap_add is a list")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("capability name")))
        .collect()
}

/// The capabilities the systemd unit leaves the daemon (`CapabilityBoundingSet=` lines add up).
pub fn unit_caps(unit: &str) -> Vec<String> {
    unit_values(unit, "Service", "CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// `setpriv` arguments that start a program as root with exactly `caps` (bounding set, no
/// inheritable or ambient ones), the way the compose file or the unit would start it.
pub fn setpriv_args(caps: &[String]) -> Vec<String> {
    let bounding: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    vec![
        "--bounding-set".into(),
        format!("-all,{}", bounding.join(",")),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}
