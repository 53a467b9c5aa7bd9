//! The kernel side as the daemon sees it: [`Datapath`] loads the embedded object (in one place,
//! [`object`]), attaches it, and owns its maps through one module each: routes
//! ([`route_map`]) and who may open connections to them ([`client_allow`]), the port filter
//! ([`port_flags`]), connections and their sweeper ([`conntrack`], [`sweeper`]), the router's
//! addresses ([`addresses`]), interfaces whose peer is in another namespace ([`peer_devs`]),
//! XDP redirect targets ([`xdp_targets`]), settings ([`settings`]), counters ([`stats`]). [`capability`] says what an interface can do in a
//! mode before anything is attached.
//!
//! The daemon's part: `Datapath::open_pinned(&cfg.datapath)` (maps and links pinned under
//! `ROUTER_BPFFS` and adopted from an earlier daemon, see [`pins`]), report `attached()` and
//! `adoption()`, wrap it in a [`SharedDatapath`] (the reconciler's [`TcpForwarder`]), run a
//! [`sweeper::Sweeper`] on it, read `stats()`, `route_counters()`, `fill()` and the sweep
//! reports for metrics; `unpin_all()` for `--detach-on-exit`. Tests and benchmarks use
//! `Datapath::open` (nothing pinned, all gone with the process).
//!
//! Behaviour worth knowing (details in `router-ebpf`): a SYN for a router port without a route
//! is passed to the host stack, which answers RST (nothing listens in the range) and counts
//! `pass_no_route`; established connections keep their backend when a route changes or goes;
//! the NAT source toward a task is the address the kernel would use to reach it
//! (`bpf_fib_lookup` with `BPF_FIB_LOOKUP_SRC`, kernel 6.7+), the source port the client's own
//! when free there and outside the host's ephemeral range, else one of `nat_source_ports`
//! ([`nat_ports`]); forwarding must be on (`net.ipv4.ip_forward=1`) for next-hop look-ups.

pub mod addresses;
pub mod attach;
pub mod capability;
pub mod client_allow;
pub mod clock;
pub mod conntrack;
pub mod half_open;
pub mod half_open_sizes;
mod host_range;
pub mod kernel_log;
mod key_set;
pub mod nat_ports;
mod netlink;
mod netns;
pub mod object;
pub mod options;
pub mod peer_devs;
pub mod pins;
pub mod port_flags;
pub mod return_path;
pub mod route_map;
pub mod settings;
pub mod stats;
pub mod sweeper;
mod sys;
pub mod test_run;
pub mod xdp_features;
mod xdp_targets;

pub use attach::{Attached, LinkChange, ResolvedMode};
pub use conntrack::{ConnState, Connection, Counters, RouteCounters, SweepReport, Timeouts};
pub use object::{DatapathError, load};
pub use options::{
    AttachMode, DEFAULT_MIN_IDLE, DEFAULT_NAT_SOURCE_PORTS, DatapathConfig, DatapathKind, Pressure,
};
pub use route_map::Programmed;
pub use test_run::{Program, RunOutput};

use crate::error::error_chain;
use crate::routes::{ApplyReport, PreserveClientIp, TcpForwarder, TcpRoute};
use aya::Ebpf;
use aya::maps::Map;
use object::maps;
use router_common::conntrack::{CtKey4, CtValue4};
use router_common::stats::{Hook, StatReason, StatValue};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// A removed route's ports stay in the kernel filter until a sweep that started this long after
/// the removal found no connection on them.
const PORT_LINGER: Duration = Duration::from_secs(1);

/// The loaded, attached datapath and the owners of its maps. Dropping it detaches everything.
pub struct Datapath {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    settings: settings::SettingsMap,
    routes: route_map::RouteMap,
    client_allow: client_allow::ClientAllowMap,
    ports: port_flags::PortFlags,
    conntrack: conntrack::Conntrack,
    half_open: half_open::HalfOpen,
    addresses: addresses::LocalAddresses,
    peer_devs: peer_devs::PeerDevs,
    xdp_targets: xdp_targets::XdpTargets,
    clock: clock::KernelClock,
    /// Ports of removed routes, kept in the filter until a sweep shows no connection uses them.
    lingering_router_ports: BTreeMap<u16, Instant>,
    lingering_backend_ports: BTreeMap<u16, Instant>,
    last_sweep: Option<SweepReport>,
    /// Connections evicted early under pressure since the datapath was opened.
    evicted_total: u64,
    /// The network namespace the datapath serves (the sweeper's thread joins it).
    netns: Option<OwnedFd>,
    /// `ROUTER_PRESERVE_CLIENT_IP`: for routes that name no client-address mode of their own.
    client_ip_default: PreserveClientIp,
    /// Where maps and links are pinned (`None`: nothing pinned, all gone with the process).
    pins: Option<pins::PinDir>,
    adoption: Adoption,
}

/// What [`Datapath::open_pinned`] found and did with an earlier daemon's pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// State maps taken over from the pins (empty: a fresh start).
    pub maps: Vec<&'static str>,
    /// Routes found in the pinned route map.
    pub routes: usize,
    /// Connections found in the pinned connection table (as of the first sweep).
    pub connections: u64,
    /// Per interface, what happened to its links.
    pub links: Vec<(String, LinkChange)>,
    /// Pinned links of interfaces no longer configured: detached and unpinned.
    pub removed_links: Vec<(String, pins::LinkKind)>,
}

impl Adoption {
    pub fn adopted(&self) -> bool {
        !self.maps.is_empty()
    }
}

/// Refuses pinned maps this build's object does not define the same way (see [`pins`]).
fn check_pinned_shapes(
    pins: &pins::PinDir,
    pinned: &[&'static str],
    object_bytes: &[u8],
    max_connections: u32,
) -> Result<(), DatapathError> {
    let definitions = object::map_definitions(object_bytes)?;
    for &name in pinned {
        let path = pins.map_path(name);
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| DatapathError::Pin {
            operation: "opening",
            path: path.clone(),
            source: std::io::Error::other(error_chain(&e)),
        })?;
        let expected = definitions
            .get(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let min_entries = match name {
            maps::CT4 => Some(object::conntrack_entries(max_connections)),
            // Sized with the ring by the daemon that pinned them: any size is adopted.
            maps::HALF_OPEN4 | maps::HALF_OPEN_RING => Some(0),
            _ => None,
        };
        let mismatch = |difference| DatapathError::PinnedMapMismatch {
            dir: pins.dir().to_path_buf(),
            map: name,
            difference,
            version: router_common::LAYOUT_VERSION,
        };
        if let Some(difference) = pins::shape_mismatch(&info, expected, min_entries) {
            return Err(mismatch(difference));
        }
        if let Some(needed) = min_entries
            && info.max_entries() < needed
        {
            return Err(DatapathError::ConntrackTooSmall {
                dir: pins.dir().to_path_buf(),
                pinned: info.max_entries(),
                needed,
                max_connections,
            });
        }
    }
    Ok(())
}

/// The kernel answers next-hop look-ups for packets arriving on an interface only when it
/// forwards there; without it every new connection is passed to the host (`pass_fib_failed`).
fn warn_if_not_forwarding(interface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
    if let Ok(v) = std::fs::read_to_string(&path)
        && v.trim() == "0"
    {
        tracing::warn!(
            interface,
            "IPv4 forwarding is off here: new connections cannot be forwarded \
             (set net.ipv4.ip_forward=1)"
        );
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

impl Datapath {
    /// Loads the programs with maps sized from `cfg`, verifies them, programs the router's
    /// addresses and attaches every configured interface (in the calling thread's network
    /// namespace). Nothing is pinned: everything goes with the process (tests, benchmarks).
    pub fn open(cfg: &DatapathConfig) -> Result<Datapath, DatapathError> {
        Datapath::open_with(cfg, None, object::OBJECT)
    }

    /// [`Datapath::open`] with maps and links pinned under `cfg.bpffs` (the daemon): what an
    /// earlier daemon pinned there is adopted (maps reused, programs replaced in the links
    /// atomically, routes kept until the first `apply` reconciles them); a pinned layout of
    /// another version is refused untouched (see [`pins`]).
    pub fn open_pinned(cfg: &DatapathConfig) -> Result<Datapath, DatapathError> {
        // A missing interface is the operator's first problem to hear about.
        for (interface, _) in &cfg.interfaces {
            attach::ifindex(interface)?;
        }
        let object = object::daemon_object()?;
        let pins = pins::PinDir::prepare(&cfg.bpffs, router_common::LAYOUT_VERSION)?;
        let pinned = pins.pinned_maps();
        if !pinned.is_empty() {
            check_pinned_shapes(&pins, &pinned, &object, cfg.max_connections)?;
        }
        Datapath::open_with(cfg, Some(pins), &object)
    }

    fn open_with(
        cfg: &DatapathConfig,
        pins: Option<pins::PinDir>,
        object_bytes: &[u8],
    ) -> Result<Datapath, DatapathError> {
        let default_mode = match cfg.kind {
            DatapathKind::Ebpf(mode) => mode,
            DatapathKind::Nginx => {
                return Err(DatapathError::Config(
                    "the nginx datapath has no kernel programs to open".into(),
                ));
            }
        };
        let adopted_maps = pins.as_ref().map(|p| p.pinned_maps()).unwrap_or_default();
        let adopting = |name: &str| adopted_maps.contains(&name);
        let mut ebpf = object::load_with(&object::LoadOptions {
            max_connections: cfg.max_connections,
            pin_dir: pins.as_ref().map(|p| p.dir()),
            object: object_bytes,
        })?;
        object::verify_all(&mut ebpf)?;
        let settings = settings::SettingsMap::new(
            take(&mut ebpf, maps::CONFIG)?,
            cfg.max_connections,
            cfg.nat_source_ports,
            crate::host_ephemeral::read().map_err(DatapathError::HostEphemeral)?,
        )?;
        // Taken with what it holds (a pinned map's lists stay enforced until the first apply).
        let client_allow = client_allow::ClientAllowMap::new(take(&mut ebpf, maps::CLIENT_ALLOW)?)?;
        let routes = if adopting(maps::ROUTES) {
            route_map::RouteMap::adopt(take(&mut ebpf, maps::ROUTES)?)?
        } else {
            route_map::RouteMap::new(take(&mut ebpf, maps::ROUTES)?)?
        };
        let ports = if adopting(maps::PORT_FLAGS) {
            port_flags::PortFlags::adopt(take(&mut ebpf, maps::PORT_FLAGS)?)?
        } else {
            port_flags::PortFlags::new(take(&mut ebpf, maps::PORT_FLAGS)?)?
        };
        let (table, count) = (
            take(&mut ebpf, maps::CT4)?,
            take(&mut ebpf, maps::CT_COUNT)?,
        );
        let mut conntrack = if adopting(maps::CT_COUNT) {
            conntrack::Conntrack::adopt(table, count, cfg.max_connections)?
        } else {
            conntrack::Conntrack::new(table, count, cfg.max_connections)?
        };
        conntrack.set_pressure(cfg.conntrack_pressure);
        let half_open = half_open::HalfOpen::new(
            take(&mut ebpf, maps::HALF_OPEN4)?,
            ebpf.map(maps::HALF_OPEN_RING)
                .ok_or(DatapathError::MissingMap(maps::HALF_OPEN_RING))?,
        )?;
        let addresses = addresses::LocalAddresses::new(
            take(&mut ebpf, maps::LOCAL_ADDRS)?,
            &cfg.router_addresses,
        )?;
        // Before any program is attached or replaced, so the first connections already get
        // the peer hand-off.
        let peer_devs = peer_devs::PeerDevs::new(take(&mut ebpf, maps::PEER_DEVS)?)?;
        let clock = clock::KernelClock::new(&mut ebpf)?;
        let xdp_targets = xdp_targets::XdpTargets::open(&mut ebpf)?;
        let netns = std::fs::File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .ok();
        let mut dp = Datapath {
            ebpf,
            attached: Vec::new(),
            settings,
            routes,
            client_allow,
            ports,
            conntrack,
            half_open,
            addresses,
            peer_devs,
            xdp_targets,
            clock,
            lingering_router_ports: BTreeMap::new(),
            lingering_backend_ports: BTreeMap::new(),
            last_sweep: None,
            evicted_total: 0,
            netns,
            client_ip_default: PreserveClientIp::Off,
            adoption: Adoption {
                maps: adopted_maps.clone(),
                routes: 0,
                ..Adoption::default()
            },
            pins,
        };
        dp.adoption.routes = dp.routes.programmed().len();
        if dp.adoption.adopted() {
            // Ports of connections whose route went while no daemon ran stay in the filter.
            let sweep = dp.sweep()?;
            dp.adoption.connections = sweep.live;
        }
        dp.attach_interfaces(cfg, default_mode)?;
        let native = dp
            .attached
            .iter()
            .filter(|a| a.mode == ResolvedMode::Xdp)
            .map(|a| a.interface.clone())
            .collect();
        dp.xdp_targets.manage(native);
        if dp.xdp_targets.refresh(&mut dp.ebpf)? {
            // Adopted connections may have cached a target that is gone.
            dp.settings.bump_epoch()?;
        }
        Ok(dp)
    }

    /// Attaches the programs to every configured interface: pinned links are updated in place
    /// (adoption), missing ones created, and pinned links of interfaces no longer configured
    /// removed.
    fn attach_interfaces(
        &mut self,
        cfg: &DatapathConfig,
        default_mode: AttachMode,
    ) -> Result<(), DatapathError> {
        let mut pinned_links = match &self.pins {
            Some(p) => p.pinned_links()?,
            None => Vec::new(),
        };
        for (interface, mode) in &cfg.interfaces {
            let mode = mode.unwrap_or(default_mode);
            let attached = match &self.pins {
                Some(pins) => {
                    let kinds: Vec<pins::LinkKind> = pinned_links
                        .iter()
                        .filter(|(_, i)| i == interface)
                        .map(|(k, _)| *k)
                        .collect();
                    pinned_links.retain(|(_, i)| i != interface);
                    let (attached, changes) =
                        attach::attach_pinned(&mut self.ebpf, pins, &kinds, interface, mode)?;
                    self.adoption
                        .links
                        .extend(changes.into_iter().map(|c| (interface.clone(), c)));
                    attached
                }
                None => attach::attach(&mut self.ebpf, interface, mode)?,
            };
            warn_if_not_forwarding(interface);
            self.attached.push(attached);
        }
        if let Some(pins) = &self.pins {
            for (kind, interface) in pinned_links {
                attach::remove_pinned(pins, kind, &interface)?;
                self.adoption.removed_links.push((interface, kind));
            }
        }
        Ok(())
    }

    /// What was adopted from an earlier daemon's pins.
    pub fn adoption(&self) -> &Adoption {
        &self.adoption
    }

    /// The pin directory, when pinned.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pins.as_ref().map(|p| p.dir())
    }

    /// Detaches every program (links unpinned: nothing else holds them) and unpins every map;
    /// forwarding stops. For `--detach-on-exit`. Returns what it removed.
    pub fn unpin_all(&mut self) -> Result<Vec<String>, DatapathError> {
        match self.pins.take() {
            Some(pins) => pins.remove_all(),
            None => Ok(Vec::new()),
        }
    }

    /// Each configured interface with the mode it got.
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// The router addresses new connections are accepted on.
    pub fn router_addresses(&self) -> BTreeSet<std::net::Ipv4Addr> {
        self.addresses.addresses()
    }

    /// Re-reads what the programs need to know of the namespace's interfaces: the router
    /// addresses (when not configured) and the devices whose peer is elsewhere. A failure keeps
    /// the last set and is logged; the next sweep tries again.
    fn refresh_interfaces(&mut self) {
        if let Err(e) = self.addresses.refresh() {
            tracing::warn!(error = %error_chain(&e), "refreshing router addresses failed");
        }
        if let Err(e) = self.peer_devs.refresh() {
            tracing::warn!(error = %error_chain(&e), "refreshing the interfaces with a peer elsewhere failed; keeping the last set");
        }
        if let Err(e) = self.xdp_targets.refresh(&mut self.ebpf) {
            tracing::warn!(error = %error_chain(&e), "refreshing the XDP redirect targets failed; keeping the last set");
        }
    }

    /// Keeps XDP from redirecting, and so from translating, anything: every packet goes on to
    /// TC untouched. The daemon does this while a veth runs native XDP (see
    /// [`xdp_targets`]); connections that cached a target look again.
    pub fn keep_xdp_from_redirecting(&mut self) -> Result<(), DatapathError> {
        self.xdp_targets.set_redirects(false);
        if self.xdp_targets.refresh(&mut self.ebpf)? {
            self.settings.bump_epoch()?;
        }
        Ok(())
    }

    /// Interfaces (ifindexes) TC hands packets to the peer of, as of the last refresh.
    pub fn peer_devs(&self) -> &BTreeSet<u32> {
        self.peer_devs.programmed()
    }

    /// Starts forwarding the kernel programs' log records into the daemon's log.
    pub fn spawn_kernel_log(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        kernel_log::spawn(&mut self.ebpf)
    }

    /// Makes the route map and the client allow-lists equal `wanted`. New connections follow
    /// at once; established ones keep their backend and stay connected until they end.
    pub fn apply_routes(
        &mut self,
        wanted: &BTreeMap<u16, TcpRoute>,
    ) -> Result<ApplyReport, DatapathError> {
        let before = self.routes.programmed().clone();
        // A route's allow-list is in force before the route itself, and goes after it.
        let (wanted, allow_failed) = self.client_allow.apply(wanted);
        let client_ip =
            return_path::choose_all(&wanted, self.client_ip_default, self.netns.as_ref());
        let mut report = self.routes.apply(&wanted, &client_ip);
        report.failed.extend(allow_failed);
        let programmed = self.routes.programmed();
        self.client_allow
            .retain(|port| programmed.contains_key(&port))?;
        let now = Instant::now();
        let after = self.routes.programmed();
        for (port, old) in &before {
            match after.get(port) {
                Some(new) if new.upstream == old.upstream => {}
                Some(_) => {
                    self.lingering_backend_ports
                        .insert(old.upstream.port(), now);
                }
                None => {
                    self.lingering_router_ports.insert(*port, now);
                    self.lingering_backend_ports
                        .insert(old.upstream.port(), now);
                }
            }
        }
        self.sync_ports()?;
        Ok(report)
    }

    /// The routes as programmed, by router port.
    pub fn routes(&self) -> &BTreeMap<u16, Programmed> {
        self.routes.programmed()
    }

    fn sync_ports(&mut self) -> Result<(), DatapathError> {
        let programmed = self.routes.programmed();
        let mut router: BTreeSet<u16> = programmed.keys().copied().collect();
        let mut backend: BTreeSet<u16> = programmed.values().map(|p| p.upstream.port()).collect();
        router.extend(self.lingering_router_ports.keys());
        backend.extend(self.lingering_backend_ports.keys());
        if let Some(sweep) = &self.last_sweep {
            router.extend(&sweep.router_ports);
            backend.extend(&sweep.backend_ports);
        }
        self.ports.sync(router, backend)
    }

    /// Sets the idle timeouts the sweeper enforces.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.conntrack.set_timeouts(timeouts);
    }

    /// Sets whether routes that name no mode of their own keep the client's address (applies
    /// from the next `apply_routes`).
    pub fn set_client_ip_default(&mut self, setting: PreserveClientIp) {
        self.client_ip_default = setting;
    }

    /// Sets when the sweeper evicts idle connections before their timeout.
    pub fn set_pressure(&mut self, pressure: Pressure) {
        self.conntrack.set_pressure(pressure);
    }

    /// One sweep of the connection table: expires idle connections (early when the table is
    /// nearly full, see [`Pressure`]), removes half-pairs, corrects the kernel's live count,
    /// re-reads the interfaces (router addresses, peers elsewhere), refreshes next hops and the
    /// port filter. Call it from the network namespace the datapath serves (the sweeper does).
    pub fn sweep(&mut self) -> Result<SweepReport, DatapathError> {
        let started = Instant::now();
        let now = self.clock.now(&mut self.ebpf)?;
        let mut report = self.conntrack.sweep(now, &self.clock)?;
        let half_open =
            self.half_open
                .sweep(now, &self.clock, self.conntrack.timeouts().opening)?;
        report.half_open = half_open.live;
        report.half_open_capacity = self.half_open.capacity() as u64;
        report.half_open_expired = half_open.expired;
        report.router_ports.extend(half_open.router_ports);
        report.backend_ports.extend(half_open.backend_ports);
        self.evicted_total += report.evicted;
        // The epoch bump below makes every connection re-read its next hop, with these sets.
        self.refresh_interfaces();
        self.follow_host_ephemeral()?;
        self.settings.bump_epoch()?;
        self.lingering_router_ports
            .retain(|_, removed| started < *removed + PORT_LINGER);
        self.lingering_backend_ports
            .retain(|_, removed| started < *removed + PORT_LINGER);
        self.last_sweep = Some(report.clone());
        self.sync_ports()?;
        Ok(report)
    }

    /// Connections evicted early under pressure since the datapath was opened.
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total
    }

    /// The last sweep's report.
    pub fn last_sweep(&self) -> Option<&SweepReport> {
        self.last_sweep.as_ref()
    }

    /// Connections in the table (as the kernel counts them) and the configured capacity.
    pub fn fill(&self) -> Result<(u64, u64), DatapathError> {
        Ok((
            self.conntrack.counted_live()?,
            self.conntrack.capacity() as u64,
        ))
    }

    /// Per programmed route (by router port): live connections and traffic, as of the last
    /// sweep.
    pub fn route_counters(&self) -> BTreeMap<u16, (Programmed, RouteCounters)> {
        self.routes
            .programmed()
            .iter()
            .map(|(port, p)| {
                let counters = self
                    .last_sweep
                    .as_ref()
                    .and_then(|s| s.routes.get(&p.route_id).copied())
                    .unwrap_or_default();
                (*port, (p.clone(), counters))
            })
            .collect()
    }

    /// The tracked connections now, half-open ones included (reads both tables).
    pub fn connections(&mut self) -> Result<Vec<Connection>, DatapathError> {
        let now = self.clock.now(&mut self.ebpf)?;
        let mut all = self.conntrack.connections(now, &self.clock)?;
        all.extend(self.half_open.connections(now, &self.clock)?);
        all.sort_by_key(|c| (c.router, c.client));
        Ok(all)
    }

    /// Verdict counters of every hook and reason.
    pub fn stats(&self) -> Result<Vec<(Hook, StatReason, StatValue)>, DatapathError> {
        stats::read_all(&self.ebpf)
    }

    /// One verdict counter.
    pub fn stat(&self, hook: Hook, reason: StatReason) -> Result<StatValue, DatapathError> {
        stats::read(&self.ebpf, hook, reason)
    }

    /// Runs a program on `frame` through BPF_PROG_TEST_RUN (tests and the cost benchmark).
    pub fn test_run(
        &mut self,
        program: Program,
        frame: &[u8],
        repeat: u32,
        ifindex: Option<u32>,
    ) -> Result<RunOutput, DatapathError> {
        test_run::run(&mut self.ebpf, program, frame, repeat, ifindex)
    }

    /// Lets XDP redirect to `interface` without attaching to it (tests and benchmarks that
    /// drive the programs through BPF_PROG_TEST_RUN).
    pub fn add_xdp_target(&mut self, interface: &str) -> Result<(), DatapathError> {
        let ifindex = attach::ifindex(interface)?;
        self.xdp_targets.add(&mut self.ebpf, ifindex)
    }

    /// The settings the kernel reads now.
    pub fn settings(&self) -> router_common::config::Settings {
        self.settings.current()
    }

    /// The connection-table entry at `key`, if any.
    pub fn conntrack_entry(&self, key: &CtKey4) -> Option<CtValue4> {
        self.conntrack.get(key)
    }

    /// The half-open table's entry at `key`, if any.
    pub fn half_open_entry(&self, key: &CtKey4) -> Option<router_common::conntrack::HalfOpen4> {
        self.half_open.get(key)
    }

    /// Every entry of the half-open table, and the half-open connections it admits before
    /// evicting.
    pub fn half_open_table(
        &self,
    ) -> Result<
        (
            std::collections::HashMap<CtKey4, router_common::conntrack::HalfOpen4>,
            u32,
        ),
        DatapathError,
    > {
        Ok((self.half_open.scan()?, self.half_open.capacity()))
    }

    /// Every entry of the connection table, tombstones and half-pairs included (what the
    /// packet-path fuzz test checks for consistency after each packet).
    pub fn conntrack_table(
        &self,
    ) -> Result<std::collections::HashMap<CtKey4, CtValue4>, DatapathError> {
        self.conntrack.scan()
    }

    /// Writes a connection-table entry directly: for benchmarks (a looping pair) and tests (what
    /// another CPU would have written); the kernel creates real connections itself.
    pub fn insert_conntrack_entry(
        &mut self,
        key: CtKey4,
        value: CtValue4,
    ) -> Result<(), DatapathError> {
        self.conntrack.insert(key, value)
    }

    /// The network namespace the datapath was opened in.
    pub(crate) fn netns(&self) -> Option<&OwnedFd> {
        self.netns.as_ref()
    }
}

impl TcpForwarder for Datapath {
    fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> anyhow::Result<ApplyReport> {
        self.apply_routes(wanted)
            .map_err(|e| anyhow::anyhow!("programming the TCP routes: {}", error_chain(&e)))
    }
}

/// The datapath shared between the reconciler (as its [`TcpForwarder`]), the
/// [`sweeper::Sweeper`] and the metrics reader.
#[derive(Clone)]
pub struct SharedDatapath(pub std::sync::Arc<std::sync::Mutex<Datapath>>);

impl SharedDatapath {
    pub fn new(dp: Datapath) -> SharedDatapath {
        SharedDatapath(std::sync::Arc::new(std::sync::Mutex::new(dp)))
    }

    /// Locks the datapath; a poisoned lock (a panic while held) is an error, not a panic.
    pub fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Datapath>> {
        self.0
            .lock()
            .map_err(|_| anyhow::anyhow!("the datapath lock was poisoned by a panic"))
    }
}

impl TcpForwarder for SharedDatapath {
    fn apply(&mut self, wanted: &BTreeMap<u16, TcpRoute>) -> anyhow::Result<ApplyReport> {
        self.lock()?.apply(wanted)
    }
}

// The daemon moves the datapath into its reconciler task.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Datapath>();
};
