//! Owner of `PORT_FLAGS`, the kernel's first filter: router ports (with a route, or with
//! connections still open after the route went) and backend ports (where replies come from).
//! A packet matching neither costs two array look-ups and passes untouched.

use super::DatapathError;
use super::object::maps::PORT_FLAGS;
use aya::maps::{Array, Map, MapData};
use router_common::config::{BACKEND_BASE, PORT_FLAGS_SIZE, PORT_WORDS};

pub struct PortFlags {
    map: Array<MapData, u64>,
    words: Vec<u64>,
}

/// The bitmap words for the two port sets.
pub fn words(
    router_ports: impl IntoIterator<Item = u16>,
    backend_ports: impl IntoIterator<Item = u16>,
) -> Vec<u64> {
    let mut words = vec![0u64; PORT_FLAGS_SIZE as usize];
    for port in router_ports {
        words[(port >> 6) as usize] |= 1 << (port & 63);
    }
    for port in backend_ports {
        words[(BACKEND_BASE + (port >> 6) as u32) as usize] |= 1 << (port & 63);
    }
    words
}

impl PortFlags {
    pub fn new(map: Map) -> Result<PortFlags, DatapathError> {
        let map = Array::try_from(map).map_err(|source| DatapathError::MapRead {
            map: PORT_FLAGS,
            source: Box::new(source),
        })?;
        Ok(PortFlags {
            map,
            words: vec![0; PORT_FLAGS_SIZE as usize],
        })
    }

    /// Takes over a pinned map: its words are what the kernel filters with until the next
    /// `sync` changes them.
    pub fn adopt(map: Map) -> Result<PortFlags, DatapathError> {
        let mut owner = PortFlags::new(map)?;
        for (i, word) in owner.words.iter_mut().enumerate() {
            *word = owner
                .map
                .get(&(i as u32), 0)
                .map_err(|source| DatapathError::MapRead {
                    map: PORT_FLAGS,
                    source: Box::new(source),
                })?;
        }
        Ok(owner)
    }

    /// Writes the words that differ from what the map holds.
    pub fn sync(
        &mut self,
        router_ports: impl IntoIterator<Item = u16>,
        backend_ports: impl IntoIterator<Item = u16>,
    ) -> Result<(), DatapathError> {
        let wanted = words(router_ports, backend_ports);
        for (i, (&want, have)) in wanted.iter().zip(self.words.iter_mut()).enumerate() {
            if want != *have {
                self.map
                    .set(i as u32, want, 0)
                    .map_err(|source| DatapathError::MapWrite {
                        map: PORT_FLAGS,
                        source: Box::new(source),
                    })?;
                *have = want;
            }
        }
        Ok(())
    }
}

const _: () = assert!(PORT_WORDS * 64 == 65_536);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_land_where_the_kernel_looks() {
        let w = words([0, 63, 64, 65535], [80]);
        assert_eq!(w[0], 1 | 1 << 63);
        assert_eq!(w[1], 1);
        assert_eq!(w[1023], 1 << 63);
        assert_eq!(w[(BACKEND_BASE + 1) as usize], 1 << 16);
        assert_eq!(w.iter().map(|x| x.count_ones()).sum::<u32>(), 5);
    }
}
