//! `EXTRA_BASH_COMMAND`: one shell command run with `bash -c` before the daemon starts (after
//! the instance locks, before the admin endpoint and the owners open).

use crate::config::Config;
use anyhow::{Context, Result, bail};

/// Runs `EXTRA_BASH_COMMAND` once; its failure stops start-up with its output.
pub fn run_extra_command(cfg: &Config) -> Result<()> {
    let Some(cmd) = &cfg.extra_bash_command else {
        return Ok(());
    };
    tracing::info!(command = %cmd, "running EXTRA_BASH_COMMAND");
    let out = std::process::Command::new("bash")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run EXTRA_BASH_COMMAND with bash")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "EXTRA_BASH_COMMAND failed ({}); its output:\n{}",
            out.status,
            text.trim_end()
        );
    }
    for line in text.lines() {
        tracing::info!(output = line, "EXTRA_BASH_COMMAND");
    }
    Ok(())
}
