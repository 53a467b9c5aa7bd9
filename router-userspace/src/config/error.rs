//! What is wrong with a configuration: each problem names the variable (and, from a file, the
//! line); [`ConfigErrors`] holds them all, so one run of `check-config` shows every one.

use std::fmt;
use std::path::PathBuf;

use super::origin::Origin;
use super::unknown::UnknownVariable;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} (from {origin}) is invalid: expected {expected}")]
    Invalid {
        var: &'static str,
        /// The offending value, masked for secrets.
        value: String,
        origin: Origin,
        expected: String,
    },
    #[error("{var} is required: {why}")]
    Missing { var: &'static str, why: String },
    #[error("{what}")]
    Conflict { what: String },
    #[error("{name} is not a variable task-router reads (see `task-router check-config --help`)")]
    UnknownVariable { name: String },
    /// A router-like name that is no variable, refused under `--strict`.
    #[error("{0}")]
    Unknown(UnknownVariable),
    #[error("{0}")]
    AliasConflict(Box<AliasConflict>),
    #[error("cannot read the env file {}", path.display())]
    EnvFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    EnvFileSyntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// A variable and its alias set to different values: which one was meant cannot be told.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name}={name_value:?} (from {name_origin}) and its alias {alias}={alias_value:?} \
     (from {alias_origin}) differ: set one of them"
)]
pub struct AliasConflict {
    pub name: &'static str,
    pub name_value: String,
    pub name_origin: Origin,
    pub alias: &'static str,
    pub alias_value: String,
    pub alias_origin: Origin,
}

/// Every problem found, so one run of `check-config` shows them all.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for e in &self.0 {
            write!(f, "\n  - {}", crate::error::error_chain(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
