//! The key of an endpoint's HTTP route (in `/service/{key}/`, the nginx names and, in subdomain
//! mode, the DNS label) derived from the endpoint the task asked for. The SDK takes any endpoint
//! name (`str(endpoint_name)`), while URLs and nginx names take `[A-Za-z0-9_-]` only: a name
//! that fits stays as it is (`task__name`, the URLs routers always wrote), any other gets a
//! readable part and a short hash of the exact name (`task__my-app-1a2b3c4d`), so two names
//! never share a key by being spelled alike. The endpoint keeps the user's name everywhere else
//! (runtime keys, status, logs).

use crate::routes::HttpMode;
use crate::validate;

/// The longest DNS label.
const MAX_LABEL: usize = 63;
/// The readable part of a derived key, at most.
const MAX_READABLE: usize = 20;
/// Hex digits of the hash in a derived key.
const HASH_DIGITS: usize = 8;

/// The route key of endpoint `name` (`""` = the default endpoint) of task `task_id` in `mode`.
/// Path mode always has one (the task id is already checked); subdomain mode refuses what
/// cannot be a DNS label even derived (a task id that is not one, or too long).
pub fn route_key(task_id: &str, name: &str, mode: HttpMode) -> Result<String, String> {
    match mode {
        HttpMode::Path if name.is_empty() => Ok(task_id.to_string()),
        HttpMode::Path if validate::plain_endpoint_name(name) => Ok(format!("{task_id}__{name}")),
        HttpMode::Path => Ok(derived(task_id, name, MAX_READABLE)),
        HttpMode::Subdomain => subdomain_key(task_id, name),
    }
}

/// The DNS label of a subdomain-mode endpoint: its route key with the endpoint separator `__`
/// written `--`, lower-cased (`task`, `task--name`, `task--my-app-1a2b3c4d`).
pub fn subdomain_label(task_id: &str, name: &str) -> Result<String, String> {
    let key = subdomain_key(task_id, name)?;
    Ok(label_of(&key))
}

fn label_of(key: &str) -> String {
    key.replacen("__", "--", 1).to_ascii_lowercase()
}

fn subdomain_key(task_id: &str, name: &str) -> Result<String, String> {
    let not_dns = |label: &str| {
        format!("{label:?} cannot be a DNS label (subdomain mode needs 1-63 of a-z 0-9 -)")
    };
    if !dns_label(&task_id.to_ascii_lowercase()) {
        return Err(not_dns(&task_id.to_ascii_lowercase()));
    }
    if name.is_empty() {
        return Ok(task_id.to_string());
    }
    let plain = format!("{task_id}__{name}");
    if validate::plain_endpoint_name(name) && dns_label(&label_of(&plain)) {
        return Ok(plain);
    }
    // `task--` + readable + `-` + hash within one label.
    let room = MAX_LABEL.checked_sub(task_id.len() + 2 + 1 + HASH_DIGITS);
    let Some(room) = room else {
        return Err(not_dns(&label_of(&derived(task_id, name, 0))));
    };
    Ok(derived(task_id, name, room.min(MAX_READABLE)))
}

/// `task__<readable>-<hash>`: the name's ASCII letters and digits lower-cased, every other run
/// of characters one `-`, at most `max_readable` of them, then the hash of the exact name.
fn derived(task_id: &str, name: &str, max_readable: usize) -> String {
    let mut readable = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            readable.push(c.to_ascii_lowercase());
        } else if !readable.is_empty() && !readable.ends_with('-') {
            readable.push('-');
        }
    }
    readable.truncate(max_readable);
    let readable = readable.trim_end_matches('-');
    let hash = format!("{:016x}", fnv1a(name.as_bytes()));
    let hash = &hash[..HASH_DIGITS];
    if readable.is_empty() {
        format!("{task_id}__{hash}")
    } else {
        format!("{task_id}__{readable}-{hash}")
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms (the key is in URLs users keep). Not
/// a defence: two names of one task that collide are caught by the planner, and keys of
/// different tasks differ by their task id.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::names;

    const TASK: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn plain_names_keep_the_keys_routers_always_wrote() {
        assert_eq!(route_key(TASK, "", HttpMode::Path).unwrap(), TASK);
        assert_eq!(
            route_key(TASK, "my_App-2", HttpMode::Path).unwrap(),
            format!("{TASK}__my_App-2")
        );
        assert_eq!(subdomain_label(TASK, "ui").unwrap(), format!("{TASK}--ui"));
        assert_eq!(subdomain_label(TASK, "").unwrap(), TASK);
    }

    #[test]
    fn any_other_name_gets_a_readable_part_and_a_hash() {
        let key = route_key(TASK, "My App: v2.0 ☕", HttpMode::Path).unwrap();
        assert!(key.starts_with(&format!("{TASK}__my-app-v2-0-")), "{key}");
        assert_eq!(
            key.len(),
            TASK.len() + 2 + "my-app-v2-0".len() + 1 + HASH_DIGITS
        );
        // Names spelled alike get different keys; the same name always the same.
        assert_ne!(key, route_key(TASK, "my app v2 0", HttpMode::Path).unwrap());
        assert_ne!(
            route_key(TASK, "a.b", HttpMode::Path).unwrap(),
            route_key(TASK, "A.B", HttpMode::Path).unwrap()
        );
        assert_eq!(
            key,
            route_key(TASK, "My App: v2.0 ☕", HttpMode::Path).unwrap()
        );
        let only_symbols = route_key(TASK, "☕☕", HttpMode::Path).unwrap();
        assert_eq!(only_symbols.len(), TASK.len() + 2 + HASH_DIGITS);
        let long = route_key(TASK, &"word ".repeat(30), HttpMode::Path).unwrap();
        assert!(long.len() <= TASK.len() + 2 + MAX_READABLE + 1 + HASH_DIGITS);
    }

    #[test]
    fn derived_keys_are_what_nginx_takes_in_both_modes() {
        for name in [
            "",
            "api",
            "my_app",
            "My App",
            "a.b",
            "☕",
            "-x-",
            &"Long name ".repeat(12),
        ] {
            let path = route_key(TASK, name, HttpMode::Path).unwrap();
            assert!(names::route_key(&path).is_ok(), "{name:?}: {path}");
            let sub = route_key(TASK, name, HttpMode::Subdomain).unwrap();
            assert_eq!(
                names::host_label(&sub).unwrap(),
                subdomain_label(TASK, name).unwrap()
            );
        }
        // `_` is no DNS character: the name keeps its path key, and gets a derived label.
        assert_eq!(
            route_key(TASK, "my_app", HttpMode::Path).unwrap(),
            format!("{TASK}__my_app")
        );
        assert!(
            subdomain_label(TASK, "my_app")
                .unwrap()
                .starts_with(&format!("{TASK}--my-app-"))
        );
    }

    #[test]
    fn what_cannot_be_a_dns_label_is_refused() {
        assert!(subdomain_label("task_with_underscore", "").is_err());
        assert!(subdomain_label(&"a".repeat(60), "x.y").is_err());
        assert!(route_key(&"a".repeat(60), "x.y", HttpMode::Path).is_ok());
    }
}
