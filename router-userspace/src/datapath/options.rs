//! What the datapath is asked to be: its kind, the mode of each interface, the sizes and
//! thresholds of its tables, and their defaults. The daemon's configuration fills these from
//! variables (`crate::config`) and the datapath reads them; both import this file, which imports
//! neither, so the arrow between them runs one way.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// The mode asked for an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native XDP on physical NICs that support it, TC elsewhere.
    Auto,
    /// Native (driver) XDP; fails where the driver has none.
    Xdp,
    /// Generic (skb) XDP: slow, only when asked.
    XdpGeneric,
    /// TC ingress (TCX link).
    Tc,
}

/// The spelling of `mode` in `ROUTER_DATAPATH` / `ROUTER_INTERFACES`.
pub fn attach_mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Auto => "auto",
        AttachMode::Xdp => "xdp",
        AttachMode::XdpGeneric => "xdp-generic",
        AttachMode::Tc => "tc",
    }
}

/// The mode spelled `s` (any case; `xdpgeneric` and `generic` too), `None` for anything else.
pub fn parse_attach_mode(s: &str) -> Option<AttachMode> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Some(AttachMode::Auto),
        "xdp" => Some(AttachMode::Xdp),
        "xdp-generic" | "xdpgeneric" | "generic" => Some(AttachMode::XdpGeneric),
        "tc" => Some(AttachMode::Tc),
        _ => None,
    }
}

/// Which TCP datapath, where it attaches and how big its tables are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatapathKind {
    /// eBPF, each interface in its `AttachMode`; falls back to nginx stream (loudly) when the
    /// programs cannot load and the kind is `Auto`.
    Ebpf(AttachMode),
    /// nginx `stream` servers, no kernel programs.
    Nginx,
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatapathKind::Ebpf(mode) => f.write_str(attach_mode_name(*mode)),
            DatapathKind::Nginx => f.write_str("nginx"),
        }
    }
}

/// What `Datapath::open` is given: the kind, the interfaces and the sizes of the tables.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// `ROUTER_DATAPATH` (`auto|xdp|xdp-generic|tc|nginx`, default `auto`).
    pub kind: DatapathKind,
    /// `ROUTER_INTERFACES`: interfaces to attach to (`eth0,veth1:tc`); an interface without a
    /// mode gets the mode of `kind`.
    pub interfaces: Vec<(String, Option<AttachMode>)>,
    /// `ROUTER_BPFFS` (default `/sys/fs/bpf/task-router`): where maps and links are pinned.
    pub bpffs: PathBuf,
    /// `ROUTER_MAX_CONNECTIONS` (default 262144): connection-table size.
    pub max_connections: u32,
    /// `ROUTER_CONNTRACK_PRESSURE` (`high,low` percent, default `90,80`) and
    /// `ROUTER_CONNTRACK_MIN_IDLE` (default 30 s, established connections): when the sweeper
    /// evicts idle connections before their timeout.
    pub conntrack_pressure: Pressure,
    /// `ROUTER_ADDRESSES`: the router's own addresses, on which router ports accept
    /// connections; discovered from the interfaces when empty. (The NAT source toward a task is
    /// the address the kernel picks for that task's route.)
    pub router_addresses: Vec<Ipv4Addr>,
    /// `ROUTER_NAT_SOURCE_PORTS` (default `auto`, [`DEFAULT_NAT_SOURCE_PORTS`]): source ports
    /// toward tasks when a client's own port is taken there or one the router host's stack
    /// may pick for itself.
    pub nat_source_ports: NatSourcePorts,
}

/// The source ports toward tasks the kernel draws from when it does not keep the client's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatSourcePorts {
    /// Every port from 1024 up outside the router host's ephemeral range (followed while the
    /// datapath runs) and outside `router_ports` (the TCP range: a task's SYN from a NAT source
    /// port there would look like a connection to a router port). With Linux's default
    /// ephemeral range and the default TCP range, 35 280 ports per task address and port.
    Auto { router_ports: Option<(u16, u16)> },
    /// `first-last` as configured (kept outside both at start-up; should the host's range
    /// later grow over it, the shared ports are left out).
    Range(u16, u16),
}

impl std::fmt::Display for NatSourcePorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatSourcePorts::Auto { .. } => f.write_str("auto"),
            NatSourcePorts::Range(first, last) => write!(f, "{first}-{last}"),
        }
    }
}

/// `auto` with no router port range to avoid (the daemon's configuration puts its TCP range).
pub const DEFAULT_NAT_SOURCE_PORTS: NatSourcePorts = NatSourcePorts::Auto { router_ports: None };

/// Early expiry when the table is nearly full (as Linux conntrack's early drop): a full table
/// refuses new connections, so idle ones must not hold it for the whole established timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressure {
    /// Live connections, in percent of the capacity, at which a sweep starts evicting.
    pub high_percent: u8,
    /// Live connections, in percent of the capacity, down to which a sweep evicts.
    pub low_percent: u8,
    /// An established connection that saw a packet within this is never evicted, however full
    /// the table.
    pub min_idle: Duration,
}

/// 30 s: longer than any pause inside one exchange of a working connection (a lost segment is
/// retransmitted after 0.2 s, 0.4 s, ... and five back-offs in a row add up to about this; a
/// request and its response follow each other within seconds), so an evicted connection was
/// between exchanges, not in the middle of one; and short enough that holding the table now
/// costs a packet per slot and per 30 s instead of one handshake per 6 h.
pub const DEFAULT_MIN_IDLE: Duration = Duration::from_secs(30);

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            high_percent: 90,
            low_percent: 80,
            min_idle: DEFAULT_MIN_IDLE,
        }
    }
}
