//! The clock of `CtValue4::last_seen`: jiffies, low 32 bits. `bpf_jiffies64` is inlined by the
//! verifier (no helper call per packet); the daemon reads the same clock through the
//! `task_router_clock` program and learns HZ by comparing it with its own clock.

use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::Array};

#[map(name = "CLOCK")]
static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() as u32 }
}

/// Stores the full jiffies value for the daemon.
#[inline(always)]
pub fn publish() {
    if let Some(slot) = CLOCK.get_ptr_mut(0) {
        // SAFETY: a single u64 slot, written whole.
        unsafe { *slot = bpf_jiffies64() };
    }
}
