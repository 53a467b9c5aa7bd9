//! Whether a backend's replies to any client address come back through this host: the check
//! behind `ROUTER_PRESERVE_CLIENT_IP=auto`. With destination-only NAT the backend answers the
//! client's own address; only a backend whose way to every address runs through the router
//! delivers those answers to the datapath (anything else sends them past it, and the client
//! drops them: the connection never opens).
//!
//! What the router can see is its own route to the backend (`RTM_GETROUTE`, the kernel's own
//! answer for the address) and the device it leaves by (`RTM_GETLINK`). A backend directly on a
//! veth, netkit or bridge of this host is a container or VM whose gateway is this host (the
//! docker-mode agent layout: the bridge address is the containers' default route). A backend
//! reached through a gateway, or on a NIC's segment, has a default route the router cannot see
//! and may not be this host: full NAT. The backend's own routing table is out of sight, so
//! `auto` is a judgement on the layout, not a proof; `on` forces the mode where an operator
//! knows better (policy routing on the remote host), with a warning.

use super::netlink::{self, NLM_F_REQUEST, attributes, malformed, u32_at};
use super::peer_devs::{Link, dump_links};
use crate::routes::{ClientIpChoice, PreserveClientIp, TcpRoute};
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

/// Device kinds whose far side is a container or VM on this host.
const LOCAL_KINDS: &[&str] = &["veth", "netkit", "bridge"];

/// The kernel's route to a backend address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTo {
    /// `RTN_LOCAL`: the address is this host's own.
    pub local: bool,
    pub gateway: Option<Ipv4Addr>,
    /// The device it leaves by, with its kind (`None`: no `IFLA_INFO_KIND`, a NIC).
    pub dev: String,
    pub dev_kind: Option<String>,
}

/// Whether replies from a backend reached by `route` come back through this host; the reason
/// either way.
pub fn returns_through_router(route: &RouteTo) -> (bool, String) {
    let kind = route.dev_kind.as_deref().unwrap_or("no kind: a NIC");
    if route.local {
        return (false, "the backend is an address of this host".into());
    }
    if let Some(gw) = route.gateway {
        return (
            false,
            format!(
                "reached via gateway {gw} on {}: its replies may take another way",
                route.dev
            ),
        );
    }
    if route
        .dev_kind
        .as_deref()
        .is_some_and(|k| LOCAL_KINDS.contains(&k))
    {
        return (
            true,
            format!(
                "directly on {} ({kind}) of this host: its replies come back through the router",
                route.dev
            ),
        );
    }
    (
        false,
        format!(
            "directly on {} ({kind}): a host on that segment may answer by another gateway",
            route.dev
        ),
    )
}

/// The choice for every route of `wanted` (`default` for those that name none), checking the
/// return path of `auto` and `on` routes in network namespace `netns` (the calling thread's
/// when `None`): the route look-ups must see the namespace the datapath serves.
pub fn choose_all(
    wanted: &BTreeMap<u16, TcpRoute>,
    default: PreserveClientIp,
    netns: Option<&OwnedFd>,
) -> BTreeMap<u16, ClientIpChoice> {
    let settings: Vec<(u16, PreserveClientIp, Ipv4Addr)> = wanted
        .iter()
        .map(|(&port, r)| {
            let setting = r.preserve_client_ip.unwrap_or(default);
            (port, setting, *r.upstream.ip())
        })
        .collect();
    let checked = settings.iter().any(|(_, s, _)| *s != PreserveClientIp::Off);
    let look = || -> Result<BTreeMap<u16, ClientIpChoice>, String> {
        let links = if checked {
            dump_links().map_err(|e| format!("listing links: {e}"))?
        } else {
            Vec::new()
        };
        Ok(settings
            .iter()
            .map(|&(port, setting, ip)| {
                let check = match setting {
                    PreserveClientIp::Off => Err("not checked".to_string()),
                    _ => lookup(ip)
                        .and_then(|(ty, oif, gw)| describe(ty, oif, gw, &links))
                        .map_err(|e| format!("route to {ip}: {e}")),
                };
                (
                    port,
                    choose(setting, check.as_ref().map_err(String::as_str)),
                )
            })
            .collect())
    };
    let all = match netns {
        Some(ns) if checked => super::netns::run_in(ns, look).and_then(|r| r),
        _ => look(),
    };
    all.unwrap_or_else(|e| {
        settings
            .iter()
            .map(|&(port, setting, _)| (port, choose(setting, Err(&e))))
            .collect()
    })
}

/// The choice for `setting` given the return-path check (`Err`: the check failed, why).
pub fn choose(setting: PreserveClientIp, check: Result<&RouteTo, &str>) -> ClientIpChoice {
    let (safe, why) = match check {
        Ok(route) => returns_through_router(route),
        Err(e) => (false, format!("return path unknown: {e}")),
    };
    let (preserved, reason) = match setting {
        PreserveClientIp::Off => return ClientIpChoice::full_nat(),
        PreserveClientIp::Auto => (safe, format!("auto: {why}")),
        PreserveClientIp::On if safe => (true, format!("on: {why}")),
        PreserveClientIp::On => (true, format!("on, forced although {why}")),
    };
    ClientIpChoice {
        setting,
        preserved,
        forced: setting == PreserveClientIp::On && !safe,
        reason,
    }
}

// rtnetlink (linux/rtnetlink.h).
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTMSG: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTN_LOCAL: u8 = 2;
const RTN_UNICAST: u8 = 1;

/// The kernel's route to `addr` in the calling thread's network namespace, as `ip route get`
/// shows it, with the device's kind.
pub fn route_to(addr: Ipv4Addr) -> io::Result<RouteTo> {
    let (ty, oif, gateway) = lookup(addr)?;
    let links = dump_links()?;
    describe(ty, oif, gateway, &links)
}

/// A route answer's parts and the namespace's links as a [`RouteTo`].
fn describe(ty: u8, oif: u32, gateway: Option<Ipv4Addr>, links: &[Link]) -> io::Result<RouteTo> {
    if ty != RTN_LOCAL && ty != RTN_UNICAST {
        return Err(io::Error::other(format!("route type {ty}, not unicast")));
    }
    let link = links.iter().find(|l| l.index == oif);
    Ok(RouteTo {
        local: ty == RTN_LOCAL,
        gateway,
        dev: link.map_or_else(|| format!("ifindex {oif}"), |l| l.name.clone()),
        dev_kind: link.and_then(|l| l.kind.clone()),
    })
}

/// `RTM_GETROUTE` for one address: the route's type, output interface and gateway.
fn lookup(addr: Ipv4Addr) -> io::Result<(u8, u32, Option<Ipv4Addr>)> {
    let seq = 1;
    let mut body = vec![0u8; RTMSG];
    body[0] = libc::AF_INET as u8;
    body[1] = 32;
    body.extend(netlink::attr(RTA_DST, &addr.octets()));
    let request = netlink::message(RTM_GETROUTE, NLM_F_REQUEST, seq, &body);
    let mut found = None;
    // Not a dump: the answer is one route message (or an error), no NLMSG_DONE.
    netlink::exchange(libc::NETLINK_ROUTE, &request, |datagram| {
        netlink::answer_datagram(datagram, seq, |kind, body| {
            if kind == RTM_NEWROUTE {
                found = Some(parse_route(body)?);
            }
            Ok(())
        })
        .map(|done| done || found.is_some())
    })?;
    found.ok_or_else(|| malformed("no route message"))
}

/// One `RTM_NEWROUTE` body: `rtmsg`, then attributes.
fn parse_route(body: &[u8]) -> io::Result<(u8, u32, Option<Ipv4Addr>)> {
    let ty = *body.get(7).ok_or_else(|| malformed("rtmsg"))?;
    let attrs = body.get(RTMSG..).ok_or_else(|| malformed("rtmsg"))?;
    let (mut oif, mut gateway) = (0, None);
    for attr in attributes(attrs) {
        let (kind, payload) = attr?;
        match kind {
            RTA_OIF => oif = u32_at(payload, 0).ok_or_else(|| malformed("RTA_OIF"))?,
            RTA_GATEWAY => {
                let octets: [u8; 4] = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| malformed("RTA_GATEWAY"))?;
                gateway = Some(Ipv4Addr::from(octets));
            }
            _ => {}
        }
    }
    Ok((ty, oif, gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(String::from),
            link_netnsid: None,
        }
    }

    fn route(gateway: Option<[u8; 4]>, dev_kind: Option<&str>) -> RouteTo {
        RouteTo {
            local: false,
            gateway: gateway.map(Ipv4Addr::from),
            dev: "d".into(),
            dev_kind: dev_kind.map(String::from),
        }
    }

    #[test]
    fn only_backends_directly_on_container_links_return_through_the_router() {
        assert!(returns_through_router(&route(None, Some("veth"))).0);
        assert!(returns_through_router(&route(None, Some("bridge"))).0);
        assert!(returns_through_router(&route(None, Some("netkit"))).0);
        assert!(!returns_through_router(&route(Some([10, 0, 0, 1]), Some("veth"))).0);
        assert!(!returns_through_router(&route(None, None)).0);
        assert!(!returns_through_router(&route(None, Some("vxlan"))).0);
        let local = RouteTo {
            local: true,
            ..route(None, Some("veth"))
        };
        assert!(!returns_through_router(&local).0);
    }

    #[test]
    fn the_setting_decides_with_the_check() {
        let safe = route(None, Some("bridge"));
        let remote = route(Some([10, 0, 0, 1]), None);
        let off = choose(PreserveClientIp::Off, Ok(&safe));
        assert!(!off.preserved);
        assert_eq!(off.mode(), "translated");
        assert!(choose(PreserveClientIp::Auto, Ok(&safe)).preserved);
        let auto_remote = choose(PreserveClientIp::Auto, Ok(&remote));
        assert!(!auto_remote.preserved);
        assert!(
            auto_remote.reason.contains("gateway 10.0.0.1"),
            "{auto_remote:?}"
        );
        assert!(!choose(PreserveClientIp::Auto, Err("no route")).preserved);
        let forced = choose(PreserveClientIp::On, Ok(&remote));
        assert!(forced.preserved);
        assert!(
            forced.forced && forced.reason.starts_with("on, forced"),
            "{forced:?}"
        );
        assert!(!choose(PreserveClientIp::On, Ok(&safe)).forced);
        assert_eq!(forced.mode(), "preserved");
    }

    #[test]
    fn route_answers_are_read_with_their_device() {
        let mut body = vec![0u8; RTMSG];
        body[0] = libc::AF_INET as u8;
        body[7] = RTN_UNICAST;
        body.extend(netlink::attr(RTA_OIF, &7u32.to_ne_bytes()));
        body.extend(netlink::attr(RTA_GATEWAY, &[10, 1, 2, 3]));
        let (ty, oif, gw) = parse_route(&body).expect("parse");
        assert_eq!(
            (ty, oif, gw),
            (RTN_UNICAST, 7, Some(Ipv4Addr::new(10, 1, 2, 3)))
        );
        let links = [link(7, "br0", Some("bridge"))];
        let to = describe(ty, oif, gw, &links).expect("describe");
        assert_eq!(
            (to.dev.as_str(), to.dev_kind.as_deref()),
            ("br0", Some("bridge"))
        );
        assert!(
            describe(7, oif, None, &links).is_err(),
            "unreachable is no route"
        );
        assert!(parse_route(&[0; 4]).is_err());
    }

    #[test]
    fn the_kernel_answers_for_loopback() {
        let to = route_to(Ipv4Addr::LOCALHOST).expect("route to 127.0.0.1");
        assert!(to.local, "{to:?}");
        assert!(!returns_through_router(&to).0);
    }
}
