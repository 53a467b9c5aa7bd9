//! The layered raw values: command-line flags over the environment over the `--env-file`, and
//! where each effective value came from, under a variable's name or its alias. Only variables
//! task-router reads are kept; names that look like one but are none are noted
//! ([`UnknownVariable`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::env_file::parse_env_file;
use super::error::{AliasConflict, ConfigError, ConfigErrors};
use super::origin::Origin;
use super::spec::EnvVar;
use super::unknown::UnknownVariable;
use super::vars::env_var;

/// The layered raw values: flags, environment, env file.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    flags: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    file: BTreeMap<String, (String, PathBuf, usize)>,
    /// Things worth a warning (unknown keys in the env file, ...), [`Sources::unknown`]'s
    /// included.
    pub warnings: Vec<String>,
    /// Names that look like variables task-router reads but are none: warnings, errors under
    /// `--strict` ([`Sources::strict`]).
    pub unknown: Vec<UnknownVariable>,
}

/// The value a variable was given, under which of its names, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub value: &'a str,
    pub origin: Origin,
    /// The variable's name or its alias.
    pub name: &'static str,
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
            } else if let Some(unknown) = UnknownVariable::check(&name, Origin::Env) {
                sources.note(unknown);
            }
        }
        if let Some(path) = env_file {
            match std::fs::read_to_string(path) {
                Ok(text) => match parse_env_file(&text) {
                    Ok(entries) => {
                        for (line, key, value) in entries {
                            if env_var(&key).is_none() {
                                let origin = Origin::File {
                                    path: path.to_path_buf(),
                                    line,
                                };
                                match UnknownVariable::check(&key, origin) {
                                    Some(unknown) => sources.note(unknown),
                                    None => sources.warnings.push(format!(
                                        "{}:{line}: {key} is not a variable task-router reads; ignored",
                                        path.display()
                                    )),
                                }
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

    /// The value of `var` under its name or its alias (`None`: unset or empty). Both set to
    /// different values is an error naming both: which one was meant cannot be told.
    pub fn value(&self, var: &EnvVar) -> Result<Option<Found<'_>>, ConfigError> {
        let found = |name: &'static str| {
            self.get(name)
                .filter(|(v, _)| !v.trim().is_empty())
                .map(|(value, origin)| Found {
                    value,
                    origin,
                    name,
                })
        };
        let by_name = found(var.name);
        let by_alias = var.alias.and_then(found);
        match (by_name, by_alias) {
            (Some(a), Some(b)) if a.value.trim() != b.value.trim() => {
                Err(ConfigError::AliasConflict(Box::new(AliasConflict {
                    name: a.name,
                    name_value: a.value.to_string(),
                    name_origin: a.origin,
                    alias: b.name,
                    alias_value: b.value.to_string(),
                    alias_origin: b.origin,
                })))
            }
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }

    /// `--strict`: every [`UnknownVariable`] is an error.
    pub fn strict(&self) -> Result<(), ConfigErrors> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        Err(ConfigErrors(
            self.unknown
                .iter()
                .cloned()
                .map(ConfigError::Unknown)
                .collect(),
        ))
    }

    fn note(&mut self, unknown: UnknownVariable) {
        self.warnings.push(unknown.to_string());
        self.unknown.push(unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What a ClearML gateway compose file of router 2.14+ sets (clearml-docs
    /// `appgw_install_compose.md:75-87`).
    #[test]
    fn the_names_of_current_clearml_installs_are_read() {
        let s = Sources::new(
            Vec::new(),
            env(&[
                ("ROUTER__STREAM__PORT_RANGE__START", "40000"),
                ("ROUTER__STREAM__PORT_RANGE__END", "40100"),
                ("ROUTER__STREAM__EXTERNAL_URL", "router.example.com"),
                ("ROUTER__HTTP__AUTHORIZATION__COOKIE__SECURE", "false"),
            ]),
            None,
        )
        .expect("sources");
        let c = Config::from_sources(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.tcp.port_start, c.tcp.port_end), (40000, 40100));
        assert_eq!(c.tcp.router_address, "router.example.com");
        assert!(!c.auth.secure_cookie);
        let text = c.render(&s);
        assert!(
            text.contains("TCP_PORT_START=40000")
                && text.contains("# environment, as ROUTER__STREAM__PORT_RANGE__START"),
            "{text}"
        );
        assert!(s.unknown.is_empty());
    }

    #[test]
    fn a_name_and_its_alias_set_differently_are_refused_naming_both() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "TCP_PORT_START=30000").expect("write");
        let conflict = Sources::new(
            Vec::new(),
            env(&[("ROUTER__STREAM__PORT_RANGE__START", "31000")]),
            Some(file.path()),
        )
        .expect("sources");
        let e = Config::from_sources(&conflict).unwrap_err().to_string();
        assert!(
            e.contains("TCP_PORT_START=\"30000\"")
                && e.contains("ROUTER__STREAM__PORT_RANGE__START=\"31000\" (from environment)")
                && e.contains(":1)"),
            "{e}"
        );
        // The same value twice is fine.
        let same = Sources::new(
            Vec::new(),
            env(&[
                ("TCP_PORT_END", "30500"),
                ("ROUTER__STREAM__PORT_RANGE__END", " 30500"),
            ]),
            None,
        )
        .expect("sources");
        assert_eq!(Config::from_sources(&same).unwrap().tcp.port_end, 30500);
        // A bad value names the name it was given under.
        let bad = Sources::new(
            Vec::new(),
            env(&[("ROUTER__STREAM__PORT_RANGE__END", "lots")]),
            None,
        )
        .expect("sources");
        let e = Config::from_sources(&bad).unwrap_err().to_string();
        assert!(
            e.contains("ROUTER__STREAM__PORT_RANGE__END=\"lots\""),
            "{e}"
        );
    }

    #[test]
    fn router_like_names_that_are_none_are_warned_about_and_strict_refuses_them() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "TCP_PORTS_START=20000\nOTHER_TOOL=1").expect("write");
        let s = Sources::new(
            Vec::new(),
            env(&[
                ("ROUTER__STREAM__PORT_RANGE_START", "20000"),
                ("ROUTER_UNRELATED_TOOL", "x"),
            ]),
            Some(file.path()),
        )
        .expect("sources");
        let names: Vec<&str> = s.unknown.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            ["ROUTER__STREAM__PORT_RANGE_START", "TCP_PORTS_START"]
        );
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("TCP_PORTS_START")
                    && w.ends_with("did you mean TCP_PORT_START?")),
            "{:?}",
            s.warnings
        );
        assert!(s.warnings.iter().any(|w| w.contains("OTHER_TOOL")));
        let e = s.strict().unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert!(
            e.to_string()
                .contains("did you mean ROUTER__STREAM__PORT_RANGE__START"),
            "{e}"
        );
        // Not strict: read with the defaults, as before.
        assert_eq!(Config::from_sources(&s).unwrap().tcp.port_start, 30000);
    }
}
