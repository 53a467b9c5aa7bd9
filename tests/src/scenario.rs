//! "The daemon in these namespaces, with these routes or this ClearML server": the
//! `task-router` command line a scenario test needs (interfaces, routes file, state directory,
//! admin address, variables), built in one place, started as a [`Daemon`] and waited on until
//! it logs that it is ready.
//!
//! Variables go where the test puts them: [`DaemonSetup::set`] on the command line (`--set`,
//! which wins over the environment), [`DaemonSetup::env`] in the environment (a later `env` of
//! the same name replaces an earlier one, e.g. wrong credentials after [`DaemonSetup::clearml`]).

use crate::clearml_server::{ClearmlServer, ServerOptions};
use crate::daemon::Daemon;
use crate::netns::Netns;
use crate::topology::Topology;
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The routes file's name in the setup's directory.
const ROUTES_FILE: &str = "routes.toml";

/// Where the routes file and the state directory live.
enum Files {
    /// A temporary directory of the setup's own, handed to the daemon it starts.
    Own(tempfile::TempDir),
    /// A directory the test keeps (e.g. across restarts of several daemons).
    At(PathBuf),
}

/// A `task-router` command line for a scenario test; see the module documentation.
pub struct DaemonSetup<'a> {
    ns: &'a Netns,
    subcommand: String,
    interfaces: Vec<String>,
    /// The routes file's text so far (written at each change).
    routes: String,
    /// Whether the daemon is given the routes file.
    routes_file: bool,
    admin: Option<String>,
    settings: Vec<String>,
    env: Vec<(String, OsString)>,
    args: Vec<OsString>,
    files: Files,
    /// Another state directory than the one under the setup's directory.
    state_dir: Option<PathBuf>,
}

impl<'a> DaemonSetup<'a> {
    /// `task-router run` inside `ns`, with a routes file and state directory in a temporary
    /// directory of its own.
    pub fn new(ns: &'a Netns) -> DaemonSetup<'a> {
        let dir = tempfile::Builder::new()
            .prefix("task-router-daemon-")
            .tempdir()
            .expect("temp dir for the daemon's files");
        DaemonSetup {
            ns,
            subcommand: "run".into(),
            interfaces: Vec::new(),
            routes: String::new(),
            routes_file: false,
            admin: None,
            settings: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            files: Files::Own(dir),
            state_dir: None,
        }
    }

    /// [`DaemonSetup::new`] in the router namespace of `t`, on its client and backend links
    /// in TC mode.
    pub fn tc_on(t: &'a Topology) -> DaemonSetup<'a> {
        DaemonSetup::new(&t.router)
            .interface_as(&t.router_client.dev, "tc")
            .interface_as(&t.router_backend.dev, "tc")
    }

    /// Keeps the routes file and the state directory under `dir`, which the caller owns.
    pub fn files_in(mut self, dir: &Path) -> Self {
        self.files = Files::At(dir.to_path_buf());
        self
    }

    /// The state directory at `dir` instead of under the setup's directory.
    pub fn state_in(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Another subcommand than `run` (e.g. `uninstall`) with the same configuration.
    pub fn subcommand(mut self, name: &str) -> Self {
        self.subcommand = name.to_string();
        self
    }

    /// An interface whose mode the daemon picks.
    pub fn interface(mut self, dev: &str) -> Self {
        self.interfaces.push(dev.to_string());
        self
    }

    /// An interface in `mode` (`tc`, `xdp`, `xdp-generic`).
    pub fn interface_as(mut self, dev: &str, mode: &str) -> Self {
        self.interfaces.push(format!("{dev}:{mode}"));
        self
    }

    /// Appends `toml` to the routes file (written now, so the file exists before the daemon).
    pub fn routes(mut self, toml: &str) -> Self {
        self.routes.push_str(toml);
        std::fs::write(self.routes_path(), &self.routes).expect("write the routes file");
        self.with_routes_file()
    }

    /// Gives the daemon the routes file as the test wrote it in [`DaemonSetup::dir`].
    pub fn with_routes_file(mut self) -> Self {
        self.routes_file = true;
        self
    }

    /// A `[[tcp]]` route of the routes file.
    pub fn tcp_route(self, port: u16, upstream: impl Display) -> Self {
        self.routes(&format!(
            "[[tcp]]\nport = {port}\nupstream = \"{upstream}\"\n\n"
        ))
    }

    /// `TCP_PORT_START` and `TCP_PORT_END` on the command line.
    pub fn tcp_ports(self, start: u16, end: u16) -> Self {
        self.set("TCP_PORT_START", start).set("TCP_PORT_END", end)
    }

    /// `AUTH_ENABLED=false` on the command line.
    pub fn no_auth(self) -> Self {
        self.set("AUTH_ENABLED", "false")
    }

    /// `--admin-addr addr`.
    pub fn admin(mut self, addr: impl Display) -> Self {
        self.admin = Some(addr.to_string());
        self
    }

    /// The admin endpoint on `127.0.0.1:port` (inside the namespace).
    pub fn admin_port(self, port: u16) -> Self {
        self.admin(format!("127.0.0.1:{port}"))
    }

    /// `--set name=value`.
    pub fn set(mut self, name: &str, value: impl Display) -> Self {
        self.settings.push(format!("{name}={value}"));
        self
    }

    /// `name=value` in the daemon's environment.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.to_string(), value.as_ref().to_os_string()));
        self
    }

    /// Extra command-line arguments (e.g. `--poll-interval 100ms`, `--detach-on-exit`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// The API and credentials of `server`, in the environment.
    pub fn clearml(self, server: &ClearmlServer) -> Self {
        let creds = server.credentials();
        self.env("CLEARML_API_HOST", server.url())
            .env("CLEARML_API_ACCESS_KEY", creds.access_key)
            .env("CLEARML_API_SECRET_KEY", creds.secret_key)
    }

    /// Where the routes file and the state directory are.
    pub fn dir(&self) -> &Path {
        match &self.files {
            Files::Own(dir) => dir.path(),
            Files::At(dir) => dir,
        }
    }

    pub fn routes_path(&self) -> PathBuf {
        self.dir().join(ROUTES_FILE)
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.dir().join("state"))
    }

    /// The command, to run to completion (a start-up that must fail) or to start.
    pub fn command(&self) -> Command {
        let binary = crate::daemon_binary();
        let mut cmd = self.ns.command(binary.to_str().expect("utf-8 path"));
        cmd.arg(&self.subcommand);
        for dev in &self.interfaces {
            cmd.args(["--interface", dev]);
        }
        if self.routes_file {
            cmd.arg("--routes-file").arg(self.routes_path());
        }
        cmd.arg("--state-dir").arg(self.state_path());
        if let Some(addr) = &self.admin {
            cmd.args(["--admin-addr", addr]);
        }
        for setting in &self.settings {
            cmd.args(["--set", setting]);
        }
        cmd.args(&self.args);
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd
    }

    /// Runs the command to its end (a start-up that must fail) and returns what it printed.
    pub fn run_to_end(&self) -> std::process::Output {
        self.command().output().expect("run the daemon")
    }

    /// Starts the daemon; it keeps the setup's own files until it is gone.
    pub fn spawn(self) -> Daemon {
        let daemon = Daemon::spawn(self.command()).expect("start the daemon");
        match self.files {
            Files::Own(dir) => daemon.keeping(dir),
            Files::At(_) => daemon,
        }
    }

    /// Starts the daemon and waits until it logs that it is ready.
    pub fn start(self, ready_within: Duration) -> Daemon {
        let mut daemon = self.spawn();
        daemon.wait_for_log("ready", ready_within);
        daemon
    }
}

/// The ClearML test server listening on 127.0.0.1 inside `ns` (where the daemon runs).
pub fn clearml_server_in(ns: &Netns) -> ClearmlServer {
    let listener = ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("enter the namespace")
        .expect("bind the ClearML test server in the namespace");
    ClearmlServer::start_with(ServerOptions {
        listener: Some(listener),
        ..ServerOptions::default()
    })
    .expect("start the ClearML test server")
}
