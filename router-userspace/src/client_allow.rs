//! Client allow-lists: which client addresses may open connections to a TCP route. The
//! operator's `ROUTER_TCP_CLIENT_ALLOW` covers every route, a routes-file entry's `allow` and a
//! task's runtime key (`reconcile::client_allow`) narrow it for one route; the kernel enforces
//! the result (`datapath::client_allow`) when a SYN would open a connection.
//!
//! Pure set algebra over IPv4 CIDRs: parsing, normalising, intersecting, and the "narrows,
//! never widens" check.

use ipnet::Ipv4Net;
use std::fmt;
use std::net::Ipv4Addr;

/// Most CIDRs one list may hold (each is a kernel map entry per route it applies to).
pub const MAX_CIDRS: usize = 256;

/// Which clients may open connections: everyone, or those inside a set of CIDRs (normalised:
/// sorted, none inside another; `Only` of an empty set admits no one, which only an
/// intersection of disjoint lists gives).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClientAllow {
    #[default]
    Any,
    Only(Vec<Ipv4Net>),
}

impl ClientAllow {
    /// The list `nets` (empty = everyone), normalised.
    pub fn from_nets(nets: Vec<Ipv4Net>) -> ClientAllow {
        if nets.is_empty() || nets.iter().any(|n| n.prefix_len() == 0) {
            return ClientAllow::Any;
        }
        ClientAllow::Only(normalise(nets))
    }

    /// Parses a list of IPv4 CIDRs (or bare addresses, /32) separated by commas or spaces;
    /// empty = everyone. A CIDR with host bits set is refused, not truncated: `10.1.2.3/8`
    /// may mean `10.0.0.0/8` or `10.1.2.3/32`, and guessing wide would admit clients the
    /// operator did not name.
    pub fn parse(text: &str) -> Result<ClientAllow, String> {
        let items: Vec<&str> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        if items.len() > MAX_CIDRS {
            return Err(format!(
                "{} CIDRs, more than the {MAX_CIDRS} a list may hold",
                items.len()
            ));
        }
        let nets = items
            .into_iter()
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientAllow::from_nets(nets))
    }

    /// Whether `addr` may connect.
    pub fn admits(&self, addr: Ipv4Addr) -> bool {
        match self {
            ClientAllow::Any => true,
            ClientAllow::Only(nets) => nets.iter().any(|n| n.contains(&addr)),
        }
    }

    /// Whether every address of `net` may connect.
    pub fn covers(&self, net: &Ipv4Net) -> bool {
        match self {
            ClientAllow::Any => true,
            ClientAllow::Only(nets) => nets.iter().any(|n| n.contains(net)),
        }
    }

    /// The clients both lists admit.
    pub fn intersect(&self, other: &ClientAllow) -> ClientAllow {
        match (self, other) {
            (ClientAllow::Any, x) | (x, ClientAllow::Any) => x.clone(),
            (ClientAllow::Only(a), ClientAllow::Only(b)) => {
                // Two CIDRs overlap only when one holds the other; the overlap is the smaller.
                let mut out = Vec::new();
                for x in a {
                    for y in b {
                        if x.contains(y) {
                            out.push(*y);
                        } else if y.contains(x) {
                            out.push(*x);
                        }
                    }
                }
                ClientAllow::Only(normalise(out))
            }
        }
    }

    /// `narrower` applied on top of this list: the intersection, when `narrower` only narrows
    /// it; else the first CIDR of `narrower` this list does not wholly admit (asking for it
    /// would widen, or silently shrink to less than was asked for).
    pub fn narrow(&self, narrower: &ClientAllow) -> Result<ClientAllow, Ipv4Net> {
        if let ClientAllow::Only(nets) = narrower
            && let Some(outside) = nets.iter().find(|n| !self.covers(n))
        {
            return Err(*outside);
        }
        Ok(self.intersect(narrower))
    }

    /// The CIDRs, `None` for everyone.
    pub fn nets(&self) -> Option<&[Ipv4Net]> {
        match self {
            ClientAllow::Any => None,
            ClientAllow::Only(nets) => Some(nets),
        }
    }
}

/// `a.b.c.d/len` without host bits, or `a.b.c.d` (/32).
fn parse_net(item: &str) -> Result<Ipv4Net, String> {
    if let Ok(addr) = item.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::from(addr));
    }
    let net = item
        .parse::<Ipv4Net>()
        .map_err(|_| format!("{item:?} is not an IPv4 CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "{item:?} has host bits set (did you mean {} or {}/32?)",
            net.trunc(),
            net.addr()
        ));
    }
    Ok(net)
}

/// Sorted, without duplicates or CIDRs inside another of the list.
fn normalise(mut nets: Vec<Ipv4Net>) -> Vec<Ipv4Net> {
    nets.sort();
    nets.dedup();
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|m| m != n && m.contains(n)));
    nets
}

impl fmt::Display for ClientAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAllow::Any => f.write_str("any"),
            ClientAllow::Only(nets) if nets.is_empty() => f.write_str("none"),
            ClientAllow::Only(nets) => {
                let list: Vec<String> = nets.iter().map(Ipv4Net::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// As its text (`any`, `none` or the comma-separated CIDRs): `status`, `routes.json`.
impl serde::Serialize for ClientAllow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClientAllow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "any" => Ok(ClientAllow::Any),
            "none" => Ok(ClientAllow::Only(Vec::new())),
            list => ClientAllow::parse(list).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> ClientAllow {
        ClientAllow::parse(text).expect("a valid list")
    }

    #[test]
    fn empty_means_everyone_and_bad_entries_are_named() {
        assert_eq!(list(""), ClientAllow::Any);
        assert_eq!(list(" , "), ClientAllow::Any);
        assert_eq!(list("10.0.0.0/8, 0.0.0.0/0"), ClientAllow::Any);
        let err = ClientAllow::parse("10.0.0.0/8,10.0.0.300/24").unwrap_err();
        assert!(
            err.contains("\"10.0.0.300/24\" is not an IPv4 CIDR"),
            "{err}"
        );
        let err = ClientAllow::parse("10.1.2.3/8").unwrap_err();
        assert!(err.contains("10.0.0.0/8 or 10.1.2.3/32"), "{err}");
        assert!(ClientAllow::parse("fd00::/8").is_err());
        let many = vec!["10.0.0.1"; MAX_CIDRS + 1].join(",");
        assert!(ClientAllow::parse(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn lists_are_normalised() {
        assert_eq!(
            list("192.168.1.7 10.1.0.0/16,10.0.0.0/8 10.0.0.0/8"),
            list("10.0.0.0/8,192.168.1.7/32")
        );
        assert_eq!(list("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(list("10.0.0.1").to_string(), "10.0.0.1/32");
    }

    #[test]
    fn intersection_keeps_what_both_admit() {
        let a = list("10.0.0.0/8,192.168.0.0/16");
        let b = list("10.1.0.0/16,172.16.0.0/12,192.0.0.0/8");
        assert_eq!(a.intersect(&b), list("10.1.0.0/16,192.168.0.0/16"));
        assert_eq!(b.intersect(&a), a.intersect(&b));
        assert_eq!(a.intersect(&ClientAllow::Any), a);
        assert_eq!(ClientAllow::Any.intersect(&a), a);
        let none = list("10.0.0.0/8").intersect(&list("192.168.0.0/16"));
        assert_eq!(none, ClientAllow::Only(Vec::new()));
        assert_eq!(none.to_string(), "none");
        assert!(!none.admits(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn narrowing_is_taken_and_widening_refused() {
        let operator = list("10.0.0.0/8");
        assert_eq!(
            operator.narrow(&list("10.9.0.0/16")),
            Ok(list("10.9.0.0/16"))
        );
        assert_eq!(operator.narrow(&ClientAllow::Any), Ok(operator.clone()));
        assert_eq!(
            operator.narrow(&list("10.9.0.0/16,192.168.0.0/16")),
            Err("192.168.0.0/16".parse().unwrap())
        );
        assert_eq!(
            operator.narrow(&list("0.0.0.0/1")),
            Err("0.0.0.0/1".parse().unwrap())
        );
        assert_eq!(
            ClientAllow::Any.narrow(&list("1.2.3.4")),
            Ok(list("1.2.3.4"))
        );
    }

    #[test]
    fn admits_by_the_longest_match() {
        let l = list("10.0.0.0/8,192.168.1.7");
        assert!(l.admits(Ipv4Addr::new(10, 200, 1, 1)));
        assert!(l.admits(Ipv4Addr::new(192, 168, 1, 7)));
        assert!(!l.admits(Ipv4Addr::new(192, 168, 1, 8)));
        assert!(ClientAllow::Any.admits(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn serialises_as_its_text() {
        let l = list("10.0.0.0/8,192.168.1.7");
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, "\"10.0.0.0/8,192.168.1.7/32\"");
        assert_eq!(serde_json::from_str::<ClientAllow>(&json).unwrap(), l);
        assert_eq!(
            serde_json::from_str::<ClientAllow>("\"any\"").unwrap(),
            ClientAllow::Any
        );
    }
}
