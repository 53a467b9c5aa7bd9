//! Types shared by the kernel programs (`router-ebpf`) and the daemon (`router-userspace`).
//!
//! Only layouts live here: every type is `#[repr(C)]`, has no padding the kernel could leave
//! uninitialised, and carries a compile-time size assertion so both sides agree byte for byte.
//! Addresses and ports inside map keys and values are in network byte order (as they sit in
//! the packet) unless a field's doc says otherwise.
#![no_std]

pub mod client_allow;
pub mod config;
pub mod conntrack;
pub mod csum;
pub mod route;
pub mod stats;

/// Bumped whenever a map key or value layout changes incompatibly; the daemon refuses to adopt
/// pinned maps of another version.
pub const LAYOUT_VERSION: u32 = 6;

/// Asserts a type's size and alignment at compile time.
#[macro_export]
macro_rules! assert_layout {
    ($t:ty, size = $size:expr, align = $align:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        const _: () = assert!(core::mem::align_of::<$t>() == $align);
    };
}
