//! The connection table: lookups, creation with NAT source-port allocation, removal of a pair,
//! and the live-connection count that makes a full table a counted drop. How far a
//! connection's close got is `closing`'s.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    macros::map,
    maps::{Array, LruHashMap},
};
use router_common::{
    config::{CT_COUNT_SIZE, CT_CREATED, CT_REMOVED},
    conntrack::{CtKey4, CtValue4},
};

/// Sized by the daemon at load time (`2 * max_connections` plus headroom for the LRU's per-CPU
/// free lists, so the LRU never has to evict a live connection before the count says full).
#[map(name = "CT4")]
static CT4: LruHashMap<CtKey4, CtValue4> = LruHashMap::with_max_entries(1024, 0);

#[map(name = "CT_COUNT")]
static CT_COUNT: Array<u64> = Array::with_max_entries(CT_COUNT_SIZE, 0);

#[inline(always)]
pub fn lookup(key: &CtKey4) -> Option<*mut CtValue4> {
    CT4.get_ptr_mut(key)
}

/// Inserts `value` under `key` unless the key exists.
#[inline(always)]
pub fn insert_new(key: &CtKey4, value: &CtValue4) -> bool {
    CT4.insert(key, value, BPF_NOEXIST as u64).is_ok()
}

/// Overwrites the entry at `key` (which must exist).
#[inline(always)]
pub fn replace(key: &CtKey4, value: &CtValue4) -> bool {
    CT4.insert(key, value, BPF_EXIST as u64).is_ok()
}

#[inline(always)]
pub fn remove(key: &CtKey4) {
    let _ = CT4.remove(key);
}

/// Removes the entry at `key` and its partner.
#[inline(always)]
pub fn remove_pair(key: &CtKey4, value: *const CtValue4) {
    // SAFETY: `value` is a map value pointer from `lookup`, read before the removal.
    let partner = CtKey4::partner_of(unsafe { &*value });
    remove(&partner);
    remove(key);
}

/// Connections created minus removed (by the daemon's sweeper).
#[inline(always)]
pub fn live() -> u64 {
    let created = CT_COUNT.get(CT_CREATED).copied().unwrap_or(0);
    let removed = CT_COUNT.get(CT_REMOVED).copied().unwrap_or(0);
    created.saturating_sub(removed)
}

#[inline(always)]
pub fn count_created() {
    if let Some(p) = CT_COUNT.get_ptr_mut(CT_CREATED) {
        // SAFETY: an aligned u64 map value; several CPUs add, so the add is atomic (BPF_XADD;
        // the BPF target has no compare-and-swap, so `AtomicU64::fetch_add` is not offered).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, 1,
            );
        }
    }
}
