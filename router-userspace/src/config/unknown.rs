//! Names that look like task-router's but are none (a typo, or a variable of another router
//! version): a warning naming the closest known variable, an error with `--strict`. Which
//! names count: those with a router-like prefix in the env file, and ClearML router style
//! `ROUTER__*` names in the environment (other environment variables are none of our business).

use std::fmt;

use super::origin::Origin;
use super::vars::ENV_VARS;

/// Prefixes of the variables task-router (and ClearML's router) read.
pub const ROUTER_LIKE_PREFIXES: &[&str] = &["ROUTER_", "TCP_", "AUTH_", "CLEARML_API_"];

/// A name in the environment or env file that task-router does not read but probably should.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    pub origin: Origin,
    /// The closest variable name (or alias) task-router reads.
    pub closest: &'static str,
}

impl fmt::Display for UnknownVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (from {}) is not a variable task-router reads; did you mean {}",
            self.name, self.origin, self.closest
        )?;
        if let Some(var) = ENV_VARS.iter().find(|v| v.alias == Some(self.closest)) {
            write!(f, " (an alias of {})", var.name)?;
        }
        f.write_str("?")
    }
}

impl UnknownVariable {
    /// `name` from `origin`, if it looks like one of ours.
    pub fn check(name: &str, origin: Origin) -> Option<UnknownVariable> {
        let ours = match origin {
            Origin::Env => name.starts_with("ROUTER__"),
            _ => ROUTER_LIKE_PREFIXES.iter().any(|p| name.starts_with(p)),
        };
        ours.then(|| UnknownVariable {
            name: name.to_string(),
            origin,
            closest: closest(name),
        })
    }
}

/// The variable name or alias nearest to `name` (edit distance, ties to the first declared).
pub fn closest(name: &str) -> &'static str {
    ENV_VARS
        .iter()
        .flat_map(|v| std::iter::once(v.name).chain(v.alias))
        .min_by_key(|known| edit_distance(name, known))
        .unwrap_or("")
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_variable_is_named() {
        assert_eq!(closest("TCP_PORTS_START"), "TCP_PORT_START");
        assert_eq!(
            closest("ROUTER__STREAM__PORT_RANGE_END"),
            "ROUTER__STREAM__PORT_RANGE__END"
        );
        assert_eq!(closest("AUTH_COOKIE"), "AUTH_COOKIE_NAME");
        assert_eq!(closest("CLEARML_API_SECRET"), "CLEARML_API_SECRET_KEY");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn only_router_like_names_are_flagged() {
        let file = || Origin::File {
            path: "runtime.env".into(),
            line: 3,
        };
        let u = UnknownVariable::check("TCP_PORT_STRT", file()).expect("flagged");
        assert_eq!(
            u.to_string(),
            "TCP_PORT_STRT (from runtime.env:3) is not a variable task-router reads; did you mean TCP_PORT_START?"
        );
        let u = UnknownVariable::check("ROUTER__STREAM__PORT_RANGE__STRT", Origin::Env).unwrap();
        assert!(
            u.to_string().ends_with("(an alias of TCP_PORT_START)?"),
            "{u}"
        );
        assert!(UnknownVariable::check("HOME", file()).is_none());
        // In the environment only ClearML router style names: ROUTER_* is too common there.
        assert!(UnknownVariable::check("ROUTER_FOO", Origin::Env).is_none());
        assert!(UnknownVariable::check("AUTH_TOKEN", Origin::Env).is_none());
    }
}
