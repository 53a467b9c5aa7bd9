//! Owner of `ROUTES` (router port → backend): diffs the wanted TCP routes against what it
//! programmed. The kernel reads the map only when a SYN opens a connection, so a change or a
//! removal affects new connections at once and established ones never. Each route's value
//! says whether its connections keep the client's address (`ROUTE_PRESERVE_CLIENT`, chosen per
//! route by [`super::return_path`]); a change of that choice is a change of the route.

use super::DatapathError;
use super::object::maps::ROUTES;
use crate::endpoint::EndpointId;
use crate::routes::{ApplyReport, ClientIpChoice, RouteOwner, RouteRef, TcpRoute};
use aya::maps::{HashMap, Map, MapData};
use router_common::route::{FAMILY_IPV4, ROUTE_PRESERVE_CLIENT, RouteKey, RouteValue};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// A route as programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub upstream: SocketAddrV4,
    pub owner: RouteOwner,
    /// Stable while the same owner holds the port; counters are kept per id.
    pub route_id: u32,
    /// Bumped when the owner's backend (or the client-address choice) changes.
    pub version: u32,
    /// Whether new connections keep the client's address, and why.
    pub client_ip: ClientIpChoice,
}

pub struct RouteMap {
    map: HashMap<MapData, RouteKey, RouteValue>,
    programmed: BTreeMap<u16, Programmed>,
    /// Ports whose entry an earlier daemon wrote (found in the pinned map): their owner is not
    /// in the kernel, so the first `apply` naming the same backend takes the entry as it is
    /// (route id and version kept, nothing written).
    adopted: std::collections::BTreeSet<u16>,
    next_id: u32,
}

/// The owner shown for a route found in the pinned map until the control plane names it.
fn adopted_owner() -> RouteOwner {
    RouteOwner::new(
        EndpointId::new("adopted", String::new()),
        "(pinned by an earlier daemon)",
    )
}

/// Why a route cannot be programmed, if it cannot.
pub fn invalid_reason(port: u16, route: &TcpRoute) -> Option<String> {
    let ip = route.upstream.ip();
    if route.port != port {
        Some(format!("route keyed {port} names port {}", route.port))
    } else if port == 0 {
        Some("router port 0".into())
    } else if route.upstream.port() == 0 {
        Some("upstream port 0".into())
    } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        Some(format!(
            "upstream {ip} is not a unicast address another host can be"
        ))
    } else {
        None
    }
}

impl RouteMap {
    pub fn new(map: Map) -> Result<RouteMap, DatapathError> {
        let map = HashMap::try_from(map).map_err(|source| DatapathError::MapRead {
            map: ROUTES,
            source: Box::new(source),
        })?;
        Ok(RouteMap {
            map,
            programmed: BTreeMap::new(),
            adopted: Default::default(),
            next_id: 1,
        })
    }

    /// Takes over a pinned map with the routes an earlier daemon programmed: they stay in
    /// force (new connections keep being forwarded) until the first `apply` reconciles them.
    pub fn adopt(map: Map) -> Result<RouteMap, DatapathError> {
        let mut owner = RouteMap::new(map)?;
        for entry in owner.map.iter() {
            let (key, value) = entry.map_err(|source| DatapathError::MapRead {
                map: ROUTES,
                source: Box::new(source),
            })?;
            if value.family != FAMILY_IPV4 {
                continue;
            }
            let ip =
                std::net::Ipv4Addr::new(value.addr[0], value.addr[1], value.addr[2], value.addr[3]);
            owner.programmed.insert(
                key.port,
                Programmed {
                    upstream: SocketAddrV4::new(ip, u16::from_be(value.port_be)),
                    owner: adopted_owner(),
                    route_id: value.route_id,
                    version: value.version,
                    client_ip: ClientIpChoice::adopted(value.preserves_client()),
                },
            );
            owner.adopted.insert(key.port);
            owner.next_id = owner.next_id.max(value.route_id.wrapping_add(1).max(1));
        }
        Ok(owner)
    }

    pub fn programmed(&self) -> &BTreeMap<u16, Programmed> {
        &self.programmed
    }

    fn write(&mut self, port: u16, p: &Programmed) -> Result<(), DatapathError> {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&p.upstream.ip().octets());
        let value = RouteValue {
            addr,
            port_be: p.upstream.port().to_be(),
            family: FAMILY_IPV4,
            flags: if p.client_ip.preserved {
                ROUTE_PRESERVE_CLIENT
            } else {
                0
            },
            route_id: p.route_id,
            version: p.version,
            _pad2: 0,
        };
        self.map
            .insert(RouteKey::tcp(port), value, 0)
            .map_err(|source| DatapathError::MapWrite {
                map: ROUTES,
                source: Box::new(source),
            })
    }

    /// Makes the map equal `wanted`, each route with its client-address choice from `client_ip`
    /// (full NAT for a port it does not name); routes that fail validation or the map write are
    /// reported and left out (the previous route at that port, if any, is removed).
    pub fn apply(
        &mut self,
        wanted: &BTreeMap<u16, TcpRoute>,
        client_ip: &BTreeMap<u16, ClientIpChoice>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut invalid = Vec::new();
        for (&port, route) in wanted {
            if let Some(reason) = invalid_reason(port, route) {
                report.failed.push((RouteRef::Tcp(port), reason));
                invalid.push(port);
            }
        }
        let stale: Vec<u16> = self
            .programmed
            .keys()
            .copied()
            .filter(|port| !wanted.contains_key(port) || invalid.contains(port))
            .collect();
        for port in stale {
            match self.map.remove(&RouteKey::tcp(port)) {
                Ok(()) => {
                    self.programmed.remove(&port);
                    self.adopted.remove(&port);
                    report.removed += 1;
                }
                Err(e) => report.failed.push((
                    RouteRef::Tcp(port),
                    format!("removing it from {ROUTES}: {e}"),
                )),
            }
        }
        for (&port, route) in wanted {
            if invalid.contains(&port) {
                continue;
            }
            let adopted = self.adopted.remove(&port);
            let choice = client_ip
                .get(&port)
                .cloned()
                .unwrap_or_else(ClientIpChoice::full_nat);
            let same_mode = |p: &Programmed| p.client_ip.preserved == choice.preserved;
            let (next, changed) = match self.programmed.get_mut(&port) {
                Some(p)
                    if p.upstream == route.upstream && p.owner == route.owner && same_mode(p) =>
                {
                    // Only the reason may differ: nothing to write.
                    p.client_ip = choice;
                    continue;
                }
                Some(p) if adopted && p.upstream == route.upstream && same_mode(p) => {
                    // The entry an earlier daemon wrote for this route: kept as it is.
                    p.owner = route.owner.clone();
                    p.client_ip = choice;
                    continue;
                }
                Some(p) if adopted || p.owner == route.owner => (
                    Programmed {
                        upstream: route.upstream,
                        owner: route.owner.clone(),
                        route_id: p.route_id,
                        version: p.version.wrapping_add(1),
                        client_ip: choice,
                    },
                    true,
                ),
                other => {
                    let id = self.next_id;
                    self.next_id = self.next_id.wrapping_add(1).max(1);
                    (
                        Programmed {
                            upstream: route.upstream,
                            owner: route.owner.clone(),
                            route_id: id,
                            version: 1,
                            client_ip: choice,
                        },
                        other.is_some(),
                    )
                }
            };
            match self.write(port, &next) {
                Ok(()) => {
                    if next.client_ip.forced {
                        tracing::warn!(
                            port,
                            upstream = %next.upstream,
                            reason = %next.client_ip.reason,
                            "preserve_client_ip=on where the task's replies may not come back \
                             through the router: its connections may never open"
                        );
                    }
                    self.programmed.insert(port, next);
                    if changed {
                        report.changed += 1;
                    } else {
                        report.added += 1;
                    }
                }
                Err(e) => report
                    .failed
                    .push((RouteRef::Tcp(port), crate::error::error_chain(&e))),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn route(port: u16, ip: [u8; 4], upstream_port: u16) -> TcpRoute {
        TcpRoute {
            port,
            upstream: SocketAddrV4::new(Ipv4Addr::from(ip), upstream_port),
            owner: RouteOwner::new(EndpointId::new("t", String::new()), "n"),
            preserve_client_ip: None,
            allow: crate::client_allow::ClientAllow::Any,
        }
    }

    #[test]
    fn rejects_routes_no_backend_can_serve() {
        assert!(invalid_reason(10000, &route(10000, [10, 0, 0, 2], 80)).is_none());
        assert!(invalid_reason(10001, &route(10000, [10, 0, 0, 2], 80)).is_some());
        assert!(invalid_reason(0, &route(0, [10, 0, 0, 2], 80)).is_some());
        assert!(invalid_reason(10000, &route(10000, [10, 0, 0, 2], 0)).is_some());
        assert!(invalid_reason(10000, &route(10000, [0, 0, 0, 0], 80)).is_some());
        assert!(invalid_reason(10000, &route(10000, [127, 0, 0, 1], 80)).is_some());
        assert!(invalid_reason(10000, &route(10000, [224, 0, 0, 1], 80)).is_some());
        assert!(invalid_reason(10000, &route(10000, [255, 255, 255, 255], 80)).is_some());
    }
}
