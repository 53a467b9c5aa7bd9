//! TCP routes as the datapath tests program them: owned by a task named after the port.

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
