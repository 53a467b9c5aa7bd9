//! Property tests of the configuration parsers against untrusted text: the env file
//! (`runtime.env`) and every variable's value. No input panics; a bad one is an error naming
//! the line or the variable; valid files parse back to what was written.

use super::*;
use crate::proptest_config as config;
use proptest::prelude::*;

/// How a generated `KEY=value` line is written.
#[derive(Clone, Debug)]
enum Style {
    Plain,
    Double,
    Single,
}

fn env_entry() -> impl Strategy<Value = (String, String, Style, bool, String)> {
    let key = "[A-Za-z_][A-Za-z0-9_]{0,24}";
    let plain =
        "([A-Za-z0-9_./:=,@+é日-]([A-Za-z0-9_./:=,@+é日 -]{0,28}[A-Za-z0-9_./:=,@+é日-])?)?";
    let double = "[^\"\n\r]{0,30}";
    let single = "[^'\n\r]{0,30}";
    (
        key,
        prop_oneof![
            plain.prop_map(|v| (v, Style::Plain)),
            double.prop_map(|v| (v, Style::Double)),
            single.prop_map(|v| (v, Style::Single)),
        ],
        any::<bool>(),
        // What follows on other lines: nothing, a comment, blank lines.
        prop_oneof![
            Just(String::new()),
            Just("# a comment".to_string()),
            Just("\n  \t".to_string())
        ],
    )
        .prop_map(|(k, (v, style), export, extra)| (k, v, style, export, extra))
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary text: parsed or refused with a line number inside the text and a reason.
    #[test]
    fn env_file_never_panics_and_errors_name_the_line(text in "(?s).{0,400}") {
        match parse_env_file(&text) {
            Ok(lines) => {
                for (line, key, _) in lines {
                    prop_assert!(line >= 1 && line <= text.lines().count());
                    prop_assert!(!key.is_empty());
                }
            }
            Err((line, reason)) => {
                prop_assert!(line >= 1 && line <= text.lines().count(), "line {line}");
                prop_assert!(!reason.is_empty());
                // The line named is one with content: not blank, not a comment.
                let named = text.lines().nth(line - 1).unwrap_or_default().trim();
                prop_assert!(!named.is_empty() && !named.starts_with('#'), "line {line}: {named:?}");
            }
        }
    }

    /// Structure-aware: mutations of a valid file (a byte replaced by one of the characters
    /// the format gives meaning to) parse or fail with a line, never panic.
    #[test]
    fn mutated_env_files_never_panic(
        entries in prop::collection::vec(env_entry(), 1..8),
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(vec!['"', '\'', '=', '#', ' ', '\n', '\r', '\0', 'é', '\u{feff}']),
    ) {
        let mut text = String::new();
        for (k, v, _, _, _) in &entries {
            text.push_str(&format!("{k}=\"{v}\"\n"));
        }
        let mut chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len());
        chars[i] = with;
        let text: String = chars.into_iter().collect();
        if let Err((line, reason)) = parse_env_file(&text) {
            prop_assert!(line >= 1 && line <= text.lines().count().max(1));
            prop_assert!(!reason.is_empty());
        }
    }

    /// Valid files parse back to what was written, with their line numbers.
    #[test]
    fn env_file_round_trips(entries in prop::collection::vec(env_entry(), 0..10)) {
        let mut text = String::new();
        let mut want = Vec::new();
        let mut line = 0;
        for (key, value, style, export, extra) in &entries {
            let written = match style {
                Style::Plain => value.clone(),
                Style::Double => format!("\"{value}\""),
                Style::Single => format!("'{value}'"),
            };
            let prefix = if *export { "export " } else { "" };
            text.push_str(&format!("{prefix}{key} = {written}\n"));
            line += 1;
            want.push((line, key.clone(), value.clone()));
            if !extra.is_empty() {
                text.push_str(extra);
                text.push('\n');
                line += extra.lines().count().max(1);
            }
        }
        let got = parse_env_file(&text);
        prop_assert_eq!(got, Ok(want), "text:\n{}", text);
    }

    /// Any value for any variable: a configuration, or errors that each name what was wrong
    /// (an invalid value names its variable).
    #[test]
    fn any_variable_value_is_parsed_or_refused_by_name(
        values in prop::collection::vec(
            (
                prop::sample::select(ENV_VARS.iter().map(|v| v.name).collect::<Vec<_>>()),
                prop_oneof![
                    "(?s).{0,60}",
                    "[0-9]{1,12}",
                    "-?[0-9]{0,5}(\\.[0-9]{0,3})?(ms|s|m|h|d|)",
                    "(https?|ftp)://[a-z0-9.\\[\\]:@/-]{0,30}",
                    "([0-9]{1,3}\\.){3}[0-9]{1,3}(/[0-9]{1,2})?(,[0-9./]{0,18}){0,2}",
                    "[a-z0-9]{1,17}(:(tc|xdp|auto|x))?",
                    "(true|false|yes|0|1|TRUE|maybe|)",
                    "[a-z=,:/_.]{0,40}",
                ],
            ),
            0..12,
        ),
    ) {
        let flags: Vec<(String, String)> =
            values.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let sources = Sources::new(flags, Vec::<(String, String)>::new(), None)
            .map_err(|e| TestCaseError::fail(format!("known variables refused: {e}")))?;
        if let Err(errors) = Config::from_sources(&sources) {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                let text = e.to_string();
                prop_assert!(!text.trim().is_empty());
                if let ConfigError::Invalid { var, .. } = e {
                    prop_assert!(text.contains(var), "{text}");
                }
            }
            prop_assert!(errors.to_string().starts_with("invalid configuration"));
        }
    }
}

#[test]
fn env_file_edge_cases_are_errors_or_values() {
    for (text, want) in [
        ("A=\"unterminated", Err(1)),
        ("\n\nA='x", Err(3)),
        ("=value", Err(1)),
        ("1A=x", Err(1)),
        ("A B=x", Err(1)),
        ("export", Err(1)),
        ("\u{feff}A=x", Err(1)),
        ("A=x # c", Ok("x")),
        ("A=x#c", Ok("x#c")),
        ("A=\"x\" trailing", Err(1)),
        ("A='x'#c", Ok("x")),
        ("A==", Ok("=")),
        ("A=é日本", Ok("é日本")),
    ] {
        match (parse_env_file(text), want) {
            (Ok(lines), Ok(v)) => assert_eq!(lines[0].2, v, "{text:?}"),
            (Err((line, reason)), Err(l)) => {
                assert_eq!(line, l, "{text:?}: {reason}");
                assert!(!reason.is_empty());
            }
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }
}
