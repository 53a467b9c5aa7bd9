//! What the daemon tells the programs: settings, which ports to look at, which addresses are
//! the router's own.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap},
};
use router_common::config::{BACKEND_BASE, PORT_FLAGS_SIZE, Settings};

#[map(name = "CONFIG")]
static CONFIG: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "PORT_FLAGS")]
static PORT_FLAGS: Array<u64> = Array::with_max_entries(PORT_FLAGS_SIZE, 0);

/// The router's IPv4 addresses (network order) on which router ports accept connections.
#[map(name = "LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    CONFIG.get(0)
}

#[inline(always)]
fn bit(base: u32, port: u16) -> bool {
    match PORT_FLAGS.get(base + (port >> 6) as u32) {
        Some(word) => (*word >> (port & 63)) & 1 != 0,
        None => false,
    }
}

/// Whether `port` (host order) is a router port with a route or live connections.
#[inline(always)]
pub fn is_router_port(port: u16) -> bool {
    bit(0, port)
}

/// Whether `port` (host order) is a backend port, i.e. replies may come from it.
#[inline(always)]
pub fn is_backend_port(port: u16) -> bool {
    bit(BACKEND_BASE, port)
}

/// Whether `addr` (network order) is one of the router's addresses.
#[inline(always)]
pub fn is_local(addr: u32) -> bool {
    LOCAL_ADDRS.get_ptr(addr).is_some()
}
