//! The real `clearml` Python SDK as a task a test drives: `tests/python/endpoint_task.py` runs in
//! the project's virtualenv for one SDK release (`target/sdk-venv/<version>/`, made by
//! `cargo xtask test`), optionally inside a network namespace, and answers one JSON command at
//! a time. Killed by PID on drop.

use crate::netns::Netns;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const VERSIONS: &str = include_str!("../../python/sdk-versions.txt");

/// The SDK releases under test, newest first (`tests/python/sdk-versions.txt`).
pub fn sdk_versions() -> Vec<&'static str> {
    VERSIONS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The newest SDK release under test.
pub fn newest() -> &'static str {
    sdk_versions()[0]
}

/// The last 2.0.x release under test (SDK 2.0 keeps one endpoint per protocol).
pub fn last_2_0() -> &'static str {
    sdk_versions()
        .into_iter()
        .find(|v| v.starts_with("2.0."))
        .expect("a 2.0.x release in tests/python/sdk-versions.txt")
}

/// The virtualenv's python for `version`; panics (test set-up) when `cargo xtask test` has not
/// made it.
pub fn sdk_python(version: &str) -> PathBuf {
    let python = crate::workspace_root()
        .join("target/sdk-venv")
        .join(version)
        .join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which creates the SDK virtualenvs",
        python.display()
    );
    python
}

/// Where the task finds the server and what it says about itself.
#[derive(Clone, Debug)]
pub struct SdkEnv {
    /// `CLEARML_API_HOST`.
    pub api_host: String,
    pub access_key: String,
    pub secret_key: String,
    /// `CLEARML_AGENT_HOST_IP`: the address the task reports as its own (`_ADDRESS`,
    /// `external_address`); the SDK's guess of the private IP otherwise.
    pub host_ip: Option<String>,
    /// `CLEARML_API_HOST_VERIFY_CERT`: a CA bundle path (the SDK hands a value that is not a
    /// boolean to `requests` as `verify`, clearml 2.1.7 `backend_api/utils.py:174-178`).
    pub verify_cert: Option<String>,
}

impl SdkEnv {
    pub fn for_server(server: &super::ClearmlServer) -> SdkEnv {
        let c = server.credentials();
        SdkEnv {
            api_host: server.url(),
            access_key: c.access_key,
            secret_key: c.secret_key,
            host_ip: None,
            verify_cert: server.ca_pem().map(|p| p.to_string_lossy().into_owned()),
        }
    }

    /// [`SdkEnv::for_server`] on a task host whose address is `host_ip`.
    pub fn on_host(server: &super::ClearmlServer, host_ip: &str) -> SdkEnv {
        SdkEnv {
            host_ip: Some(host_ip.to_string()),
            ..SdkEnv::for_server(server)
        }
    }
}

pub struct SdkTask {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    pub task_id: String,
    pub version: String,
    /// What the SDK decoded from the login token (`advanced` or `basic`).
    pub feature_set: String,
    _home: tempfile::TempDir,
}

impl SdkTask {
    /// Starts a task with SDK `version` (inside `netns` if given) and waits until `Task.init`
    /// has created it on the server.
    pub fn start(
        version: &str,
        env: &SdkEnv,
        netns: Option<&Netns>,
        name: &str,
    ) -> Result<SdkTask> {
        let python = sdk_python(version);
        let script = crate::workspace_root().join("tests/python/endpoint_task.py");
        let home = tempfile::tempdir().context("a HOME for the SDK")?;
        let mut cmd = match netns {
            Some(ns) => ns.command(&python.to_string_lossy()),
            None => Command::new(&python),
        };
        cmd.arg(&script)
            .arg(name)
            .current_dir(home.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("PYTHONUNBUFFERED", "1")
            // No __pycache__ beside the scripts in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CLEARML_API_HOST", &env.api_host)
            .env("CLEARML_WEB_HOST", &env.api_host)
            .env("CLEARML_FILES_HOST", &env.api_host)
            .env("CLEARML_API_ACCESS_KEY", &env.access_key)
            .env("CLEARML_API_SECRET_KEY", &env.secret_key)
            .env("CLEARML_NO_DEFAULT_SERVER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ip) = &env.host_ip {
            cmd.env("CLEARML_AGENT_HOST_IP", ip);
        }
        if let Some(ca) = &env.verify_cert {
            cmd.env("CLEARML_API_HOST_VERIFY_CERT", ca);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", python.display()))?;
        let stdin = child.stdin.take().context("task stdin")?;
        let stdout = child.stdout.take().context("task stdout")?;
        let mut stderr_pipe = child.stderr.take().context("task stderr")?;
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The SDK prints its own lines on stdout too; answers are JSON objects.
                if line.starts_with('{') && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut task = SdkTask {
            child,
            stdin,
            answers,
            stderr,
            task_id: String::new(),
            version: version.to_string(),
            feature_set: String::new(),
            _home: home,
        };
        let ready = task.next_answer(Duration::from_secs(120), "Task.init")?;
        task.task_id = ready["task_id"]
            .as_str()
            .context("ready line without task_id")?
            .to_string();
        task.feature_set = ready["feature_set"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(task)
    }

    /// What the task printed on stderr so far (the SDK's log).
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn next_answer(&mut self, timeout: Duration, what: &str) -> Result<Value> {
        match self.answers.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line)
                .with_context(|| format!("{what}: answer is not JSON: {line}")),
            Err(RecvTimeoutError::Timeout) => bail!(
                "{what}: no answer from the SDK {} task within {timeout:?}; its log:\n{}",
                self.version,
                self.log()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                bail!(
                    "{what}: the SDK {} task exited ({status:?}); its log:\n{}",
                    self.version,
                    self.log()
                )
            }
        }
    }

    /// Sends one command and returns its `result`; an SDK exception becomes an error.
    pub fn command(&mut self, cmd: Value, timeout: Duration) -> Result<Value> {
        let what = format!("command {cmd}");
        writeln!(self.stdin, "{cmd}").with_context(|| format!("{what}: write"))?;
        self.stdin
            .flush()
            .with_context(|| format!("{what}: flush"))?;
        let answer = self.next_answer(timeout, &what)?;
        if answer["ok"] != json!(true) {
            bail!(
                "{what}: the SDK raised {}\n{}",
                answer["error"].as_str().unwrap_or("?"),
                answer["trace"].as_str().unwrap_or("")
            );
        }
        Ok(answer["result"].clone())
    }

    /// `Task.request_external_endpoint(port, protocol, wait, endpoint_name=name)`.
    pub fn request(
        &mut self,
        port: u16,
        protocol: &str,
        wait: bool,
        name: Option<&str>,
    ) -> Result<Value> {
        self.command(
            json!({"cmd": "request", "port": port, "protocol": protocol, "wait": wait,
                   "name": name, "timeout": 60}),
            Duration::from_secs(90),
        )
    }

    /// `Task.wait_for_external_endpoint(protocol, endpoint_name=name)` with `timeout`.
    pub fn wait(&mut self, protocol: &str, name: Option<&str>, timeout: Duration) -> Result<Value> {
        self.command(
            json!({"cmd": "wait", "protocol": protocol, "name": name,
                   "timeout": timeout.as_secs_f64()}),
            timeout + Duration::from_secs(30),
        )
    }

    /// `reload()` + `Task.list_external_endpoints()`.
    pub fn list(&mut self) -> Result<Vec<Value>> {
        let v = self.command(json!({"cmd": "list"}), Duration::from_secs(60))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Polls `reload()` + `list_external_endpoints()` until the `protocol` endpoint `name`
    /// starts with `prefix`; returns that entry.
    pub fn poll(
        &mut self,
        protocol: &str,
        name: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Value> {
        self.command(
            json!({"cmd": "poll", "protocol": protocol, "name": name, "prefix": prefix,
                   "timeout": timeout.as_secs_f64()}),
            timeout + Duration::from_secs(30),
        )
    }

    /// The clearml-session way: runtime `_SERVICE=EXTERNAL_TCP`, `external_address`,
    /// `external_tcp_port` and the `external_service` tag, written directly.
    pub fn session_request(&mut self, address: &str, port: u16) -> Result<()> {
        self.command(
            json!({"cmd": "session", "address": address, "port": port}),
            Duration::from_secs(60),
        )
        .map(|_| ())
    }

    /// The open-source way (`tests/python/oss_endpoint.py`, `request_endpoint`): the request
    /// keys and the tag written with SDK calls that need no `advanced` feature set.
    pub fn oss_request(&mut self, port: u16, protocol: &str, name: Option<&str>) -> Result<()> {
        self.command(
            json!({"cmd": "oss_request", "port": port, "protocol": protocol, "name": name}),
            Duration::from_secs(60),
        )
        .map(|_| ())
    }

    /// `oss_endpoint.read_endpoint`: the endpoint the router wrote back, or null.
    pub fn oss_read(&mut self, protocol: &str, name: Option<&str>) -> Result<Value> {
        self.command(
            json!({"cmd": "oss_read", "protocol": protocol, "name": name}),
            Duration::from_secs(60),
        )
    }

    /// `reload()` + the task's runtime properties as the SDK sees them.
    pub fn runtime(&mut self) -> Result<Value> {
        self.command(json!({"cmd": "runtime"}), Duration::from_secs(60))
    }

    /// Marks the task stopped (as aborting it does) and lets the process end; returns the
    /// status the SDK reports.
    pub fn stop(mut self) -> Result<String> {
        let status = self.command(json!({"cmd": "stop"}), Duration::from_secs(60))?;
        Ok(status.as_str().unwrap_or_default().to_string())
    }
}

impl Drop for SdkTask {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
