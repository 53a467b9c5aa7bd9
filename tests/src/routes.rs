//! TCP routes as the datapath tests program them: owned by a task named after the port.

use router_userspace::client_allow::ClientAllow;
use router_userspace::endpoint::EndpointId;
use router_userspace::routes::{PreserveClientIp, RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// `port` → `ip:backend_port`, owned by task `task-<port>`.
pub fn tcp_route(port: u16, ip: Ipv4Addr, backend_port: u16) -> TcpRoute {
    TcpRoute {
        port,
        upstream: SocketAddrV4::new(ip, backend_port),
        owner: RouteOwner::new(EndpointId::new(format!("task-{port}"), ""), "test"),
        preserve_client_ip: None,
        allow: ClientAllow::Any,
    }
}

/// The wanted set of `(port, ip, backend_port)` routes, each with `preserve_client_ip` set to
/// `mode`.
pub fn tcp_routes_in(
    list: &[(u16, Ipv4Addr, u16)],
    mode: PreserveClientIp,
) -> BTreeMap<u16, TcpRoute> {
    let mut routes = tcp_routes(list);
    for route in routes.values_mut() {
        route.preserve_client_ip = Some(mode);
    }
    routes
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
    set_allow(&mut routes, allow);
    routes
}

/// [`tcp_routes_in`] `mode` with the client allow-lists `allow`.
pub fn tcp_routes_with(
    list: &[(u16, Ipv4Addr, u16)],
    mode: PreserveClientIp,
    allow: &[(u16, String)],
) -> BTreeMap<u16, TcpRoute> {
    let mut routes = tcp_routes_in(list, mode);
    set_allow(&mut routes, allow);
    routes
}

fn set_allow(routes: &mut BTreeMap<u16, TcpRoute>, allow: &[(u16, String)]) {
    for (port, text) in allow {
        if let Some(route) = routes.get_mut(port) {
            route.allow = ClientAllow::parse(text).expect("a valid client allow-list");
        }
    }
}
