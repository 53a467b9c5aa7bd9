//! Removing what the daemon generated for nginx (`task-router uninstall`).

use crate::config::NginxConfig;

use super::command::{self, COMMAND_TIMEOUT};
use super::error::{NginxError, io};
use super::files::Slot;
use super::managed;

/// `task-router uninstall`'s nginx part: removes the generated files from `NGINX_CONF_DIR`
/// (and, for a managed nginx, stops it and removes its main file, PID file, log and temp
/// directory; the directory too when that leaves it empty); an external nginx is tested and
/// reloaded without them. Returns what it did, one line each. Idempotent.
pub fn uninstall(cfg: &NginxConfig) -> Result<Vec<String>, NginxError> {
    let dir = &cfg.conf_dir;
    let mut done = Vec::new();
    if cfg.managed {
        done.extend(managed::uninstall(&cfg.binary, dir, COMMAND_TIMEOUT)?);
    }
    let mut removed_slot = false;
    for slot in [Slot::Http, Slot::Stream] {
        let name = slot.file_name();
        for path in [
            dir.join(name),
            dir.join(format!(".{name}.tmp")),
            dir.join(format!(".{name}.prev")),
        ] {
            if path.exists() {
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                done.push(format!("removed {}", path.display()));
                removed_slot = true;
            }
        }
    }
    if cfg.managed {
        if std::fs::remove_dir(dir).is_ok() {
            done.push(format!("removed {}", dir.display()));
        }
    } else if removed_slot {
        // The nginx that included them must let go of them now, not at its next reload.
        for (what, cmd) in [("test", &cfg.test_cmd), ("reload", &cfg.reload_cmd)] {
            match command::run(command::shell(cmd), COMMAND_TIMEOUT) {
                Ok(f) if f.status.success() => {}
                Ok(f) => {
                    return Err(NginxError::Reload {
                        slot: "uninstall",
                        error: format!(
                            "the {what} command `{cmd}` failed ({}) without task-router's files \
                             (does nginx.conf include them by name?): {}",
                            f.status, f.output
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        done.push(format!("reloaded nginx with `{}`", cfg.reload_cmd));
    }
    Ok(done)
}
