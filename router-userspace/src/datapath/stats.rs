//! Owner of the `STATS` per-CPU array: reads the verdict counters summed over CPUs.

use super::DatapathError;
use aya::Ebpf;
use aya::maps::PerCpuArray;
use router_common::stats::{StatReason, StatValue};

const MAP: &str = "STATS";

/// Totals of one verdict counter over all CPUs.
pub fn read(ebpf: &Ebpf, reason: StatReason) -> Result<StatValue, DatapathError> {
    let map = ebpf.map(MAP).ok_or(DatapathError::MissingMap(MAP))?;
    let array: PerCpuArray<_, StatValue> =
        PerCpuArray::try_from(map).map_err(|source| DatapathError::MapRead {
            source: Box::new(source),
            map: MAP,
        })?;
    let per_cpu = array
        .get(&(reason as u32), 0)
        .map_err(|source| DatapathError::MapRead {
            source: Box::new(source),
            map: MAP,
        })?;
    Ok(per_cpu
        .iter()
        .fold(StatValue::default(), |acc, v| StatValue {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        }))
}

/// Every reason with its totals, in [`StatReason::ALL`] order.
pub fn read_all(ebpf: &Ebpf) -> Result<Vec<(StatReason, StatValue)>, DatapathError> {
    StatReason::ALL
        .iter()
        .map(|&r| read(ebpf, r).map(|v| (r, v)))
        .collect()
}
