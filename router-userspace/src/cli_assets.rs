//! The man pages and shell completions of `task-router`, generated from its clap definitions so
//! they never drift from `--help` (the hidden `generate-assets` subcommand; `cargo xtask dist`
//! packs them into the Debian package).

use std::path::{Path, PathBuf};

/// The shells completions are written for.
const SHELLS: [clap_complete::Shell; 3] = [
    clap_complete::Shell::Bash,
    clap_complete::Shell::Zsh,
    clap_complete::Shell::Fish,
];

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("creating {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("writing the man pages into {0}")]
    Man(PathBuf, #[source] std::io::Error),
    #[error("writing the {shell} completions into {dir}")]
    Completions {
        shell: clap_complete::Shell,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `dir/man/*.1` (the command and each visible subcommand) and
/// `dir/completions/{task-router.bash,_task-router,task-router.fish}`; returns the files.
pub fn write(mut cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, AssetsError> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|e| AssetsError::CreateDir(d.clone(), e))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man).map_err(|e| AssetsError::Man(man.clone(), e))?;
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    for shell in SHELLS {
        let path =
            clap_complete::generate_to(shell, &mut cmd, &name, &completions).map_err(|source| {
                AssetsError::Completions {
                    shell,
                    dir: completions.clone(),
                    source,
                }
            })?;
        written.push(path);
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .map_err(|e| AssetsError::Man(man.clone(), e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    pages.sort();
    written.extend(pages);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> clap::Command {
        clap::Command::new("task-router")
            .about("example")
            .subcommand(clap::Command::new("run").about("serve"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn writes_a_page_per_visible_command_and_each_shell() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write(example(), dir.path()).expect("write");
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("inside")
                    .display()
                    .to_string()
            })
            .collect();
        for expected in [
            "completions/task-router.bash",
            "completions/_task-router",
            "completions/task-router.fish",
            "man/task-router.1",
            "man/task-router-run.1",
        ] {
            assert!(names.iter().any(|n| n == expected), "{names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("secret")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("man/task-router.1")).expect("page");
        assert!(page.contains(".TH task-router"), "{page}");
    }
}
