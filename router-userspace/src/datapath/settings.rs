//! Owner of `CONFIG`: the settings the kernel reads (table size, NAT source ports, next-hop
//! epoch).

use super::DatapathError;
use super::object::maps::CONFIG;
use aya::maps::{Array, Map, MapData};
use router_common::LAYOUT_VERSION;
use router_common::config::Settings;

pub struct SettingsMap {
    map: Array<MapData, Settings>,
    current: Settings,
}

impl SettingsMap {
    /// Takes the map and writes the initial settings.
    pub fn new(
        map: Map,
        max_connections: u32,
        nat_ports: (u16, u16),
    ) -> Result<SettingsMap, DatapathError> {
        let (min, max) = nat_ports;
        if min == 0 || min > max {
            return Err(DatapathError::Config(format!(
                "NAT source ports {min}-{max}: expected a range within 1-65535, low end first"
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
                nat_port_min: min,
                nat_port_max: max,
                nh_epoch: pinned_epoch.wrapping_add(1).max(1),
                _pad: 0,
            },
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
}
