//! The sync engine in-process with recording route owners ([`crate::owners`]), for tests of
//! the control plane without a kernel datapath or nginx: its configuration from variables
//! alone, the engine driven cycle by cycle, or its loop on a thread of its own.

use crate::clearml_server::ClearmlServer;
use crate::owners::{RecordingForwarder, RecordingRouter};
use router_userspace::admin::{SharedStatus, Status};
use router_userspace::config::{Config, Sources};
use router_userspace::daemon::{CycleOutcome, Engine, new_status};
use std::path::Path;

/// A configuration from `vars` alone (no file, no command line); panics naming what is wrong.
pub fn config_from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Config
where
    K: Into<String>,
    V: Into<String>,
{
    let env = vars.into_iter().map(|(k, v)| (k.into(), v.into()));
    let sources = Sources::new(Vec::new(), env, None).expect("sources");
    Config::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"))
}

/// A configuration synced with `server` (its API and credentials), auth off, the state in
/// `state`, and `vars` on top (a later variable of the same name replaces an earlier one).
pub fn clearml_config(server: &ClearmlServer, state: &Path, vars: &[(&str, &str)]) -> Config {
    let creds = server.credentials();
    let mut env: Vec<(String, String)> = vec![
        ("CLEARML_API_HOST".into(), server.url()),
        ("CLEARML_API_ACCESS_KEY".into(), creds.access_key),
        ("CLEARML_API_SECRET_KEY".into(), creds.secret_key),
        ("AUTH_ENABLED".into(), "false".into()),
        ("ROUTER_STATE_DIR".into(), state.display().to_string()),
    ];
    for (name, value) in vars {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value.to_string()));
    }
    config_from_vars(env)
}

/// The engine with recording owners; clones of the owners and the status stay here to look at.
pub struct RecordingEngine {
    pub engine: Engine,
    pub tcp: RecordingForwarder,
    pub http: RecordingRouter,
    pub status: SharedStatus,
}

impl RecordingEngine {
    /// The engine, not connected yet.
    pub fn new(cfg: Config) -> RecordingEngine {
        let (tcp, http) = (RecordingForwarder::default(), RecordingRouter::default());
        let status = new_status(&cfg);
        let engine = Engine::new(
            cfg,
            Box::new(tcp.clone()),
            Box::new(http.clone()),
            status.clone(),
        )
        .expect("engine");
        RecordingEngine {
            engine,
            tcp,
            http,
            status,
        }
    }

    /// The engine, connected to ClearML as the daemon does at start-up.
    pub async fn start(cfg: Config) -> RecordingEngine {
        let mut r = RecordingEngine::new(cfg);
        r.engine.connect_at_start().await.expect("connect");
        r
    }

    pub async fn cycle(&mut self) -> CycleOutcome {
        self.engine.cycle().await
    }

    /// What `/status` would show now.
    pub fn status(&self) -> Status {
        self.status.read().expect("status").clone()
    }
}

/// The engine's loop on a thread of its own (as the daemon runs it); stops on drop.
pub struct EngineThread {
    pub tcp: RecordingForwarder,
    pub http: RecordingRouter,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineThread {
    pub fn start(cfg: Config) -> EngineThread {
        let r = RecordingEngine::new(cfg);
        let (tcp, http) = (r.tcp.clone(), r.http.clone());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut engine = r.engine;
                engine.connect_at_start().await.expect("connect");
                engine.run(stop_rx).await.expect("loop");
            });
        });
        EngineThread {
            tcp,
            http,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
