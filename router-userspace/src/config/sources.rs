//! The layered raw values: command-line flags over the environment over the `--env-file`, and
//! where each effective value came from. Only variables task-router reads are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::env_file::parse_env_file;
use super::error::{ConfigError, ConfigErrors};
use super::origin::Origin;
use super::vars::env_var;

/// The layered raw values: flags, environment, env file.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    flags: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    file: BTreeMap<String, (String, PathBuf, usize)>,
    /// Things worth a warning (unknown keys in the env file, ...).
    pub warnings: Vec<String>,
}

impl Sources {
    /// Sources from the real process environment and an optional env file.
    pub fn from_process(
        flags: Vec<(String, String)>,
        env_file: Option<&Path>,
    ) -> Result<Sources, ConfigErrors> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect::<Vec<_>>();
        Sources::new(flags, env, env_file)
    }

    /// Sources from explicit parts: `flags` win over `env`, which wins over the file's lines.
    /// Only variables of [`super::vars::ENV_VARS`] are taken from `env`; unknown flag names are errors.
    pub fn new(
        flags: Vec<(String, String)>,
        env: impl IntoIterator<Item = (String, String)>,
        env_file: Option<&Path>,
    ) -> Result<Sources, ConfigErrors> {
        let mut sources = Sources::default();
        let mut errors = Vec::new();
        for (name, value) in flags {
            if env_var(&name).is_none() {
                errors.push(ConfigError::UnknownVariable { name });
                continue;
            }
            sources.flags.insert(name, value);
        }
        for (name, value) in env {
            if env_var(&name).is_some() {
                sources.env.insert(name, value);
            }
        }
        if let Some(path) = env_file {
            match std::fs::read_to_string(path) {
                Ok(text) => match parse_env_file(&text) {
                    Ok(entries) => {
                        for (line, key, value) in entries {
                            if env_var(&key).is_none() {
                                sources.warnings.push(format!(
                                    "{}:{line}: {key} is not a variable task-router reads; ignored",
                                    path.display()
                                ));
                                continue;
                            }
                            sources.file.insert(key, (value, path.to_path_buf(), line));
                        }
                    }
                    Err((line, reason)) => errors.push(ConfigError::EnvFileSyntax {
                        path: path.to_path_buf(),
                        line,
                        reason,
                    }),
                },
                Err(source) => errors.push(ConfigError::EnvFileRead {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        if errors.is_empty() {
            Ok(sources)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The value of `name` and its origin; `None` when no layer sets it.
    pub fn get(&self, name: &str) -> Option<(&str, Origin)> {
        if let Some(v) = self.flags.get(name) {
            return Some((v, Origin::Flag));
        }
        if let Some(v) = self.env.get(name) {
            return Some((v, Origin::Env));
        }
        self.file.get(name).map(|(v, path, line)| {
            (
                v.as_str(),
                Origin::File {
                    path: path.clone(),
                    line: *line,
                },
            )
        })
    }

    /// Where the effective value of `name` comes from: an empty value counts as the default.
    pub fn origin(&self, name: &str) -> Origin {
        match self.get(name) {
            Some((v, origin)) if !v.trim().is_empty() => origin,
            _ => Origin::Default,
        }
    }
}
