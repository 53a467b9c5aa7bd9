//! What declaring a variable takes: [`EnvVar`] (name, default, help, section, what a valid value
//! looks like) and its [`Field`] (how a value is parsed into the configuration and shown back).
//! The declarations themselves are in [`super::vars`].

use std::fmt;

use super::parse::Parsed;
use super::sections::Config;

/// One variable the daemon reads.
#[derive(Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    /// The value used when the variable is unset or empty; `""` = none (or computed, see help).
    pub default: &'static str,
    pub help: &'static str,
    /// Masked wherever the configuration is shown.
    pub secret: bool,
    /// Another name read for this variable: what ClearML's own router reads since 2.14
    /// (clearml-docs fd0cc96b, `appgw_install_compose.md:75-87`). Set both to different
    /// values and the configuration is refused, naming both.
    pub alias: Option<&'static str>,
    /// Where the documentation lists it.
    pub section: Section,
    /// What a valid value looks like, as an error names it.
    pub expected: &'static str,
    pub(super) field: Field,
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("default", &self.default)
            .field("secret", &self.secret)
            .field("alias", &self.alias)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

/// Where a variable's value lives in [`Config`].
#[derive(Clone, Copy)]
pub(super) struct Field {
    /// Parses a (trimmed, non-empty or default) value and stores it.
    pub read: fn(&mut Config, &str) -> Parsed<()>,
    /// The stored value as the variable would spell it (secrets masked).
    pub show: fn(&Config) -> String,
}

/// The [`Field`] at `cfg.<path>`, parsed by `parse` and shown by its [`super::show::Shown`]
/// spelling, or by `show` when given.
macro_rules! field {
    ($($path:ident).+, $parse:expr) => {
        field!($($path).+, $parse, $crate::config::show::Shown::shown)
    };
    ($($path:ident).+, $parse:expr, $show:expr) => {
        $crate::config::spec::Field {
            read: |cfg, s| {
                cfg.$($path).+ = ($parse)(s)?;
                Ok(())
            },
            show: |cfg| ($show)(&cfg.$($path).+),
        }
    };
}
pub(super) use field;

/// The groups the documentation lists variables in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Clearml,
    Router,
    Tcp,
    Datapath,
    Http,
    Auth,
    Nginx,
    Admin,
    Daemon,
}

impl Section {
    pub const ALL: [Section; 9] = [
        Section::Clearml,
        Section::Router,
        Section::Tcp,
        Section::Datapath,
        Section::Http,
        Section::Auth,
        Section::Nginx,
        Section::Admin,
        Section::Daemon,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Section::Clearml => "ClearML",
            Section::Router => "This router",
            Section::Tcp => "TCP routes",
            Section::Datapath => "TCP datapath",
            Section::Http => "HTTP routes",
            Section::Auth => "Authentication of HTTP routes",
            Section::Nginx => "nginx",
            Section::Admin => "Admin endpoint",
            Section::Daemon => "The daemon",
        }
    }
}
