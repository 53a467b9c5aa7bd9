//! The variable tables made from the declarations: the list under `run --help` (and the other
//! subcommands that read the configuration) and `docs/configuration.md`.

use super::spec::Section;
use super::vars::ENV_VARS;

/// The list of variables `--help` shows after a subcommand's flags.
pub fn help_table() -> String {
    let mut out = String::from("Variables (default in brackets):\n");
    for v in ENV_VARS {
        let default = if v.default.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.default)
        };
        let alias = v
            .alias
            .map(|a| format!("\n      also read as {a}"))
            .unwrap_or_default();
        out.push_str(&format!("  {}{default}\n      {}{alias}\n", v.name, v.help));
    }
    out
}

/// `docs/configuration.md`: one table per section.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration variables\n\n\
         <!-- Generated from router-userspace/src/config/vars.rs by config::docs::markdown; \
         regenerate with `TASK_ROUTER_WRITE_DOCS=1 cargo test -p router-userspace --lib \
         config::docs`. -->\n\n\
         Every variable `task-router` reads. Command-line flags win over the environment, which \
         wins over `--env-file`; an empty value means the default. `task-router check-config` \
         prints the effective values with where each comes from; \
         `deploy/runtime.env.example` is the file to start from.\n",
    );
    for section in Section::ALL {
        let vars: Vec<_> = ENV_VARS.iter().filter(|v| v.section == section).collect();
        if vars.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n## {}\n\n| Variable | Default | Meaning |\n|---|---|---|\n",
            section.title()
        ));
        for v in vars {
            let default = if v.default.is_empty() {
                String::new()
            } else {
                format!("`{}`", v.default)
            };
            let secret = if v.secret {
                " (secret: masked in all output)"
            } else {
                ""
            };
            let alias = v
                .alias
                .map(|a| {
                    format!(
                        " Also read as `{a}` (ClearML's router since 2.14); both set to different \
                         values is an error."
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "| `{}` | {default} | {}{secret}{alias} |\n",
                v.name,
                cell(v.help)
            ));
        }
    }
    out
}

/// `text` safe in a table cell: no column separator, no HTML tag.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_table_is_made_from_the_declarations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let want = markdown();
        if std::env::var_os("TASK_ROUTER_WRITE_DOCS").is_some() {
            std::fs::write(path, &want).expect("write docs/configuration.md");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/configuration.md is not the table of the declared variables: regenerate it \
             with `TASK_ROUTER_WRITE_DOCS=1 cargo test -p router-userspace --lib config::docs`"
        );
    }

    #[test]
    fn every_variable_is_in_one_docs_section_and_the_help() {
        let (docs, help) = (markdown(), help_table());
        for v in ENV_VARS {
            assert_eq!(
                docs.matches(&format!("| `{}` |", v.name)).count(),
                1,
                "{}",
                v.name
            );
            assert!(help.contains(&format!("  {}", v.name)), "{}", v.name);
            if let Some(alias) = v.alias {
                assert!(docs.contains(&format!("`{alias}`")), "{alias}");
                assert!(help.contains(&format!("also read as {alias}")), "{alias}");
            }
        }
    }
}
