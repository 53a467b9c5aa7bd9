//! Validation of everything that reaches the generated nginx configuration.
//!
//! Task-controlled values (route keys, endpoint names, upstream addresses) are accepted only from
//! a strict alphabet, so they can never close a block, end a directive, start a variable or
//! escape a path: nothing a task writes is ever quoted into the config, it is rejected instead.
//! Operator-controlled values (paths, the domain) go through [`quote`], which refuses what nginx
//! cannot quote.

use std::net::SocketAddrV4;

/// The longest route key accepted (a task id of up to 64 characters, `__`, a plain endpoint
/// name or the key `reconcile::naming` derives from any other).
pub const MAX_KEY_LEN: usize = 128;
/// A DNS label is at most 63 bytes.
const MAX_LABEL_LEN: usize = 63;
/// A DNS name is at most 253 bytes.
const MAX_DOMAIN_LEN: usize = 253;

/// Why a value cannot be used in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "route key {0:?} is empty, longer than {MAX_KEY_LEN} bytes or has characters outside [A-Za-z0-9_-]"
    )]
    Key(String),
    #[error(
        "host label {0:?} derived from the route key is not a DNS label ([a-z0-9-], at most 63 bytes, no leading or trailing '-')"
    )]
    Label(String),
    #[error("domain {0:?} is not a DNS name (labels of [a-z0-9-] separated by dots)")]
    Domain(String),
    #[error("upstream {0} is not a usable address (unspecified, broadcast, multicast or port 0)")]
    Upstream(SocketAddrV4),
    #[error("listen port 0 is not a usable port")]
    Port,
    #[error("ROUTER_HTTP_MODE=subdomain needs ROUTER_DOMAIN")]
    NoDomain,
    #[error(
        "{what} {value:?} has characters nginx cannot quote (quotes, backslash, '$', ';', braces, control characters)"
    )]
    Unquotable { what: &'static str, value: String },
}

/// A route key as it appears in `/service/{key}/`: `[A-Za-z0-9_-]{1,128}`.
pub fn route_key(key: &str) -> Result<&str, NameError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(key)
    } else {
        Err(NameError::Key(key.to_string()))
    }
}

/// The host label of a subdomain route: the key with the endpoint separator `__` written `--`
/// (`task--name`), lowercased (host names are case-insensitive), and it must be a DNS label.
pub fn host_label(key: &str) -> Result<String, NameError> {
    route_key(key)?;
    let label = key.replacen("__", "--", 1).to_ascii_lowercase();
    if dns_label(&label) {
        Ok(label)
    } else {
        Err(NameError::Label(label))
    }
}

fn dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `ROUTER_DOMAIN`, normalised to lowercase without a trailing dot.
pub fn domain(domain: &str) -> Result<String, NameError> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if !d.is_empty() && d.len() <= MAX_DOMAIN_LEN && d.split('.').all(dns_label) {
        Ok(d)
    } else {
        Err(NameError::Domain(domain.to_string()))
    }
}

/// An upstream a route may point at. Policy (which networks) is the control plane's; this
/// refuses only addresses no task can listen on.
pub fn upstream(addr: SocketAddrV4) -> Result<SocketAddrV4, NameError> {
    let ip = addr.ip();
    if addr.port() == 0 || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        Err(NameError::Upstream(addr))
    } else {
        Ok(addr)
    }
}

/// A double-quoted nginx string for an operator-given value (paths, commands' arguments).
/// Refuses characters that would need escaping instead of escaping them: nginx's own unescaping
/// differs between directives, and `$` is a variable in some of them.
pub fn quote(what: &'static str, value: &str) -> Result<String, NameError> {
    let bad = value.is_empty()
        || value.chars().any(|c| {
            c.is_control() || matches!(c, '"' | '\'' | '\\' | '$' | ';' | '{' | '}' | '#')
        });
    if bad {
        return Err(NameError::Unquotable {
            what,
            value: value.to_string(),
        });
    }
    Ok(format!("\"{value}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn keys_accept_task_ids_and_named_endpoints_only() {
        assert!(route_key("0123456789abcdef0123456789abcdef").is_ok());
        assert!(route_key("aabb__api-v2").is_ok());
        for bad in [
            "",
            "a;b",
            "a}b",
            "a\nb",
            "a$b",
            "a\"b",
            "a'b",
            "../etc",
            "a/b",
            "a b",
            "a.b",
            "a\0b",
            "ä",
            &"a".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(route_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_labels_are_dns_labels() {
        assert_eq!(host_label("AaBb").unwrap(), "aabb");
        assert_eq!(host_label("aabb__api").unwrap(), "aabb--api");
        // Only the first separator marks the endpoint name; the rest must be DNS characters.
        assert!(host_label("aa__b__c").is_err());
        assert!(
            host_label("aa__b_c").is_err(),
            "underscore is not a DNS character"
        );
        assert!(host_label("-aa").is_err());
        assert!(host_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn domains_are_normalised_and_checked() {
        assert_eq!(domain("Apps.Example.COM.").unwrap(), "apps.example.com");
        for bad in [
            "", "a..b", "a b.com", "a;b.com", "*.a.com", "-a.com", "a_b.com",
        ] {
            assert!(domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unusable_upstreams_are_refused() {
        let ok = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 8888);
        assert_eq!(upstream(ok).unwrap(), ok);
        for bad in [
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 80),
            SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), 80),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 0),
        ] {
            assert!(upstream(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn quoting_refuses_what_it_cannot_quote() {
        assert_eq!(
            quote("p", "/etc/nginx/x.conf").unwrap(),
            "\"/etc/nginx/x.conf\""
        );
        assert_eq!(quote("p", "/a b/c").unwrap(), "\"/a b/c\"");
        for bad in [
            "", "a\"b", "a\\b", "$x", "a;b", "a{", "a}", "a\nb", "a#b", "a'b",
        ] {
            assert!(quote("p", bad).is_err(), "{bad:?} accepted");
        }
    }
}
