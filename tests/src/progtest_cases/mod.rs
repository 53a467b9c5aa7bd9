//! The packet paths of the kernel programs as data, run through BPF_PROG_TEST_RUN by
//! `tests/tests/datapath_progtest.rs` (as Katran's `lib/testing` fixtures keep their packets):
//! a [`Table`] is the datapath's set-up and an ordered list of [`Case`]s, each a frame built
//! with [`crate::packet`], the interface it arrives on, the expected verdict, what must leave
//! (untouched, these fields, the same bytes as an earlier case) and what the counters and the
//! connection table say afterwards. Cases run in order on one datapath, so a case may rely on
//! the connections the cases before it opened.

pub mod client_allow;
pub mod client_ip;
pub mod host_ports;
pub mod limits;
pub mod net;
pub mod passing;
pub mod takeover;
pub mod translation;

use crate::packet::Mac;
use router_common::stats::StatReason;
use router_userspace::datapath::options::NatSourcePorts;
use router_userspace::host_ephemeral::PortRange;
use router_userspace::routes::PreserveClientIp;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

pub use net::Net;

/// The router host's ephemeral range unless a table says otherwise: above the ports the cases'
/// clients use (40000-40004), which keep their own port toward the backend outside it.
pub const CASES_HOST_EPHEMERAL: PortRange = PortRange {
    first: 50000,
    last: 60999,
};

/// How the datapath is opened before the first case (the routes are [`Net::routes`]).
#[derive(Clone, Debug)]
pub struct Setup {
    pub max_connections: u32,
    pub nat_source_ports: NatSourcePorts,
    /// The router host's ephemeral range the kernel is given (a client's own port inside it is
    /// not used toward the task).
    pub host_ephemeral: PortRange,
    /// Whether both interfaces are XDP redirect targets.
    pub xdp_targets: bool,
    /// The MTU of the backend link, when not the default 1500.
    pub backend_mtu: Option<u32>,
    /// `preserve_client_ip` of the table's routes.
    pub client_ip: PreserveClientIp,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            max_connections: 1024,
            nat_source_ports: router_userspace::datapath::DEFAULT_NAT_SOURCE_PORTS,
            host_ephemeral: CASES_HOST_EPHEMERAL,
            xdp_targets: true,
            client_ip: PreserveClientIp::Off,
            backend_mtu: None,
        }
    }
}

/// A set-up and the cases run on it, in order.
pub struct Table {
    pub setup: Setup,
    pub cases: Vec<Case>,
}

impl Table {
    pub fn new(cases: Vec<Case>) -> Table {
        Table {
            setup: Setup::default(),
            cases,
        }
    }

    pub fn with_setup(setup: Setup, cases: Vec<Case>) -> Table {
        Table { setup, cases }
    }

    /// The cases up to and including the one called `name`, and the rest (a test that looks at
    /// the connection table in between runs them in two parts).
    pub fn split_after(&self, name: &str) -> (&[Case], &[Case]) {
        split_after(&self.cases, name)
    }
}

/// `cases` up to and including the one called `name`, and the rest.
pub fn split_after<'a>(cases: &'a [Case], name: &str) -> (&'a [Case], &'a [Case]) {
    let at = cases
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name:?} in the table"));
    cases.split_at(at + 1)
}

/// The interface a frame arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// What the program decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sent on (XDP_REDIRECT, TC_ACT_REDIRECT).
    Redirect,
    /// Handed to the stack (XDP_PASS; TCX "next").
    Pass,
    Drop,
    /// BPF_PROG_TEST_RUN refuses the frame: for TC it builds an skb and refuses IPv4 frames
    /// shorter than an IPv4 header (the verifier already proved no access goes past the end).
    Refused,
}

/// The programs a case is for (the two differ where XDP hands a packet on to TC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    Both,
    XdpOnly,
    TcOnly,
}

/// What must leave.
#[derive(Clone, Debug)]
pub enum Output {
    /// Not looked at (the verdict is what the case is about).
    Unchecked,
    /// The frame as it came.
    Untouched,
    /// Byte for byte what the earlier case called this put out.
    SameAs(&'static str),
    /// Exactly this frame.
    Frame(Vec<u8>),
    /// The parsed frame has these fields.
    Fields(Fields),
}

/// Fields of the frame that leaves; `None` is not looked at.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    /// (destination, source).
    pub macs: Option<(Mac, Mac)>,
    /// (source, destination).
    pub addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    /// TCP (source, destination).
    pub ports: Option<(u16, u16)>,
    pub sport: Option<u16>,
    pub sport_in: Option<RangeInclusive<u16>>,
    pub dport: Option<u16>,
    pub ttl: Option<u8>,
    pub flags: Option<u8>,
    /// The TCP payload, whole.
    pub payload: Option<Vec<u8>>,
    /// The MSS option of a handshake segment (`Some(None)`: none).
    pub mss: Option<Option<u16>>,
    /// An ICMP error and the packet it quotes.
    pub icmp: Option<IcmpQuote>,
    pub checksums: Checksums,
    /// Bytes of Ethernet padding after the packet, outside its checksums.
    pub padding: usize,
}

/// Checksums of the frame that leaves, computed from scratch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checksums {
    #[default]
    Unchecked,
    /// IPv4 header and TCP.
    Tcp,
    /// IPv4 header and ICMP.
    Icmp,
}

/// An ICMP error: type, code, MTU, and the tuple of the quoted packet (whose IPv4 header
/// checksum must hold too).
#[derive(Clone, Debug)]
pub struct IcmpQuote {
    pub ty: u8,
    pub code: u8,
    pub mtu: u16,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// What reaches the client of a "fragmentation needed" (MTU 1400) about the packet it sent from
/// `sport` to the router port: from the router, quoting that packet as the client sent it.
pub fn frag_needed_at_client(net: &Net, sport: u16) -> Fields {
    Fields {
        macs: Some((net.client_mac, net.client_dev_mac)),
        addrs: Some((net.router, net.client)),
        icmp: Some(IcmpQuote {
            ty: 3,
            code: 4,
            mtu: 1400,
            saddr: net.client,
            daddr: net.router,
            sport,
            dport: net::PORT,
        }),
        checksums: Checksums::Icmp,
        ..Fields::default()
    }
}

/// The routes programmed before a case, and what applying them must report.
#[derive(Clone, Debug)]
pub struct RouteChange {
    /// `(router port, backend, backend port)`.
    pub routes: Vec<(u16, Ipv4Addr, u16)>,
    /// `(router port, client allow-list)` of the routes that have one (the rest admit all).
    pub allow: Vec<(u16, String)>,
    /// (added, changed, removed).
    pub report: (usize, usize, usize),
    /// `preserve_client_ip` of the routes.
    pub client_ip: PreserveClientIp,
}

/// One frame through a program and what must hold afterwards.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub hooks: Hooks,
    pub from: Side,
    pub input: Vec<u8>,
    pub verdict: Verdict,
    pub output: Output,
    /// A route change applied before the frame.
    pub routes_before: Option<RouteChange>,
    /// The counter this frame moves by exactly one.
    pub counted: Option<StatReason>,
    /// Counters' totals after the frame.
    pub totals: Vec<(StatReason, u64)>,
    /// Connections listed after the frame.
    pub connections: Option<usize>,
    /// Live connections the kernel counts after the frame.
    pub live: Option<u64>,
    /// Entries in the half-open table after the frame (two per connection).
    pub half_open_entries: Option<usize>,
    /// Whether client port → router port has an entry (half-open or confirmed) after the frame.
    pub tracked: Option<(u16, u16, bool)>,
}

impl Case {
    /// A frame from `from` and the verdict it gets; nothing else checked yet.
    pub fn new(name: impl Into<String>, from: Side, input: Vec<u8>, verdict: Verdict) -> Case {
        Case {
            name: name.into(),
            hooks: Hooks::Both,
            from,
            input,
            verdict,
            output: Output::Unchecked,
            routes_before: None,
            counted: None,
            totals: Vec::new(),
            connections: None,
            live: None,
            half_open_entries: None,
            tracked: None,
        }
    }

    pub fn only(mut self, hooks: Hooks) -> Case {
        self.hooks = hooks;
        self
    }

    pub fn untouched(mut self) -> Case {
        self.output = Output::Untouched;
        self
    }

    pub fn frame(mut self, frame: Vec<u8>) -> Case {
        self.output = Output::Frame(frame);
        self
    }

    pub fn same_as(mut self, earlier: &'static str) -> Case {
        self.output = Output::SameAs(earlier);
        self
    }

    pub fn fields(mut self, fields: Fields) -> Case {
        self.output = Output::Fields(fields);
        self
    }

    pub fn after_routes(mut self, change: RouteChange) -> Case {
        self.routes_before = Some(change);
        self
    }

    pub fn counted(mut self, reason: StatReason) -> Case {
        self.counted = Some(reason);
        self
    }

    pub fn totals(mut self, totals: &[(StatReason, u64)]) -> Case {
        self.totals = totals.to_vec();
        self
    }

    pub fn connections(mut self, n: usize) -> Case {
        self.connections = Some(n);
        self
    }

    pub fn live(mut self, n: u64) -> Case {
        self.live = Some(n);
        self
    }

    pub fn half_open_entries(mut self, n: usize) -> Case {
        self.half_open_entries = Some(n);
        self
    }

    pub fn tracked(mut self, client_port: u16, router_port: u16, tracked: bool) -> Case {
        self.tracked = Some((client_port, router_port, tracked));
        self
    }
}

/// The client's SYN from `sport` to the router port, sent on (the connection later cases of a
/// table rely on); called `client SYN from <sport>`.
pub fn client_opens(net: &Net, sport: u16) -> Case {
    Case::new(
        format!("client SYN from {sport}"),
        Side::Client,
        net.client_packet(sport, crate::packet::TCP_SYN).build(),
        Verdict::Redirect,
    )
}
