//! TCP routes as the datapath tests program them: owned by a task named after the port.

use router_userspace::client_allow::ClientAllow;
use router_userspace::endpoint::EndpointId;
use router_userspace::routes::{RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// `port` → `ip:backend_port`, owned by task `task-<port>`.
pub fn tcp_route(port: u16, ip: Ipv4Addr, backend_port: u16) -> TcpRoute {
    TcpRoute {
        port,
        upstream: SocketAddrV4::new(ip, backend_port),
        owner: RouteOwner::new(EndpointId::new(format!("task-{port}"), ""), "test"),
        allow: ClientAllow::Any,
    }
}

/// The wanted set of `(port, ip, backend_port)` routes.
pub fn tcp_routes(list: &[(u16, Ipv4Addr, u16)]) -> BTreeMap<u16, TcpRoute> {
    list.iter()
        .map(|&(port, ip, backend_port)| (port, tcp_route(port, ip, backend_port)))
        .collect()
}

/// [`tcp_routes`] with the client allow-lists `allow` (by router port; the rest admit all).
pub fn tcp_routes_allowing(
    list: &[(u16, Ipv4Addr, u16)],
    allow: &[(u16, String)],
) -> BTreeMap<u16, TcpRoute> {
    let mut routes = tcp_routes(list);
    for (port, text) in allow {
        if let Some(route) = routes.get_mut(port) {
            route.allow = ClientAllow::parse(text).expect("a valid client allow-list");
        }
    }
    routes
}
