//! Per-packet program cost through BPF_PROG_TEST_RUN (Katran's method): median ns per run of
//! each path minus an empty program's in the same run, for XDP and TC. Established paths loop
//! one buffer through a pair of entries that translate it back and forth with the TTL left
//! alone, so every pass is a real conntrack hit and redirect; the first packet of a connection
//! is one call per packet, each with a fresh tuple.

use anyhow::{Context, Result};
use router_common::conntrack::{
    CtKey4, CtValue4, F_KEEP_TTL, F_PRESERVE_CLIENT, F_TO_CLIENT, NH_VALID, NH_XDP_CHECKED,
    NH_XDP_OK,
};
use router_tests::packet::{TCP_ACK, TCP_SYN, Tcp4};
use router_tests::topology::ProgTestNet;
use router_userspace::client_allow::ClientAllow;
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::{AttachMode, DEFAULT_NAT_SOURCE_PORTS, Datapath, Program};
use router_userspace::endpoint::EndpointId;
use router_userspace::routes::{RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

const PORT: u16 = 20000;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;
/// A router port whose route has a client allow-list.
const PORT_LISTED: u16 = 20010;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub path: &'static str,
    pub program: &'static str,
    /// Median ns per run, raw.
    pub median_ns: f64,
    /// Median ns per run of the empty program, same frame.
    pub empty_ns: f64,
    /// `median_ns - empty_ns`.
    pub cost_ns: f64,
    pub samples: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn key(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16) -> CtKey4 {
    CtKey4 {
        saddr: raw(saddr),
        daddr: raw(daddr),
        sport: sport.to_be(),
        dport: dport.to_be(),
    }
}

struct Bench {
    dp: Datapath,
    client_if: u32,
    backend_if: u32,
    net: Addrs,
}

#[derive(Clone)]
struct Addrs {
    router: Ipv4Addr,
    client: Ipv4Addr,
    nat_source: Ipv4Addr,
    backend: Ipv4Addr,
    client_mac: [u8; 6],
    backend_mac: [u8; 6],
    client_dev_mac: [u8; 6],
    backend_dev_mac: [u8; 6],
}

impl Bench {
    /// Median of `samples` runs of `repeat` each (the kernel reports the mean per run).
    fn timed(
        &mut self,
        p: Program,
        frame: &[u8],
        repeat: u32,
        samples: usize,
        ifindex: u32,
    ) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            let r = self.dp.test_run(p, frame, repeat, Some(ifindex))?;
            out.push(r.per_run.as_nanos() as f64);
        }
        Ok(out)
    }

    /// A pair of entries that translate `a` into `b` and back, next hop cached.
    fn loop_pair(
        &mut self,
        a: CtKey4,
        b: CtKey4,
        dir: u8,
        egress: u32,
        macs: ([u8; 6], [u8; 6]),
    ) -> Result<()> {
        let epoch = self.dp.settings().nh_epoch;
        for (from, to) in [(a, b), (b, a)] {
            let mut v = CtValue4::rewrite(&from, &to, F_KEEP_TTL | dir);
            v.nh_ifindex = egress;
            v.nh_dmac = macs.0;
            v.nh_smac = macs.1;
            v.nh_mtu = 1500;
            v.nh_epoch = epoch;
            v.flags |= NH_VALID | NH_XDP_CHECKED | NH_XDP_OK;
            v.route_id = 1;
            self.dp.insert_conntrack_entry(from, v)?;
        }
        Ok(())
    }
}

/// Looping pairs of a connection in destination-only mode (`F_PRESERVE_CLIENT`: only the
/// destination rewritten toward the task, only the source back), on client ports of their own;
/// returns the client's and the task's 1400-byte segments.
fn destination_only_pairs(b: &mut Bench, payload: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let n = b.net.clone();
    let (c2t_port, t2c_port) = (CLIENT_PORT + 2, CLIENT_PORT + 3);
    b.loop_pair(
        key(n.client, c2t_port, n.router, PORT),
        key(n.client, c2t_port, n.backend, BACKEND_PORT),
        F_PRESERVE_CLIENT,
        b.backend_if,
        (n.backend_mac, n.backend_dev_mac),
    )?;
    b.loop_pair(
        key(n.backend, BACKEND_PORT, n.client, t2c_port),
        key(n.router, PORT, n.client, t2c_port),
        F_TO_CLIENT | F_PRESERVE_CLIENT,
        b.client_if,
        (n.client_mac, n.client_dev_mac),
    )?;
    let c2t = Tcp4::new(n.client, c2t_port, n.router, PORT, TCP_ACK)
        .payload(payload)
        .build();
    let t2c = Tcp4::new(n.backend, BACKEND_PORT, n.client, t2c_port, TCP_ACK)
        .payload(payload)
        .build();
    Ok((c2t, t2c))
}

/// Measures every path for both hooks; `repeat` runs per sample, `samples` samples.
pub fn measure(repeat: u32, samples: usize, new_connections: usize) -> Result<Vec<Cost>> {
    let t = ProgTestNet::new().context("bench namespace")?;
    let client_if = t.ifindex(&t.client_dev)?;
    let backend_if = t.ifindex(&t.backend_dev)?;
    let addrs = Addrs {
        router: t.router,
        client: t.client,
        nat_source: t.nat_source,
        backend: t.backend,
        client_mac: t.client_mac,
        backend_mac: t.backend_mac,
        client_dev_mac: t.client_dev_mac,
        backend_dev_mac: t.backend_dev_mac,
    };
    let (client_dev, backend_dev) = (t.client_dev.clone(), t.backend_dev.clone());
    let costs = t.ns.enter(move || -> Result<Vec<Cost>> {
        let cfg = DatapathConfig {
            kind: DatapathKind::Ebpf(AttachMode::Tc),
            interfaces: Vec::new(),
            bpffs: std::env::temp_dir(),
            max_connections: (new_connections as u32 * 4 + 1024).max(4096),
            conntrack_pressure: router_userspace::datapath::Pressure::default(),
            router_addresses: vec![addrs.router],
            nat_source_ports: DEFAULT_NAT_SOURCE_PORTS,
        };
        let mut dp = Datapath::open(&cfg)?;
        dp.add_xdp_target(&client_dev)?;
        dp.add_xdp_target(&backend_dev)?;
        let owner = RouteOwner::new(EndpointId::new("bench", String::new()), "bench");
        // Routes make both ends of the looping pairs pass the port filter.
        let mut routes = BTreeMap::new();
        for (port, up) in [
            (PORT, BACKEND_PORT),
            (BACKEND_PORT, PORT),
            (CLIENT_PORT, PORT),
        ] {
            routes.insert(
                port,
                TcpRoute {
                    port,
                    upstream: SocketAddrV4::new(addrs.backend, up),
                    owner: owner.clone(),
                    preserve_client_ip: None,
                    allow: ClientAllow::Any,
                },
            );
        }
        routes.insert(
            PORT_LISTED,
            TcpRoute {
                port: PORT_LISTED,
                upstream: SocketAddrV4::new(addrs.backend, BACKEND_PORT),
                owner: owner.clone(),
                preserve_client_ip: None,
                allow: listed_clients(),
            },
        );
        dp.apply_routes(&routes)?;
        let mut b = Bench {
            dp,
            client_if,
            backend_if,
            net: addrs.clone(),
        };
        let n = b.net.clone();
        // Client → task: the client's tuple and the one toward the backend.
        let c2t_in = key(n.client, CLIENT_PORT, n.router, PORT);
        let c2t_out = key(n.nat_source, CLIENT_PORT, n.backend, BACKEND_PORT);
        b.loop_pair(
            c2t_in,
            c2t_out,
            0,
            b.backend_if,
            (n.backend_mac, n.backend_dev_mac),
        )?;
        // Task → client, on another client port.
        let t2c_in = key(n.backend, BACKEND_PORT, n.nat_source, CLIENT_PORT + 1);
        let t2c_out = key(n.router, PORT, n.client, CLIENT_PORT + 1);
        b.loop_pair(
            t2c_in,
            t2c_out,
            F_TO_CLIENT,
            b.client_if,
            (n.client_mac, n.client_dev_mac),
        )?;

        let payload = vec![0x5au8; 1400];
        let c2t = Tcp4::new(n.client, CLIENT_PORT, n.router, PORT, TCP_ACK)
            .payload(&payload)
            .build();
        let t2c = Tcp4::new(
            n.backend,
            BACKEND_PORT,
            n.nat_source,
            CLIENT_PORT + 1,
            TCP_ACK,
        )
        .payload(&payload)
        .build();
        let other = Tcp4::new(n.client, 50000, n.router, 22, TCP_ACK).build();
        let (c2t_kept, t2c_kept) = destination_only_pairs(&mut b, &payload)?;

        let mut costs = Vec::new();
        for (program, empty, name) in [
            (Program::Xdp, Program::EmptyXdp, "xdp"),
            (Program::Tc, Program::EmptyTc, "tc"),
        ] {
            for (path, frame, ifindex) in [
                ("not for the range (TCP to port 22)", &other, b.client_if),
                ("established client→task, 1400 B", &c2t, b.client_if),
                ("established task→client, 1400 B", &t2c, b.backend_if),
                (
                    "established client→task, client address kept",
                    &c2t_kept,
                    b.client_if,
                ),
                (
                    "established task→client, client address kept",
                    &t2c_kept,
                    b.backend_if,
                ),
            ] {
                let mut samples_v = b.timed(program, frame, repeat, samples, ifindex)?;
                let mut floor = b.timed(empty, frame, repeat, samples, ifindex)?;
                let m = median(&mut samples_v);
                let e = median(&mut floor);
                costs.push(Cost {
                    path,
                    program: name,
                    median_ns: m,
                    empty_ns: e,
                    cost_ns: m - e,
                    samples: samples_v,
                });
            }
            // First packet of a connection: one call per packet, each a fresh tuple.
            let tuples = if program == Program::Xdp { 0 } else { 1 };
            let (m, e) = first_packet(&mut b, program, empty, PORT, tuples, new_connections)?;
            costs.push(Cost {
                path: "first packet of a connection (SYN, fresh tuple)",
                program: name,
                median_ns: m,
                empty_ns: e,
                cost_ns: m - e,
                samples: Vec::new(),
            });
            let (m, e) = first_packet(
                &mut b,
                program,
                empty,
                PORT_LISTED,
                tuples + 2,
                new_connections,
            )?;
            costs.push(Cost {
                path: "first packet, route with a client allow-list of 33 CIDRs",
                program: name,
                median_ns: m,
                empty_ns: e,
                cost_ns: m - e,
                samples: Vec::new(),
            });
        }
        Ok(costs)
    })??;
    Ok(costs)
}

/// Median ns per run of the first packet of `n` connections to router `port` (each a fresh
/// tuple from the block `tuples` of client addresses and ports), and of the empty program on
/// the same frames.
fn first_packet(
    b: &mut Bench,
    program: Program,
    empty: Program,
    port: u16,
    tuples: u32,
    n: usize,
) -> Result<(f64, f64)> {
    let mut per = Vec::with_capacity(n);
    let mut floor = Vec::with_capacity(n);
    let base = tuples << 16;
    for i in 0..n as u32 {
        let id = base + i;
        let client = Ipv4Addr::new(
            10,
            70,
            1,
            10 + (id >> 16) as u8 * 50 + ((id >> 12) & 0x0f) as u8,
        );
        let sport = 1024 + (id & 0x0fff) as u16 * 8 + (id >> 16) as u16;
        let syn = Tcp4::new(client, sport, b.net.router, port, TCP_SYN)
            .macs(b.net.client_mac, b.net.client_dev_mac)
            .build();
        let r = b.dp.test_run(program, &syn, 1, Some(b.client_if))?;
        if r.retval != if program == Program::Xdp { 4 } else { 7 } {
            let stats: Vec<String> =
                b.dp.stats()?
                    .into_iter()
                    .filter(|(_, _, v)| v.packets > 0)
                    .map(|(h, r, v)| format!("{}/{}={}", h.name(), r.name(), v.packets))
                    .collect();
            anyhow::bail!(
                "SYN {i} ({client}:{sport}) was not forwarded (verdict {}); counters: {}",
                r.retval,
                stats.join(" ")
            );
        }
        per.push(r.per_run.as_nanos() as f64);
        let r = b.dp.test_run(empty, &syn, 1, Some(b.client_if))?;
        floor.push(r.per_run.as_nanos() as f64);
    }
    Ok((median(&mut per), median(&mut floor)))
}

/// A client allow-list as a VPN's and offices' ranges make one: the bench clients' /24 among
/// 32 other CIDRs.
fn listed_clients() -> ClientAllow {
    let mut text = String::from("10.70.1.0/24");
    for i in 0..32u8 {
        text.push_str(&format!(",172.{}.{}.0/24", 16 + i / 8, i * 8));
    }
    ClientAllow::parse(&text).expect("a valid list")
}
