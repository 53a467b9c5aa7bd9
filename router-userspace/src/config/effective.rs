//! The effective configuration as `check-config` prints it: every variable's value in its own
//! spelling (secrets masked) and where it came from (and under which alias).

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
        for (var, (name, value)) in ENV_VARS.iter().zip(effective) {
            let line = format!("{name}={value}");
            let origin = match sources.value(var) {
                Ok(Some(found)) if found.name != var.name => {
                    format!("{}, as {}", found.origin, found.name)
                }
                _ => sources.origin(name).to_string(),
            };
            out.push_str(&format!("{line:<width$}# {origin}\n", width = width));
        }
        out
    }
}
