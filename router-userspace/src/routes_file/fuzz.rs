//! Property tests of the routes file (TOML) against untrusted text: no input panics, a bad
//! file is a typed error that names the file and (for a bad entry) the entry and what is wrong
//! with it, and every valid route set written as TOML parses back to itself.

use super::*;
use crate::proptest_config as config;
use crate::routes::HttpMode;
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

fn policy() -> UpstreamPolicy {
    UpstreamPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], [])
}

const PATH: &str = "/etc/task-router/routes.toml";

/// `ROUTER_DOMAIN` set and a JWT key configured: every kind of entry may be served.
fn rules() -> FileRules {
    FileRules {
        domain_set: true,
        auth_key_missing: false,
        client_allow: crate::client_allow::ClientAllow::Any,
    }
}

fn check_error(e: &RoutesFileError) -> Result<(), TestCaseError> {
    let text = crate::error::error_chain(e);
    prop_assert!(text.contains(PATH), "{text}");
    if let RoutesFileError::Entry { entry, reason, .. } = e {
        prop_assert!(entry.starts_with("[[tcp]] #") || entry.starts_with("[[http]] #"));
        prop_assert!(!reason.is_empty());
    }
    Ok(())
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[derive(Clone, Debug)]
struct Tcp {
    port: u16,
    upstream: SocketAddrV4,
    name: Option<String>,
}

#[derive(Clone, Debug)]
struct Http {
    name: String,
    upstream: SocketAddrV4,
    mode: Option<HttpMode>,
}

fn upstream() -> impl Strategy<Value = SocketAddrV4> {
    (1u8..=254, any::<u8>(), 1u8..=254, 1u16..=65535)
        .prop_map(|(b, c, d, port)| SocketAddrV4::new(Ipv4Addr::new(10, b, c, d), port))
}

fn valid_set() -> impl Strategy<Value = (Vec<Tcp>, Vec<Http>)> {
    let name = "[A-Za-z0-9_-]{1,64}";
    let tcp = prop::collection::btree_map(1u16..=65535, (upstream(), prop::option::of(name)), 0..6);
    let http = prop::collection::btree_map(
        name,
        (
            upstream(),
            prop::option::of(prop_oneof![Just(HttpMode::Path), Just(HttpMode::Subdomain)]),
        ),
        0..6,
    );
    (tcp, http).prop_map(|(tcp, http)| {
        (
            tcp.into_iter()
                .map(|(port, (upstream, name))| Tcp {
                    port,
                    upstream,
                    name,
                })
                .collect(),
            http.into_iter()
                .map(|(name, (upstream, mode))| Http {
                    name,
                    upstream,
                    mode,
                })
                .collect(),
        )
    })
}

fn render(tcp: &[Tcp], http: &[Http]) -> String {
    let mut s = String::new();
    for t in tcp {
        s.push_str(&format!(
            "[[tcp]]\nport = {}\nupstream = {}\n",
            t.port,
            quoted(&t.upstream.to_string())
        ));
        if let Some(name) = &t.name {
            s.push_str(&format!("name = {}\n", quoted(name)));
        }
    }
    for h in http {
        s.push_str(&format!(
            "[[http]]\nname = {}\nupstream = {}\n",
            quoted(&h.name),
            quoted(&h.upstream.to_string())
        ));
        match h.mode {
            Some(HttpMode::Path) => s.push_str("mode = \"path\"\n"),
            Some(HttpMode::Subdomain) => s.push_str("mode = \"subdomain\"\n"),
            None => {}
        }
    }
    s
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary text, or TOML-looking text: parsed or a typed error naming the file.
    #[test]
    fn any_text_is_parsed_or_refused_with_a_reason(
        text in prop_oneof![
            "(?s).{0,300}",
            "(\\[\\[(tcp|http|udp)\\]\\]\n((port|upstream|name|mode|x) = (-?[0-9]{1,6}|\"[^\"\n]{0,24}\"|\\[\\]|true|1e9|\\{\\})\n){0,4}){0,4}",
        ]
    ) {
        match parse(Path::new(PATH), &text, &policy(), &rules()) {
            Ok(set) => {
                for (port, r) in &set.tcp {
                    prop_assert!(*port != 0 && r.port == *port);
                    prop_assert!(policy().address(&r.upstream.ip().to_string()).is_ok());
                    prop_assert!(r.upstream.port() != 0);
                }
            }
            Err(e) => check_error(&e)?,
        }
    }

    /// Every valid route set, written as TOML, parses back to itself.
    #[test]
    fn valid_route_sets_round_trip((tcp, http) in valid_set()) {
        let text = render(&tcp, &http);
        let set = parse(Path::new(PATH), &text, &policy(), &rules())
            .map_err(|e| TestCaseError::fail(format!("{}\n{text}", crate::error::error_chain(&e))))?;
        prop_assert_eq!(set.tcp.len(), tcp.len());
        for t in &tcp {
            let r = &set.tcp[&t.port];
            prop_assert_eq!(r.upstream, t.upstream);
            let name = t.name.clone().unwrap_or_else(|| format!("tcp-{}", t.port));
            prop_assert_eq!(&r.owner.task_name, &name);
        }
        prop_assert_eq!(set.http.len(), http.len());
        for h in &http {
            let r = &set.http[&h.name];
            prop_assert_eq!(r.upstream, h.upstream);
            prop_assert_eq!(r.mode, h.mode.unwrap_or(HttpMode::Path));
        }
    }

    /// Structure-aware mutations of a valid file: one field's value replaced by a hostile
    /// one (wrong type, out of range, outside the allowed upstreams, injection attempts, a
    /// duplicate). Parsed or refused by name, never panics; refused when the value is bad.
    #[test]
    fn hostile_field_values_are_refused_by_name(
        (tcp, http) in valid_set(),
        field in prop::sample::select(vec!["port", "upstream", "name", "mode"]),
        value in prop::sample::select(vec![
            "0", "65536", "-1", "99999999999999999999", "1.5", "\"30001\"", "true", "[]", "{}",
            "\"127.0.0.1:22\"", "\"169.254.169.254:80\"", "\"8.8.8.8:53\"", "\"10.0.0.1\"",
            "\"10.0.0.1:0\"", "\"10.0.0.1:65536\"", "\"[::1]:80\"", "\"10.0.0.1:80; rm -rf /\"",
            "\"a b\"", "\"x}\"", "\"../etc\"", "\"\"", "\"é\"", "\"subdomain\"", "\"other\"",
        ]),
    ) {
        prop_assume!(!tcp.is_empty() || !http.is_empty());
        let text = render(&tcp, &http);
        // Replace the first occurrence of `field = ...` (or add it to the first entry).
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let prefix = format!("{field} = ");
        match lines.iter().position(|l| l.starts_with(&prefix)) {
            Some(i) => lines[i] = format!("{prefix}{value}"),
            None => lines.insert(1, format!("{prefix}{value}")),
        }
        let text = lines.join("\n");
        match parse(Path::new(PATH), &text, &policy(), &rules()) {
            Ok(set) => {
                // Only a value valid for the field may pass: a name of [A-Za-z0-9_-], or the
                // subdomain mode (the router has a domain here).
                let valid = matches!(
                    (field, value),
                    ("name", "\"subdomain\"" | "\"other\"" | "\"30001\"")
                        | ("mode", "\"subdomain\"")
                );
                prop_assert!(valid, "accepted {field} = {value}: {set:?}\n{text}");
            }
            Err(e) => check_error(&e)?,
        }
    }
}

#[test]
fn duplicates_and_unknown_keys_are_refused_by_entry() {
    for (text, wants) in [
        (
            "[[tcp]]\nport = 30001\nupstream = \"10.0.0.5:1\"\n[[tcp]]\nport = 30001\nupstream = \"10.0.0.6:1\"\n",
            "[[tcp]] #2: port 30001 is listed twice",
        ),
        (
            "[[tcp]]\nport = 30001\nupstream = \"10.0.0.5:1\"\nextra = 1\n",
            "not valid TOML",
        ),
        ("[[udp]]\nport = 1\n", "not valid TOML"),
        ("tcp = 5", "not valid TOML"),
    ] {
        let e = parse(Path::new(PATH), text, &policy(), &rules()).expect_err(text);
        let msg = crate::error::error_chain(&e);
        assert!(msg.contains(wants), "{msg}");
    }
}
