//! Untrusted input from tasks (and the routes file): upstream addresses, ports, ids and names.
//!
//! A task may write anything into its runtime properties. Only a valid IPv4 address inside the
//! allowed CIDRs, never loopback, link-local (169.254/16, the usual cloud metadata service),
//! multicast, broadcast, "this network" (0/8), reserved (240/4), a known cloud metadata address
//! outside link-local, or one of the router's own addresses, and a port 1-65535 become an
//! upstream — whatever `ROUTER_ALLOWED_UPSTREAMS` says; task ids that reach the maps, nginx
//! or a URL are restricted to `[A-Za-z0-9_-]`; endpoint names may be any printable text (what
//! reaches nginx and URLs is a key derived from them).

use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Cloud metadata and host-agent services reachable outside link-local, never an upstream (a
/// task that could reach them through the router would read the host's credentials):
/// Alibaba Cloud's metadata service (inside 100.64/10, which the default allow-list has) and
/// Azure's WireServer.
pub const METADATA_ADDRESSES: &[Ipv4Addr] = &[
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// Which upstreams tasks may be forwarded to.
#[derive(Clone, Debug)]
pub struct UpstreamPolicy {
    allowed: Vec<Ipv4Net>,
    own: BTreeSet<Ipv4Addr>,
}

impl UpstreamPolicy {
    pub fn new(allowed: Vec<Ipv4Net>, own: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        UpstreamPolicy {
            allowed,
            own: own.into_iter().collect(),
        }
    }

    /// Replaces the router's own addresses (they change when interfaces do).
    pub fn set_own(&mut self, own: impl IntoIterator<Item = Ipv4Addr>) {
        self.own = own.into_iter().collect();
    }

    pub fn own(&self) -> &BTreeSet<Ipv4Addr> {
        &self.own
    }

    /// Checks an address as written by a task.
    pub fn address(&self, raw: &str) -> Result<Ipv4Addr, String> {
        let raw = raw.trim();
        let addr: Ipv4Addr = raw
            .parse()
            .map_err(|_| format!("address {raw:?} is not an IPv4 address"))?;
        let class = if addr.is_loopback() {
            Some("loopback")
        } else if addr.is_link_local() {
            Some("link-local")
        } else if addr.is_multicast() {
            Some("multicast")
        } else if addr.is_broadcast() {
            Some("broadcast")
        } else if addr.is_unspecified() {
            Some("unspecified")
        } else if addr.octets()[0] == 0 {
            Some("in \"this network\" (0.0.0.0/8)")
        } else if addr.octets()[0] >= 240 {
            Some("reserved (240.0.0.0/4)")
        } else if METADATA_ADDRESSES.contains(&addr) {
            Some("a cloud metadata service")
        } else {
            None
        };
        if let Some(class) = class {
            return Err(format!("address {addr} is {class}"));
        }
        if self.own.contains(&addr) {
            return Err(format!(
                "address {addr} is one of the router's own addresses"
            ));
        }
        if !self.allowed.iter().any(|net| net.contains(&addr)) {
            return Err(format!(
                "address {addr} is outside ROUTER_ALLOWED_UPSTREAMS ({})",
                self.allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        Ok(addr)
    }

    /// Checks an address and a port together.
    pub fn upstream(&self, address: &str, port: &str) -> Result<SocketAddrV4, String> {
        let addr = self.address(address)?;
        let port = port_number(port)?;
        Ok(SocketAddrV4::new(addr, port))
    }
}

/// A port as a task wrote it (an int or a string of one): 1-65535.
pub fn port_number(raw: &str) -> Result<u16, String> {
    let raw = raw.trim();
    match raw.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("port {raw:?} is not a port 1-65535")),
    }
}

/// A ClearML task id (or a routes-file name): `[A-Za-z0-9_-]`, 1-64 bytes.
pub fn task_id(raw: &str) -> Result<&str, String> {
    if ident(raw, 64) {
        Ok(raw)
    } else {
        Err(format!(
            "task id {:?} is not 1-64 characters of A-Z a-z 0-9 _ -",
            truncate(raw)
        ))
    }
}

/// The longest endpoint name served, in characters: longer ones would not fit a status row or
/// a log line (the SDK sets no limit; real names are a word or two).
pub const MAX_ENDPOINT_NAME: usize = 128;

/// An endpoint name (the `__<name>` suffix) as the SDK writes it: any text
/// (`str(endpoint_name)`, clearml `task.py:1025`), since the URL and nginx use a key derived
/// from it (`reconcile::naming`). Refused only when it cannot be shown as it is: empty, with
/// control characters, or longer than [`MAX_ENDPOINT_NAME`] characters.
pub fn endpoint_name(raw: &str) -> Result<&str, String> {
    if raw.is_empty() {
        Err("the endpoint name after `__` is empty".into())
    } else if raw.chars().any(char::is_control) {
        Err(format!(
            "endpoint name {:?} holds control characters",
            truncate(raw)
        ))
    } else if raw.chars().count() > MAX_ENDPOINT_NAME {
        Err(format!(
            "endpoint name {:?} is longer than {MAX_ENDPOINT_NAME} characters",
            truncate(raw)
        ))
    } else {
        Ok(raw)
    }
}

/// Whether an endpoint name stands in URLs and nginx names as it is: `[A-Za-z0-9_-]`, 1-32
/// bytes (other names get a derived key).
pub fn plain_endpoint_name(raw: &str) -> bool {
    ident(raw, 32)
}

fn ident(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Shortens untrusted text for a log line or a status entry.
pub fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// The IPv4 addresses of this network namespace's interfaces.
pub fn local_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| a.as_sockaddr_in().map(|s| s.ip()))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UpstreamPolicy {
        let allowed = crate::config::DEFAULT_ALLOWED_UPSTREAMS
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        UpstreamPolicy::new(allowed, [Ipv4Addr::new(10, 0, 0, 1)])
    }

    #[test]
    fn accepts_private_addresses_and_ports() {
        let p = policy();
        assert_eq!(
            p.upstream("10.1.2.3", "8888"),
            Ok("10.1.2.3:8888".parse().unwrap())
        );
        assert_eq!(
            p.upstream(" 192.168.0.9 ", "1"),
            Ok("192.168.0.9:1".parse().unwrap())
        );
        assert!(p.upstream("172.31.255.254", "65535").is_ok());
        assert!(p.upstream("100.64.0.1", "22").is_ok());
    }

    #[test]
    fn refuses_dangerous_addresses_with_a_reason() {
        let p = policy();
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
            ("10.0.0.1", "router's own"),
            ("8.8.8.8", "outside ROUTER_ALLOWED_UPSTREAMS"),
            ("172.32.0.1", "outside"),
            ("::1", "not an IPv4"),
            ("example.com", "not an IPv4"),
            ("10.0.0.1; rm -rf /", "not an IPv4"),
            ("10.1.2.3\n", "ok"),
            ("169.254.170.2", "link-local"),
            ("100.100.100.200", "cloud metadata"),
            ("0x7f.1", "not an IPv4"),
            ("2130706433", "not an IPv4"),
            ("127.1", "not an IPv4"),
            ("010.0.0.1", "not an IPv4"),
            ("10.0.0.1.", "not an IPv4"),
        ] {
            match p.address(addr) {
                Ok(_) => assert_eq!(why, "ok", "{addr:?} accepted"),
                Err(e) => assert!(e.contains(why), "{addr:?}: {e}"),
            }
        }
    }

    /// An operator who widens `ROUTER_ALLOWED_UPSTREAMS` to everything still never gets the
    /// classes that make a router an SSRF relay.
    #[test]
    fn a_wide_allow_list_still_refuses_the_dangerous_classes() {
        let p = UpstreamPolicy::new(
            vec!["0.0.0.0/0".parse().unwrap()],
            [Ipv4Addr::new(203, 0, 113, 7)],
        );
        for (addr, why) in [
            ("127.0.0.53", "loopback"),
            ("169.254.169.254", "link-local"),
            ("100.100.100.200", "cloud metadata"),
            ("168.63.129.16", "cloud metadata"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("240.0.0.1", "reserved"),
            ("203.0.113.7", "router's own"),
        ] {
            let e = p.address(addr).unwrap_err();
            assert!(e.contains(why), "{addr}: {e}");
        }
        assert!(p.address("8.8.8.8").is_ok());
    }

    #[test]
    fn refuses_bad_ports() {
        for port in ["0", "65536", "-1", "22a", "", "1e3", "99999999999"] {
            let e = port_number(port).unwrap_err();
            assert!(e.contains("not a port 1-65535"), "{port}: {e}");
        }
        assert_eq!(port_number("65535"), Ok(65535));
        assert_eq!(port_number(" 22 "), Ok(22));
    }

    #[test]
    fn ids_and_names() {
        assert!(task_id("4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99").is_ok());
        assert!(task_id("file_my-route").is_ok());
        for bad in [
            "",
            "a/b",
            "a b",
            "a;b",
            "x}",
            "a\nb",
            "../etc",
            "$x",
            &"a".repeat(65),
        ] {
            assert!(task_id(bad).is_err(), "{bad:?}");
        }
        for name in [
            "api",
            "my_app-2",
            "a.b",
            "My App",
            "café ☕",
            "a/b?c",
            &"n".repeat(128),
        ] {
            assert_eq!(endpoint_name(name), Ok(name));
        }
        for bad in ["", "a\nb", "tab\there", "\u{7f}", &"n".repeat(129)] {
            assert!(endpoint_name(bad).is_err(), "{bad:?}");
        }
        assert!(plain_endpoint_name("my_app-2"));
        assert!(!plain_endpoint_name("a.b") && !plain_endpoint_name(&"n".repeat(33)));
    }

    #[test]
    fn own_addresses_are_discovered() {
        // Every namespace has loopback; discovery must see at least that.
        assert!(local_addresses().contains(&Ipv4Addr::LOCALHOST));
    }
}
