//! A kernel hash map used as a set of `u32` keys (value 1), kept equal to a wanted set: the
//! shape of `LOCAL_ADDRS` ([`super::addresses`]) and `PEER_DEVS` ([`super::peer_devs`]).

use super::DatapathError;
use aya::maps::{HashMap, Map, MapData};
use std::collections::BTreeSet;

pub struct KeySet {
    map: HashMap<MapData, u32, u32>,
    name: &'static str,
    /// What the map holds (read at open, then kept with every write).
    keys: BTreeSet<u32>,
}

impl KeySet {
    /// Takes map `name`, reading the keys already in it (a pinned map keeps an earlier
    /// daemon's).
    pub fn open(map: Map, name: &'static str) -> Result<KeySet, DatapathError> {
        let read = |source| DatapathError::MapRead {
            map: name,
            source: Box::new(source),
        };
        let map: HashMap<MapData, u32, u32> = HashMap::try_from(map).map_err(read)?;
        let keys = map
            .keys()
            .collect::<Result<BTreeSet<u32>, _>>()
            .map_err(read)?;
        Ok(KeySet { map, name, keys })
    }

    pub fn keys(&self) -> &BTreeSet<u32> {
        &self.keys
    }

    /// Makes the map hold exactly `wanted`: removals first, so a key that stopped qualifying
    /// never lingers next to its replacement. Returns whether anything changed.
    pub fn sync(&mut self, wanted: &BTreeSet<u32>) -> Result<bool, DatapathError> {
        if *wanted == self.keys {
            return Ok(false);
        }
        let write = |name, source| DatapathError::MapWrite {
            map: name,
            source: Box::new(source),
        };
        for gone in self.keys.difference(wanted).copied().collect::<Vec<_>>() {
            self.map.remove(&gone).map_err(|e| write(self.name, e))?;
            self.keys.remove(&gone);
        }
        for new in wanted.difference(&self.keys).copied().collect::<Vec<_>>() {
            self.map
                .insert(new, 1, 0)
                .map_err(|e| write(self.name, e))?;
            self.keys.insert(new);
        }
        Ok(true)
    }
}
