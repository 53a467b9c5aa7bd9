//! `ROUTER_STATE_DIR` full, then read-only, under the sync engine (recording route owners, the
//! ClearML test server): a small tmpfs the test mounts and unmounts on drop.
//!
//! Expected: routes keep being applied (new tasks are routed and written back: the ports live on
//! the tasks too); the failure is reported (`status.state_error`, a `degraded` reason, logged
//! once); `ports.json` and `routes.json` are never torn — they stay the last good, parseable
//! version and no temporary file is left behind; when space (or write access) returns, the
//! next cycle saves the current state.

use router_tests::clearml_server::{ClearmlServer, TaskSpec};
use router_tests::engine::{RecordingEngine, clearml_config};
use router_tests::require_root;
use router_userspace::config::Config;
use router_userspace::daemon::CycleOutcome;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory; unmounted (lazily, so a failing test cannot
/// leave it behind busy) and removed on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("task-router-statefs-")
            .tempdir()
            .expect("mount point");
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { _dir: dir, path }
    }

    fn remount(&self, opt: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount {opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let block = vec![0u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    let _ = f.sync_all();
    path
}

fn config(server: &ClearmlServer, state: &Path) -> Config {
    clearml_config(
        server,
        state,
        &[
            ("TCP_ROUTER_ADDRESS", "203.0.113.7"),
            ("TCP_PORT_START", "30000"),
            ("TCP_PORT_END", "30099"),
            ("ROUTER_NAME", "edge-state"),
            ("ROUTER_API_TIMEOUT", "3s"),
        ],
    )
}

fn task(server: &ClearmlServer, i: u32) -> String {
    server.admin().create_task(
        TaskSpec::new(&format!("t{i}"))
            .status("in_progress")
            .system_tags(&["external_service"])
            .runtime(json!({"_SERVICE": "EXTERNAL_TCP",
                            "external_address": format!("10.30.0.{}", 10 + i),
                            "external_tcp_port": 22})),
    )
}

/// The assignments in `ports.json` (it must parse: a torn file fails here).
fn assigned(state: &Path) -> usize {
    let text = std::fs::read(state.join("ports.json")).expect("ports.json exists");
    let v: Value = serde_json::from_slice(&text).expect("ports.json is whole JSON");
    v["assigned"].as_array().map(Vec::len).expect("assigned")
}

fn routes_saved(state: &Path) -> usize {
    let text = std::fs::read(state.join("routes.json")).expect("routes.json exists");
    let v: Value = serde_json::from_slice(&text).expect("routes.json is whole JSON");
    v["tcp"].as_array().map(Vec::len).expect("tcp")
}

fn temp_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state)
        .expect("read state dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[tokio::test]
async fn a_full_or_read_only_state_dir_never_stops_forwarding_nor_tears_the_state() {
    require_root();
    let fs = Tmpfs::mount("256k");
    let state = fs.path.join("state");
    let server = ClearmlServer::start().expect("server");
    for i in 0..2 {
        task(&server, i);
    }
    let RecordingEngine {
        mut engine,
        tcp,
        status,
        ..
    } = RecordingEngine::start(config(&server, &state)).await;
    assert_eq!(engine.cycle().await, CycleOutcome::Synced);
    assert_eq!((assigned(&state), routes_saved(&state)), (2, 2));

    // Full: three more tasks ask for routes.
    let filler = fill(&fs.path);
    let late: Vec<String> = (2..5).map(|i| task(&server, i)).collect();
    assert_eq!(engine.cycle().await, CycleOutcome::Synced);
    assert_eq!(tcp.programmed().len(), 5, "new routes are applied");
    for id in &late {
        assert!(
            server.admin().runtime(id)["external_tcp_port"].as_u64() >= Some(30000),
            "written back while the disk is full"
        );
    }
    {
        let s = status.read().expect("status");
        let err = s.state_error.clone().expect("the save failure is reported");
        assert!(err.contains("No space left"), "{err}");
        assert!(s.ready);
        assert!(
            s.degraded.iter().any(|d| d.starts_with("state not saved")),
            "{:?}",
            s.degraded
        );
    }
    assert_eq!(
        (assigned(&state), routes_saved(&state)),
        (2, 2),
        "the last good state stays whole"
    );
    assert_eq!(temp_files(&state), Vec::<String>::new());

    // Space returns: the next cycle saves everything.
    std::fs::remove_file(&filler).expect("remove filler");
    engine.cycle().await;
    assert_eq!((assigned(&state), routes_saved(&state)), (5, 5));
    assert!(status.read().expect("status").state_error.is_none());

    // Read-only: the same story.
    fs.remount("ro");
    let more = task(&server, 5);
    engine.cycle().await;
    assert_eq!(tcp.programmed().len(), 6);
    assert!(server.admin().runtime(&more)["_ROUTER_NAME"] == json!("edge-state"));
    let err = status
        .read()
        .expect("status")
        .state_error
        .clone()
        .expect("reported");
    assert!(err.contains("Read-only"), "{err}");
    assert_eq!((assigned(&state), routes_saved(&state)), (5, 5));
    fs.remount("rw");
    engine.cycle().await;
    assert_eq!((assigned(&state), routes_saved(&state)), (6, 6));
    assert!(status.read().expect("status").state_error.is_none());
    assert_eq!(temp_files(&state), Vec::<String>::new());
}
