//! Network topologies for datapath tests, each in namespaces the test owns (removed on drop).
//!
//! - [`ProgTestNet`]: one router namespace with two interfaces and permanent neighbour
//!   entries, so BPF_PROG_TEST_RUN frames get deterministic next hops and MAC addresses.
//! - [`ClientRouter`]: a client ns and a router ns linked by veth pairs.
//! - [`Topology`]: client ns — router ns — backend ns (and a second backend ns), veth pairs;
//!   optionally a container-like namespace behind a bridge in the router ns.

use crate::netns::{Netns, VethEnd, unique, veth};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A router namespace for BPF_PROG_TEST_RUN: `client_dev` (10.70.1.1/24) toward a client at
/// 10.70.1.2, `backend_dev` (10.70.2.1/24) toward a backend at 10.70.2.2; a second backend at
/// 10.70.2.3 has no neighbour entry. Forwarding is on (fib look-ups need it). Its addresses
/// ([`ProgTestAddrs`]) are its fields too.
pub struct ProgTestNet {
    pub ns: Netns,
    pub addrs: ProgTestAddrs,
}

/// The devices and addresses of a [`ProgTestNet`], usable inside it.
#[derive(Clone, Debug)]
pub struct ProgTestAddrs {
    pub client_dev: String,
    pub backend_dev: String,
    pub client_dev_mac: Mac,
    pub backend_dev_mac: Mac,
    pub router: Ipv4Addr,
    pub client: Ipv4Addr,
    pub client_mac: Mac,
    pub nat_source: Ipv4Addr,
    pub backend: Ipv4Addr,
    pub backend_mac: Mac,
    pub backend_unresolved: Ipv4Addr,
}

impl std::ops::Deref for ProgTestNet {
    type Target = ProgTestAddrs;

    fn deref(&self) -> &ProgTestAddrs {
        &self.addrs
    }
}

impl ProgTestNet {
    pub fn new() -> Result<ProgTestNet> {
        let ns = Netns::new("trpt")?;
        let net = ProgTestNet {
            ns,
            addrs: ProgTestAddrs {
                client_dev: "dclient".into(),
                backend_dev: "dbackend".into(),
                client_dev_mac: [0x02, 0x10, 0, 0, 0, 0x01],
                backend_dev_mac: [0x02, 0x10, 0, 0, 0, 0x02],
                router: Ipv4Addr::new(10, 70, 1, 1),
                client: Ipv4Addr::new(10, 70, 1, 2),
                client_mac: [0x02, 0x20, 0, 0, 0, 0x02],
                nat_source: Ipv4Addr::new(10, 70, 2, 1),
                backend: Ipv4Addr::new(10, 70, 2, 2),
                backend_mac: [0x02, 0x30, 0, 0, 0, 0x02],
                backend_unresolved: Ipv4Addr::new(10, 70, 2, 3),
            },
        };
        for (dev, mac, addr) in [
            (&net.client_dev, net.client_dev_mac, "10.70.1.1/24"),
            (&net.backend_dev, net.backend_dev_mac, "10.70.2.1/24"),
        ] {
            // A veth pair with both ends here (this kernel has no dummy driver).
            let peer = format!("{dev}p");
            net.ns
                .ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer])?;
            net.ns.ip(&["link", "set", &peer, "up"])?;
            net.ns
                .ip(&["link", "set", dev, "address", &mac_str(&mac)])?;
            net.ns.ip(&["addr", "add", addr, "dev", dev])?;
            net.ns.ip(&["link", "set", dev, "up"])?;
        }
        for (ip, mac, dev) in [
            (net.client, net.client_mac, &net.client_dev),
            (net.backend, net.backend_mac, &net.backend_dev),
        ] {
            net.ns.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac_str(&mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        net.ns.sysctl("net.ipv4.ip_forward=1")?;
        Ok(net)
    }

    /// The index of a device in the namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let out = self
            .ns
            .run("cat", &[&format!("/sys/class/net/{dev}/ifindex")])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("ifindex of {dev}"))
    }
}

/// A client namespace and a router namespace linked by one veth pair per subnet: in
/// `10.<n>.0.0/24` the client's end is `.1` and the router's end `.2`.
pub struct ClientRouter {
    pub client: Netns,
    pub router: Netns,
    /// `(client end, router end)` of each link, in the order of the subnets.
    pub links: Vec<(VethEnd, VethEnd)>,
}

impl ClientRouter {
    pub fn new(subnets: &[u8]) -> Result<ClientRouter> {
        let client = Netns::new("trlc")?;
        let router = Netns::new("trlr")?;
        let links = subnets
            .iter()
            .map(|&n| {
                veth(
                    &client,
                    Ipv4Addr::new(10, n, 0, 1),
                    &router,
                    Ipv4Addr::new(10, n, 0, 2),
                )
            })
            .collect::<Result<_>>()?;
        Ok(ClientRouter {
            client,
            router,
            links,
        })
    }

    /// The router's end of link `i`.
    pub fn router_end(&self, i: usize) -> &VethEnd {
        &self.links[i].1
    }
}

/// Client, router and two backends in their own namespaces, linked by veth pairs:
/// client 10.81.1.2 — 10.81.1.1 router 10.81.2.1 — 10.81.2.2 backend, router 10.81.3.1 —
/// 10.81.3.2 backend2. The router forwards (fib look-ups need it).
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub backend: Netns,
    pub backend2: Netns,
    pub client_end: VethEnd,
    pub router_client: VethEnd,
    pub router_backend: VethEnd,
    pub backend_end: VethEnd,
    pub router_backend2: VethEnd,
    pub backend2_end: VethEnd,
    /// A namespace behind a bridge in the router ns (see [`Topology::add_bridged_backend`]).
    pub bridged: Option<Bridged>,
}

/// A container-like backend: its veth's router end is a port of bridge `bridge` (10.81.4.1),
/// its own end has 10.81.4.2.
pub struct Bridged {
    pub ns: Netns,
    pub bridge: String,
    pub addr: Ipv4Addr,
    pub dev: String,
}

impl Topology {
    pub fn new() -> Result<Topology> {
        let client = Netns::new("trc")?;
        let router = Netns::new("trr")?;
        let backend = Netns::new("trb")?;
        let backend2 = Netns::new("trb")?;
        let (client_end, router_client) = veth(
            &client,
            Ipv4Addr::new(10, 81, 1, 2),
            &router,
            Ipv4Addr::new(10, 81, 1, 1),
        )?;
        let (router_backend, backend_end) = veth(
            &router,
            Ipv4Addr::new(10, 81, 2, 1),
            &backend,
            Ipv4Addr::new(10, 81, 2, 2),
        )?;
        let (router_backend2, backend2_end) = veth(
            &router,
            Ipv4Addr::new(10, 81, 3, 1),
            &backend2,
            Ipv4Addr::new(10, 81, 3, 2),
        )?;
        router.sysctl("net.ipv4.ip_forward=1")?;
        Ok(Topology {
            client,
            router,
            backend,
            backend2,
            client_end,
            router_client,
            router_backend,
            backend_end,
            router_backend2,
            backend2_end,
            bridged: None,
        })
    }

    /// The router's address clients connect to.
    pub fn router_addr(&self) -> Ipv4Addr {
        self.router_client.addr
    }

    /// Routes the client and the first backend to each other's subnet through the router, so
    /// they can talk without NAT: plain kernel forwarding, the ceiling other paths are measured
    /// against.
    pub fn route_client_and_backend_directly(&self) -> Result<()> {
        let subnet = |a: Ipv4Addr| format!("{}/24", Ipv4Addr::from(u32::from(a) & 0xffff_ff00));
        for (ns, to, via) in [
            (&self.client, self.backend_end.addr, self.router_client.addr),
            (
                &self.backend,
                self.client_end.addr,
                self.router_backend.addr,
            ),
        ] {
            ns.ip(&["route", "add", &subnet(to), "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// Adds a container-like backend behind a bridge in the router namespace.
    pub fn add_bridged_backend(&mut self) -> Result<&Bridged> {
        let bridge = unique("tbr");
        self.router
            .ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.router
            .ip(&["addr", "add", "10.81.4.1/24", "dev", &bridge])?;
        self.router.ip(&["link", "set", &bridge, "up"])?;
        let ns = Netns::new("trk")?;
        let (port, dev) = (unique("tvp"), unique("tvk"));
        self.router.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", &dev, "netns", &ns.name,
        ])?;
        self.router.ip(&["link", "set", &port, "master", &bridge])?;
        self.router.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", "10.81.4.2/24", "dev", &dev])?;
        ns.ip(&["link", "set", &dev, "up"])?;
        self.bridged = Some(Bridged {
            ns,
            bridge,
            addr: Ipv4Addr::new(10, 81, 4, 2),
            dev,
        });
        self.bridged.as_ref().context("bridged backend just added")
    }

    /// The sending ends toward the router (client and backends), as a NIC-fed router sees them.
    pub fn senders(&self) -> [(&Netns, &str); 3] {
        [
            (&self.client, self.client_end.dev.as_str()),
            (&self.backend, self.backend_end.dev.as_str()),
            (&self.backend2, self.backend2_end.dev.as_str()),
        ]
    }

    /// Prepares the veth peers of router interfaces in native XDP mode: XDP redirects into a
    /// veth are lost unless its peer runs XDP or has GRO on; and XDP cannot see the checksum
    /// state of locally generated packets, so the senders compute full checksums (`tx off`).
    pub fn prepare_for_xdp(&self) -> Result<()> {
        for (ns, dev) in self.senders() {
            ns.tx_offload(dev, false)?;
            ns.run("ethtool", &["-K", dev, "gro", "on"])?;
        }
        Ok(())
    }
}
