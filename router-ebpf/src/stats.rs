//! Verdict counters: a per-CPU array indexed by hook and [`StatReason`], summed by the daemon.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use router_common::stats::{Hook, STAT_SLOTS, StatReason, StatValue, slot};

#[map(name = "STATS")]
static STATS: PerCpuArray<StatValue> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Adds one packet of `bytes` to the counter of `reason` for `hook`.
#[inline(always)]
pub fn count(hook: Hook, reason: StatReason, bytes: u64) {
    if let Some(slot) = STATS.get_ptr_mut(slot(hook, reason)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}
