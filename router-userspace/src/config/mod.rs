//! The daemon's configuration: ClearML router names and meanings (`runtime.env`), plus
//! task-router's own `ROUTER_*` additions. Sections are plain structs each owner takes by
//! reference (`sections.rs`); every variable is declared once in `vars.rs` (name, default, help,
//! parser, field), and the reader (`reader.rs`), `--help` and `docs/configuration.md`
//! (`docs.rs`) and `check-config`'s view (`effective.rs`) are made from that list.
//!
//! Precedence: CLI flags > real environment variables > the `--env-file` > defaults. A value set
//! (even empty) in a higher layer wins; an empty value means "unset, use the default"
//! (`sources.rs`). Loading reads every variable, then checks them against each other
//! (`check.rs`); every problem is reported at once ([`ConfigErrors`]).

mod check;
pub mod docs;
mod effective;
mod env_file;
mod error;
mod origin;
mod parse;
mod reader;
mod sections;
pub mod show;
mod sources;
mod spec;
mod unknown;
mod vars;

pub use crate::datapath::options::{DatapathConfig, DatapathKind, attach_mode_name};
pub use env_file::{EnvLine, parse_env_file};
pub use error::{ConfigError, ConfigErrors};
pub use origin::Origin;
pub use parse::{
    is_host_name, is_router_name, parse_duration, parse_http_url, parse_interface, split_list,
};
pub use sections::{
    AdminConfig, AuthConfig, ClearmlConfig, Config, DEFAULT_ALLOWED_UPSTREAMS,
    DEFAULT_MAX_ENDPOINTS_PER_TASK, HttpConfig, KeyForm, NginxConfig, RouterConfig, TcpConfig,
};
pub use show::mask;
pub use sources::{Found, Sources};
pub use spec::{EnvVar, Section};
pub use unknown::{ROUTER_LIKE_PREFIXES, UnknownVariable};
pub use vars::{ENV_VARS, env_var};

use std::path::Path;

impl Config {
    /// Reads the configuration from the process environment, `env_file` and CLI `flags`
    /// (`(VARIABLE, value)` pairs). Returns the config and the warnings worth logging.
    pub fn load(
        flags: Vec<(String, String)>,
        env_file: Option<&Path>,
    ) -> Result<(Config, Sources), ConfigErrors> {
        let sources = Sources::from_process(flags, env_file)?;
        let config = Config::from_sources(&sources)?;
        config.check_host_ephemeral(crate::host_ephemeral::read())?;
        Ok((config, sources))
    }

    /// Parses and validates every variable from `sources`; all problems are reported at once:
    /// refused values in the order of [`ENV_VARS`], then what the values require of each other.
    pub fn from_sources(sources: &Sources) -> Result<Config, ConfigErrors> {
        let (config, read) = reader::read(sources);
        let conflicts = check::cross_checks(&config, &read);
        let mut errors = read.errors;
        errors.extend(conflicts);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// The checks against the host this runs on: NAT source ports outside its ephemeral range
    /// (`host`, as read; unreadable, the datapath names the failure when it opens).
    pub fn check_host_ephemeral(
        &self,
        host: Result<crate::host_ephemeral::PortRange, crate::host_ephemeral::HostEphemeralError>,
    ) -> Result<(), ConfigErrors> {
        let Ok(host) = host else {
            return Ok(());
        };
        match check::nat_ports_outside_host_ephemeral(self, host) {
            Some(conflict) => Err(ConfigErrors(vec![conflict])),
            None => Ok(()),
        }
    }
}

/// The documented defaults: what is read when no variable is set (`ROUTER_NAME` and
/// `ROUTER_URL` from the host name). The cross-checks do not apply; the defaults pass them.
impl Default for Config {
    fn default() -> Config {
        reader::read(&Sources::default()).0
    }
}

macro_rules! default_section {
    ($($section:ident: $type:ty),+ $(,)?) => {
        $(
            /// The documented defaults (see [`Config::default`]).
            impl Default for $type {
                fn default() -> Self {
                    Config::default().$section
                }
            }
        )+
    };
}

default_section!(
    clearml: ClearmlConfig,
    router: RouterConfig,
    tcp: TcpConfig,
    datapath: DatapathConfig,
    http: HttpConfig,
    auth: AuthConfig,
    nginx: NginxConfig,
    admin: AdminConfig,
);

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
