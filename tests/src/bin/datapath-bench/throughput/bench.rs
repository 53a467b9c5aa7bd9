//! The topology a run measures in and what stays up across its rounds: where the client
//! connects for each peer, the senders' offload setting.

use super::host::tempdir;
use super::peers::{Options, Peer};
use super::samples::Sweep;
use anyhow::Result;
use router_tests::topology::Topology;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub(super) struct Bench {
    pub(super) t: Topology,
    pub(super) dir: tempdir::Dir,
    pub(super) opts: Options,
    /// Stops the backend's servers.
    pub(super) stop: Arc<AtomicBool>,
    /// The conntrack sweeps seen during the datapath's turns.
    pub(super) sweeps: Arc<std::sync::Mutex<Vec<Sweep>>>,
}

impl Bench {
    pub(super) fn new(opts: Options) -> Result<Bench> {
        let t = Topology::new()?;
        // The ceiling talks to the backend directly, routed by the router namespace.
        t.route_client_and_backend_directly()?;
        Ok(Bench {
            t,
            dir: tempdir::Dir::new()?,
            opts,
            stop: Arc::new(AtomicBool::new(false)),
            sweeps: Arc::default(),
        })
    }

    pub(super) fn router(&self) -> Ipv4Addr {
        self.t.router_addr()
    }

    pub(super) fn backend(&self) -> Ipv4Addr {
        self.t.backend_end.addr
    }

    /// Where the client connects for the bulk and the RR routes.
    pub(super) fn targets(&self, peer: Peer) -> (SocketAddrV4, SocketAddrV4) {
        let (bulk, rr, iperf, backend_rr) = peer.ports();
        if peer == peer.ceiling() {
            (
                SocketAddrV4::new(self.backend(), iperf),
                SocketAddrV4::new(self.backend(), backend_rr),
            )
        } else {
            (
                SocketAddrV4::new(self.router(), bulk),
                SocketAddrV4::new(self.router(), rr),
            )
        }
    }

    pub(super) fn set_tx_off(&self, off: bool) -> Result<()> {
        for (ns, dev) in self.t.senders() {
            ns.tx_offload(dev, !off)?;
            ns.run(
                "ethtool",
                &["-K", dev, "gro", if off { "on" } else { "off" }],
            )?;
        }
        Ok(())
    }
}
