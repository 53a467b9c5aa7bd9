//! The datapath following the router host's ephemeral range (`net.ipv4.ip_local_port_range`,
//! read in the datapath's namespace at each sweep): a change goes into the settings the kernel
//! reads at once, logged and counted. Why the range matters: [`super::nat_ports`].

use super::{Datapath, DatapathError, nat_ports};
use crate::host_ephemeral::{self, PortRange};

impl Datapath {
    /// The router host's ephemeral range the kernel keeps clients' own ports out of.
    pub fn host_ephemeral(&self) -> PortRange {
        self.settings.host_ephemeral()
    }

    /// Times the host's range changed since the datapath was opened.
    pub fn host_ephemeral_changes(&self) -> u64 {
        self.settings.host_ephemeral_changes()
    }

    /// Re-reads the host's range (in the namespace of the calling thread, the datapath's: the
    /// sweeper calls this each sweep) and applies a change at once; a failed read keeps the
    /// last range.
    pub(super) fn follow_host_ephemeral(&mut self) -> Result<(), DatapathError> {
        let host = match host_ephemeral::read() {
            Ok(host) => host,
            Err(e) => {
                tracing::warn!(error = %crate::error::error_chain(&e), "keeping the last ephemeral range");
                return Ok(());
            }
        };
        let before = self.host_ephemeral();
        if self.settings.set_host_ephemeral(host)? {
            let nat_ports = nat_ports::count(&self.settings.current().nat_ports);
            tracing::warn!(
                before = %before,
                now = %host,
                nat_ports,
                "{} changed: clients' own ports inside it and NAT source ports inside it are no \
                 longer used toward tasks",
                host_ephemeral::SYSCTL
            );
        }
        Ok(())
    }
}
