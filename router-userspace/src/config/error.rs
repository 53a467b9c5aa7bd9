//! What is wrong with a configuration: each problem names the variable (and, from a file, the
//! line); [`ConfigErrors`] holds them all, so one run of `check-config` shows every one.

use std::fmt;
use std::path::PathBuf;

use super::origin::Origin;

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
