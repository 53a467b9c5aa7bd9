//! The DNS label of an endpoint's route in subdomain mode (its HTTP key is the endpoint id's
//! `Display`: `task` or `task__name`).

/// The DNS label of a subdomain-mode endpoint: `task` or `task--name`.
pub fn subdomain_label(task_id: &str, name: &str) -> Result<String, String> {
    let label = if name.is_empty() {
        task_id.to_ascii_lowercase()
    } else {
        format!("{}--{}", task_id, name).to_ascii_lowercase()
    };
    if label.len() > 63
        || label.starts_with('-')
        || label.ends_with('-')
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "{label:?} cannot be a DNS label (subdomain mode needs 1-63 of a-z 0-9 -)"
        ));
    }
    Ok(label)
}
