//! Verdict counters: a per-CPU array indexed by [`StatReason`], summed by the daemon.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use router_common::stats::{STAT_SLOTS, StatReason, StatValue};

#[map(name = "STATS")]
static STATS: PerCpuArray<StatValue> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Adds one packet of `bytes` to the counter for `reason`.
#[inline(always)]
pub fn count(reason: StatReason, bytes: u64) {
    if let Some(slot) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}
