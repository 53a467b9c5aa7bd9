//! Owner of `CONFIG`: the settings the kernel reads (table size, NAT source ports and the host's
//! ephemeral range, next-hop epoch).

use super::DatapathError;
use super::nat_ports;
use super::object::maps::CONFIG;
use super::options::NatSourcePorts;
use crate::host_ephemeral::PortRange;
use aya::maps::{Array, Map, MapData};
use router_common::LAYOUT_VERSION;
use router_common::config::Settings;

pub struct SettingsMap {
    map: Array<MapData, Settings>,
    current: Settings,
    nat: NatSourcePorts,
    host_ephemeral_changes: u64,
}

impl SettingsMap {
    /// Takes the map and writes the initial settings: NAT source ports `nat` less the host's
    /// ephemeral range `host`.
    pub fn new(
        map: Map,
        max_connections: u32,
        nat: NatSourcePorts,
        host: PortRange,
    ) -> Result<SettingsMap, DatapathError> {
        if let NatSourcePorts::Range(min, max) = nat
            && (min == 0 || min > max)
        {
            return Err(DatapathError::Config(format!(
                "NAT source ports {min}-{max}: expected a range within 1-65535, low end first"
            )));
        }
        let nat_ports = nat_ports::spans(nat, host);
        if nat_ports::count(&nat_ports) == 0 {
            return Err(DatapathError::Config(format!(
                "NAT source ports {nat}: none is left outside the host's ephemeral range {host} \
                 ({})",
                crate::host_ephemeral::SYSCTL
            )));
        }
        let map: Array<MapData, Settings> =
            Array::try_from(map).map_err(|source| DatapathError::MapRead {
                map: CONFIG,
                source: Box::new(source),
            })?;
        // A pinned map holds an earlier daemon's settings: its next-hop epoch goes on from
        // there, so cached next hops of that epoch are looked up again.
        let pinned_epoch = map.get(&0, 0).map(|s| s.nh_epoch).unwrap_or(0);
        let mut owner = SettingsMap {
            map,
            current: Settings {
                layout_version: LAYOUT_VERSION,
                max_connections,
                nat_ports,
                nat_port_count: nat_ports::count(&nat_ports),
                host_ephemeral_min: host.first,
                host_ephemeral_max: host.last,
                nh_epoch: pinned_epoch.wrapping_add(1).max(1),
                _pad: 0,
            },
            nat,
            host_ephemeral_changes: 0,
        };
        owner.write()?;
        Ok(owner)
    }

    fn write(&mut self) -> Result<(), DatapathError> {
        self.map
            .set(0, self.current, 0)
            .map_err(|source| DatapathError::MapWrite {
                map: CONFIG,
                source: Box::new(source),
            })
    }

    pub fn current(&self) -> Settings {
        self.current
    }

    /// Makes every connection look its next hop up again on its next packet.
    pub fn bump_epoch(&mut self) -> Result<(), DatapathError> {
        self.current.nh_epoch = self.current.nh_epoch.wrapping_add(1).max(1);
        self.write()
    }

    pub fn host_ephemeral(&self) -> PortRange {
        PortRange {
            first: self.current.host_ephemeral_min,
            last: self.current.host_ephemeral_max,
        }
    }

    pub fn host_ephemeral_changes(&self) -> u64 {
        self.host_ephemeral_changes
    }

    /// Follows a change of the host's ephemeral range: clients' own ports and NAT source ports
    /// inside it are not used from the next connection on. True when it changed.
    pub fn set_host_ephemeral(&mut self, host: PortRange) -> Result<bool, DatapathError> {
        if host == self.host_ephemeral() {
            return Ok(false);
        }
        let nat_ports = nat_ports::spans(self.nat, host);
        if nat_ports::count(&nat_ports) == 0 {
            tracing::error!(
                nat = %self.nat,
                host = %host,
                "no NAT source port is left outside the host's ephemeral range: clients whose \
                 own port is taken or inside it cannot connect"
            );
        }
        self.current.nat_ports = nat_ports;
        self.current.nat_port_count = nat_ports::count(&nat_ports);
        self.current.host_ephemeral_min = host.first;
        self.current.host_ephemeral_max = host.last;
        self.host_ephemeral_changes += 1;
        self.write()?;
        Ok(true)
    }
}
