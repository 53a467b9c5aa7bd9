//! Which clients may open a connection to a router port (`CLIENT_ALLOW`, see
//! `router_common::client_allow`). Asked only when a SYN would open a connection: packets of
//! established connections never reach it, so their cost is unchanged and a changed list leaves
//! them flowing.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
};
use router_common::client_allow::{
    CLIENT_ALLOW_MAP_SIZE, CLIENT_REFUSED, ClientAllowData, FULL_PREFIX_LEN,
};

#[map(name = "CLIENT_ALLOW")]
static CLIENT_ALLOW: LpmTrie<ClientAllowData, u32> =
    LpmTrie::with_max_entries(CLIENT_ALLOW_MAP_SIZE, 0);

/// Where the look-up key is built: the callers' frames already hold nearly all of the 512
/// bytes of stack a program may use, and the key would push them over.
#[map(name = "ALLOW_KEY")]
static ALLOW_KEY: PerCpuArray<Key<ClientAllowData>> = PerCpuArray::with_max_entries(1, 0);

/// Whether client `saddr` (network order, as in the packet) may open a connection to router
/// `port` (host order): yes when the port has no list, else when the longest match is one of
/// its CIDRs.
#[inline(always)]
pub fn admits(saddr: u32, port: u16) -> bool {
    let Some(key) = ALLOW_KEY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a map value pointer of this CPU's slot, written whole, then read by the helper.
    let key = unsafe {
        key.write(Key::new(FULL_PREFIX_LEN, ClientAllowData::new(port, saddr)));
        &*key
    };
    match CLIENT_ALLOW.get(key) {
        Some(verdict) => *verdict != CLIENT_REFUSED,
        None => true,
    }
}
