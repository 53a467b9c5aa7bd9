//! Running nginx and the operator's test/reload commands with a deadline: a hung
//! `docker exec` must not stall route changes forever.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished command said.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// stdout and stderr, trimmed, at most the last few KiB.
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start `{shown}`")]
    Spawn {
        shown: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{shown}` did not finish within {timeout:?} and was killed")]
    Timeout { shown: String, timeout: Duration },
    #[error("waiting for `{shown}`")]
    Wait {
        shown: String,
        #[source]
        source: std::io::Error,
    },
}

/// How long `nginx -t` or the operator's test and reload commands may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

const KEEP_OUTPUT: usize = 4096;
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Runs `cmd` in its own process group, collecting its output; kills the group on timeout.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Finished, CommandError> {
    let shown = show(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            shown: shown.clone(),
            source,
        })?;
    // Readers on their own threads so a chatty command never blocks on a full pipe.
    let readers: Vec<std::sync::mpsc::Receiver<Vec<u8>>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(CommandError::Timeout { shown, timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => return Err(CommandError::Wait { shown, source }),
        }
    };
    // A daemonising child (nginx itself) may hold the pipes a moment after the command exits.
    let mut output = Vec::new();
    for r in readers {
        if let Ok(buf) = r.recv_timeout(PIPE_GRACE) {
            output.extend_from_slice(&buf);
        }
    }
    let text = String::from_utf8_lossy(&output);
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(KEEP_OUTPUT)
        .map_or(0, |(i, _)| i);
    Ok(Finished {
        status,
        output: text[start..].to_string(),
    })
}

/// `sh -c <line>`: how `NGINX_RELOAD_CMD` and `NGINX_TEST_CMD` run.
pub fn shell(line: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(line);
    cmd
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_status() {
        let f = run(
            shell("echo out; echo err >&2; exit 3"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(f.status.code(), Some(3));
        assert!(f.output.contains("out") && f.output.contains("err"));
    }

    #[test]
    fn kills_a_command_that_hangs() {
        let started = Instant::now();
        let e = run(shell("sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, CommandError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
