//! Per-packet program cost through BPF_PROG_TEST_RUN (Katran's method): median ns per run of
//! each path minus an empty program's in the same run, for XDP and TC. Established paths loop
//! one buffer through a pair of entries that translate it back and forth with the TTL left
//! alone, so every pass is a real conntrack hit and redirect; the first packet of a connection
//! is one call per packet, each with a fresh tuple. A/B rows within the run show what the first
//! packet's parts cost: a SYN that evicts the oldest half-open connection or finds the ring
//! with room, with the handshake options of a Linux client (timestamps translated) or none, a
//! client allow-list programmed for another route or none at all; and an established segment
//! with timestamps on a connection that translates them or not.

use anyhow::{Context, Result};
use router_common::conntrack::{
    CtKey4, CtValue4, F_KEEP_TTL, F_PRESERVE_CLIENT, F_TO_CLIENT, NH_VALID, NH_XDP_CHECKED,
    NH_XDP_OK,
};
use router_common::stats::{Hook, StatReason};
use router_tests::packet::{TCP_ACK, TCP_SYN, Tcp4};
use router_tests::progtest_cases::net::{handshake_timestamps, segment_timestamps};
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
/// The timestamp offset of the established connection that translates its timestamps.
const TS_OFF: u32 = 0x1234_5678;

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

    /// A pair of entries that translate `a` into `b` and back, next hop cached, timestamps
    /// translated by `ts_off` (0: not).
    fn loop_pair(
        &mut self,
        a: CtKey4,
        b: CtKey4,
        dir: u8,
        egress: u32,
        macs: ([u8; 6], [u8; 6]),
        ts_off: u32,
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
            v.ts_off = ts_off;
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
        0,
    )?;
    b.loop_pair(
        key(n.backend, BACKEND_PORT, n.client, t2c_port),
        key(n.router, PORT, n.client, t2c_port),
        F_TO_CLIENT | F_PRESERVE_CLIENT,
        b.client_if,
        (n.client_mac, n.client_dev_mac),
        0,
    )?;
    let c2t = Tcp4::new(n.client, c2t_port, n.router, PORT, TCP_ACK)
        .payload(payload)
        .build();
    let t2c = Tcp4::new(n.backend, BACKEND_PORT, n.client, t2c_port, TCP_ACK)
        .payload(payload)
        .build();
    Ok((c2t, t2c))
}

/// Looping client→task pairs on client ports of their own, one translating timestamps by
/// [`TS_OFF`] and one not; returns their 1400-byte segments with a timestamp option.
fn timestamp_pairs(b: &mut Bench, payload: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let n = b.net.clone();
    let mut frames = Vec::new();
    for (port, ts_off) in [(CLIENT_PORT + 4, 0), (CLIENT_PORT + 5, TS_OFF)] {
        b.loop_pair(
            key(n.client, port, n.router, PORT),
            key(n.nat_source, port, n.backend, BACKEND_PORT),
            0,
            b.backend_if,
            (n.backend_mac, n.backend_dev_mac),
            ts_off,
        )?;
        let mut seg = Tcp4::new(n.client, port, n.router, PORT, TCP_ACK).payload(payload);
        seg.tcp_options = segment_timestamps(0x0100_0000, 0x0200_0000);
        frames.push(seg.build());
    }
    let translated = frames.pop().context("two frames")?;
    let untranslated = frames.pop().context("two frames")?;
    Ok((untranslated, translated))
}

/// The routes of the run: [`PORT`] to the backend, the ports that make both ends of the looping
/// pairs pass the port filter, and (`listed`) [`PORT_LISTED`] with a client allow-list.
fn bench_routes(backend: Ipv4Addr, listed: bool) -> BTreeMap<u16, TcpRoute> {
    let owner = RouteOwner::new(EndpointId::new("bench", String::new()), "bench");
    let route = |port: u16, up: u16, allow: ClientAllow| TcpRoute {
        port,
        upstream: SocketAddrV4::new(backend, up),
        owner: owner.clone(),
        preserve_client_ip: None,
        allow,
    };
    let mut routes = BTreeMap::new();
    for (port, up) in [
        (PORT, BACKEND_PORT),
        (BACKEND_PORT, PORT),
        (CLIENT_PORT, PORT),
    ] {
        routes.insert(port, route(port, up, ClientAllow::Any));
    }
    if listed {
        routes.insert(
            PORT_LISTED,
            route(PORT_LISTED, BACKEND_PORT, listed_clients()),
        );
    }
    routes
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
        dp.apply_routes(&bench_routes(addrs.backend, true))?;
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
            0,
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
            0,
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
        let (c2t_ts, c2t_ts_translated) = timestamp_pairs(&mut b, &payload)?;

        let mut costs = Vec::new();
        let cpus = allowed_cpus();
        for (i, (program, empty, name)) in [
            (Program::Xdp, Program::EmptyXdp, "xdp"),
            (Program::Tc, Program::EmptyTc, "tc"),
        ]
        .into_iter()
        .enumerate()
        {
            // Each program on a CPU of its own: its half-open ring starts empty, so its first
            // SYNs find room and the rest evict (the ring is per CPU).
            pin_to_cpu(&cpus, i);
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
                (
                    "established client→task, 1400 B with timestamps, not translated (ts_off 0)",
                    &c2t_ts,
                    b.client_if,
                ),
                (
                    "established client→task, 1400 B with timestamps, translated",
                    &c2t_ts_translated,
                    b.client_if,
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
            costs.extend(first_packet_rows(
                &mut b,
                program,
                empty,
                name,
                i as u32,
                new_connections,
            )?);
        }
        Ok(costs)
    })??;
    Ok(costs)
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let Ok(allowed) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect()
}

/// Pins the calling thread to the `i`-th of `cpus` (modulo their number); a failure only costs
/// the "ring with room" row its samples.
fn pin_to_cpu(cpus: &[usize], i: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let Some(&cpu) = cpus.get(i % cpus.len().max(1)) else {
        return;
    };
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = sched_setaffinity(Pid::from_raw(0), &set)
    {
        eprintln!("costs: could not pin to CPU {cpu}: {e}");
    }
}

/// SYNs per chunk of the first-packet rows: each chunk runs the rows with the allow-list
/// programmed SYN by SYN in turn, then the row without any list after the list is removed.
const CHUNK: u32 = 100;

/// One kind of first packet: to router `port`, with TCP options `options`, its fresh tuples
/// from the block `block` of client addresses and ports; what it measured so far.
struct Row {
    path: &'static str,
    port: u16,
    block: u32,
    options: Vec<u8>,
    per: Vec<f64>,
    floor: Vec<f64>,
    /// Whether each SYN evicted a half-open connection.
    evicted: Vec<bool>,
}

impl Row {
    fn new(path: &'static str, port: u16, block: u32, options: Vec<u8>) -> Row {
        Row {
            path,
            port,
            block,
            options,
            per: Vec::new(),
            floor: Vec::new(),
            evicted: Vec::new(),
        }
    }

    fn cost(&self, program: &'static str, room_only: bool) -> Cost {
        let pick = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(&self.evicted)
                .filter(|(_, e)| !room_only || !**e)
                .map(|(x, _)| *x)
                .collect()
        };
        let (m, e) = (median(&mut pick(&self.per)), median(&mut pick(&self.floor)));
        Cost {
            path: if room_only {
                "first packet, half-open ring with room (no eviction)"
            } else {
                self.path
            },
            program,
            median_ns: m,
            empty_ns: e,
            cost_ns: m - e,
            samples: Vec::new(),
        }
    }
}

/// The first-packet rows of `program` (its `empty` program the floor), `n` SYNs each, the rows
/// interleaved SYN by SYN (and chunk by chunk for the row without any allow-list), so that
/// drift on a shared machine falls on all of them alike. Tuples from blocks `first_block` +
/// 2 × row.
fn first_packet_rows(
    b: &mut Bench,
    program: Program,
    empty: Program,
    name: &'static str,
    first_block: u32,
    n: usize,
) -> Result<Vec<Cost>> {
    let block = |row: u32| first_block + 2 * row;
    let mut listed_rows = [
        Row::new(
            "first packet of a connection (SYN, fresh tuple)",
            PORT,
            block(0),
            Vec::new(),
        ),
        Row::new(
            "first packet, SYN with a Linux client's options (MSS, SACK, timestamps, WS)",
            PORT,
            block(1),
            handshake_timestamps(0x0100_0000, 0),
        ),
        Row::new(
            "first packet, route with a client allow-list of 33 CIDRs",
            PORT_LISTED,
            block(2),
            Vec::new(),
        ),
    ];
    let mut unlisted = Row::new(
        "first packet, no client allow-list on any route (empty trie)",
        PORT,
        block(3),
        Vec::new(),
    );
    let n = n as u32;
    let mut at = 0;
    while at < n {
        let end = (at + CHUNK).min(n);
        for i in at..end {
            for row in listed_rows.iter_mut() {
                one_syn(b, program, empty, row, i)?;
            }
        }
        b.dp.apply_routes(&bench_routes(b.net.backend, false))?;
        let chunk: Result<()> =
            (at..end).try_for_each(|i| one_syn(b, program, empty, &mut unlisted, i));
        b.dp.apply_routes(&bench_routes(b.net.backend, true))?;
        chunk?;
        at = end;
    }
    let mut rows: Vec<Cost> = listed_rows.iter().map(|r| r.cost(name, false)).collect();
    rows.insert(1, listed_rows[0].cost(name, true));
    rows.push(unlisted.cost(name, false));
    Ok(rows)
}

/// The first packet of connection `i` of `row` (a fresh tuple), one call, then the empty
/// program on the same frame; recorded in `row`.
fn one_syn(b: &mut Bench, program: Program, empty: Program, row: &mut Row, i: u32) -> Result<()> {
    let hook = if program == Program::Xdp {
        Hook::Xdp
    } else {
        Hook::Tc
    };
    // Block × 20 + up to 15 in the last octet: 12 blocks of 65 536 tuples, inside the listed /24.
    let client = Ipv4Addr::new(10, 70, 1, 10 + (row.block * 20 + (i >> 12)) as u8);
    let sport = 1024 + (i & 0x0fff) as u16 * 8 + row.block as u16;
    let mut syn = Tcp4::new(client, sport, b.net.router, row.port, TCP_SYN)
        .macs(b.net.client_mac, b.net.client_dev_mac);
    syn.tcp_options = row.options.clone();
    let syn = syn.build();
    let evicting = |b: &Bench| -> Result<u64> {
        Ok(b.dp.stat(hook, StatReason::NewConnectionEvicting)?.packets)
    };
    let before = evicting(b)?;
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
    row.per.push(r.per_run.as_nanos() as f64);
    row.evicted.push(evicting(b)? > before);
    let r = b.dp.test_run(empty, &syn, 1, Some(b.client_if))?;
    row.floor.push(r.per_run.as_nanos() as f64);
    Ok(())
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
