//! The effective configuration as `check-config` prints it: every variable's value in its own
//! spelling (secrets masked) and where it came from.

use super::sections::Config;
use super::sources::Sources;
use super::vars::ENV_VARS;

impl Config {
    /// The effective value of every variable, as `check-config` shows it (secrets masked).
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        ENV_VARS
            .iter()
            .map(|var| (var.name, (var.field.show)(self)))
            .collect()
    }

    /// `NAME=value  # origin` lines for `check-config`.
    pub fn render(&self, sources: &Sources) -> String {
        let effective = self.effective();
        let width = effective
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .max()
            .unwrap_or(0)
            + 2;
        let mut out = String::new();
        for (name, value) in effective {
            let line = format!("{name}={value}");
            out.push_str(&format!(
                "{line:<width$}# {}\n",
                sources.origin(name),
                width = width
            ));
        }
        out
    }
}
