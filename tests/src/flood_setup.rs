//! What a SYN-flood test or bench sets up in a [`Topology`]: the spoofed subnet routed back
//! into the client namespace (where nothing answers, so the answers to spoofed SYNs end there),
//! and the datapath on the router's two links with one route.

use crate::syn_flood::SPOOFED_SUBNET;
use crate::topology::Topology;
use anyhow::{Context, Result};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::options::NatSourcePorts;
use router_userspace::datapath::sweeper::{DEFAULT_INTERVAL, Sweeper};
use router_userspace::datapath::{
    AttachMode, DEFAULT_NAT_SOURCE_PORTS, Datapath, Pressure, SharedDatapath,
};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::Path;

/// Routes [`SPOOFED_SUBNET`] from the router namespace to the client namespace.
pub fn route_spoofed_subnet(t: &Topology) -> Result<()> {
    let (subnet, prefix) = SPOOFED_SUBNET;
    t.router
        .ip(&[
            "route",
            "add",
            &format!("{subnet}/{prefix}"),
            "via",
            &t.client_end.addr.to_string(),
        ])
        .map(|_| ())
}

/// Opens the datapath (`auto`: TC on veth) on the router's links toward the client and the
/// first backend, with a table of `max_connections`, and routes router port `port` to
/// `backend`.
pub fn open_datapath(
    t: &Topology,
    max_connections: u32,
    bpffs: &Path,
    port: u16,
    backend: SocketAddrV4,
) -> Result<Datapath> {
    open_datapath_with_nat_ports(
        t,
        max_connections,
        bpffs,
        port,
        backend,
        DEFAULT_NAT_SOURCE_PORTS,
    )
}

/// [`open_datapath`] as the daemon runs it: shared, with its sweeper at the default interval.
pub fn run_datapath(
    t: &Topology,
    max_connections: u32,
    bpffs: &Path,
    port: u16,
    backend: SocketAddrV4,
) -> Result<(SharedDatapath, Sweeper)> {
    share_and_sweep(open_datapath(t, max_connections, bpffs, port, backend)?)
}

/// An opened datapath as the daemon runs it: shared, with its sweeper at the default interval.
pub fn share_and_sweep(dp: Datapath) -> Result<(SharedDatapath, Sweeper)> {
    let dp = SharedDatapath::new(dp);
    let sweeper = Sweeper::spawn(dp.clone(), DEFAULT_INTERVAL, |_| {})?;
    Ok((dp, sweeper))
}

/// [`open_datapath`] with the NAT source ports `nat_source_ports`.
pub fn open_datapath_with_nat_ports(
    t: &Topology,
    max_connections: u32,
    bpffs: &Path,
    port: u16,
    backend: SocketAddrV4,
    nat_source_ports: NatSourcePorts,
) -> Result<Datapath> {
    let cfg = DatapathConfig {
        kind: DatapathKind::Ebpf(AttachMode::Auto),
        interfaces: vec![
            (t.router_client.dev.clone(), None),
            (t.router_backend.dev.clone(), None),
        ],
        bpffs: bpffs.to_path_buf(),
        max_connections,
        conntrack_pressure: Pressure::default(),
        router_addresses: vec![t.router_addr()],
        nat_source_ports,
    };
    let mut dp = t
        .router
        .enter(move || Datapath::open(&cfg))?
        .context("open the datapath")?;
    let route = crate::routes::tcp_route(port, *backend.ip(), backend.port());
    dp.apply_routes(&BTreeMap::from([(port, route)]))?;
    Ok(dp)
}
