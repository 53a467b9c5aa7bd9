//! The env-file format (`runtime.env`, `--env-file`): `KEY=value` lines, as docker compose and
//! systemd's `EnvironmentFile=` read them.

/// One `KEY=value` line of an env file: `(line number, key, value)`.
pub type EnvLine = (usize, String, String);

/// Parses the `runtime.env` format: `KEY=value` lines, `#` comments, blank lines, an optional
/// `export ` prefix, values optionally in single or double quotes (unquoted values lose a
/// trailing ` # comment`, as docker compose does). Returns `(line, key, value)`.
pub fn parse_env_file(text: &str) -> Result<Vec<EnvLine>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err((line_no, format!("expected KEY=value, found {line:?}")));
        };
        let key = key.trim();
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err((line_no, format!("{key:?} is not a variable name")));
        }
        let value = value.trim();
        let quoted = [('"', "double"), ('\'', "single")]
            .into_iter()
            .find_map(|(q, name)| Some((q, name, value.strip_prefix(q)?)));
        let value = if let Some((quote, name, rest)) = quoted {
            let Some(end) = rest.find(quote) else {
                return Err((line_no, format!("unterminated {name} quote in {key}")));
            };
            // Only a comment may follow the closing quote: `A="x" y` is a typo, not "x".
            let after = rest[end + 1..].trim_start();
            if !after.is_empty() && !after.starts_with('#') {
                return Err((
                    line_no,
                    format!(
                        "unexpected {:?} after the closing {name} quote of {key}",
                        crate::validate::truncate(after)
                    ),
                ));
            }
            rest[..end].to_string()
        } else {
            match value.find(" #") {
                Some(pos) => value[..pos].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        out.push((line_no, key.to_string(), value));
    }
    Ok(out)
}
