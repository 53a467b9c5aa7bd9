//! Owner of the `STATS` per-CPU array: reads the verdict counters summed over CPUs.

use super::DatapathError;
use super::object::maps::STATS;
use aya::Ebpf;
use aya::maps::PerCpuArray;
use router_common::stats::{Hook, StatReason, StatValue, slot};

/// Totals of one verdict counter of one hook over all CPUs.
pub fn read(ebpf: &Ebpf, hook: Hook, reason: StatReason) -> Result<StatValue, DatapathError> {
    let map = ebpf.map(STATS).ok_or(DatapathError::MissingMap(STATS))?;
    let array: PerCpuArray<_, StatValue> =
        PerCpuArray::try_from(map).map_err(|source| DatapathError::MapRead {
            source: Box::new(source),
            map: STATS,
        })?;
    let per_cpu = array
        .get(&slot(hook, reason), 0)
        .map_err(|source| DatapathError::MapRead {
            source: Box::new(source),
            map: STATS,
        })?;
    Ok(per_cpu
        .iter()
        .fold(StatValue::default(), |acc, v| StatValue {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        }))
}

/// Every hook and reason with its totals.
pub fn read_all(ebpf: &Ebpf) -> Result<Vec<(Hook, StatReason, StatValue)>, DatapathError> {
    let mut out = Vec::new();
    for hook in Hook::ALL {
        for reason in StatReason::ALL {
            out.push((hook, reason, read(ebpf, hook, reason)?));
        }
    }
    Ok(out)
}

/// Everything a hook saw: each packet is counted under exactly one reason.
pub fn seen(ebpf: &Ebpf, hook: Hook) -> Result<StatValue, DatapathError> {
    let mut total = StatValue::default();
    for reason in StatReason::ALL {
        let v = read(ebpf, hook, reason)?;
        total.packets += v.packets;
        total.bytes += v.bytes;
    }
    Ok(total)
}
