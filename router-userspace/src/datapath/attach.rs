//! Attaching the programs to interfaces, in the mode each interface can serve.
//!
//! On veth, bridges and other virtual devices TC is the fast path (it moves GSO super-packets,
//! XDP cannot; `shared/kernel-notes.md`), so `auto` picks TC there and native XDP on physical
//! NICs whose driver supports it, falling back to TC when the driver refuses.

use super::object::maps::TX_PORTS;
use super::object::{DatapathError, TC_PROGRAM, XDP_PROGRAM, tc_program, xdp_program};
use aya::Ebpf;
use aya::maps::DevMapHash;
use aya::programs::{TcAttachType, XdpMode};
use std::fmt;

/// The mode asked for an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native XDP on physical NICs that support it, TC elsewhere.
    Auto,
    /// Native (driver) XDP; fails where the driver has none.
    Xdp,
    /// Generic (skb) XDP: slow, only when asked.
    XdpGeneric,
    /// TC ingress (TCX link).
    Tc,
}

/// The mode an interface actually got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResolvedMode {
    Xdp,
    XdpGeneric,
    Tc,
}

impl ResolvedMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ResolvedMode::Xdp => "xdp",
            ResolvedMode::XdpGeneric => "xdp-generic",
            ResolvedMode::Tc => "tc",
        }
    }
}

impl fmt::Display for ResolvedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One interface with the mode it got.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attached {
    pub interface: String,
    pub mode: ResolvedMode,
}

/// Drivers of virtual devices, where TC is the right hook.
const VIRTUAL_DRIVERS: &[&str] = &[
    "veth",
    "bridge",
    "tun",
    "dummy",
    "vxlan",
    "geneve",
    "macvlan",
    "ipvlan",
    "bonding",
    "openvswitch",
    "wireguard",
    "vrf",
    "team",
    "nlmon",
    "ifb",
];

/// Whether `interface` is a physical NIC, from the driver it reports through the ethtool ioctl
/// (asked in the calling thread's network namespace; sysfs may show another namespace's view).
pub fn is_physical(interface: &str) -> bool {
    match driver_info(interface) {
        Some((driver, bus)) => {
            !VIRTUAL_DRIVERS.contains(&driver.as_str()) && !bus.is_empty() && bus != "N/A"
        }
        None => false,
    }
}

fn interface_index(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `(driver, bus_info)` from `ETHTOOL_GDRVINFO`.
fn driver_info(interface: &str) -> Option<(String, String)> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket used only for the ioctl and closed right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` points at a live `DrvInfo` as SIOCETHTOOL expects.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some((text(&info.driver), text(&info.bus_info)))
}

/// Attaches to `interface` in `mode`; returns the mode it got. In the XDP modes the TC
/// program is attached too: XDP passes it what XDP cannot deliver (no neighbour entry yet, an
/// egress that takes no XDP redirects, an oversized frame) untouched. Interfaces in native XDP
/// mode become XDP redirect targets (`TX_PORTS`); a veth there needs an XDP program or GRO on
/// its peer, or redirected frames are lost.
pub fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    mode: AttachMode,
) -> Result<Attached, DatapathError> {
    let Some(ifindex) = interface_index(interface) else {
        return Err(DatapathError::NoSuchInterface(interface.to_string()));
    };
    let mode = match mode {
        AttachMode::Xdp => attach_xdp(ebpf, interface, XdpMode::Driver)?,
        AttachMode::XdpGeneric => attach_xdp(ebpf, interface, XdpMode::Skb)?,
        AttachMode::Tc => attach_tc(ebpf, interface)?,
        AttachMode::Auto if is_physical(interface) => {
            match attach_xdp(ebpf, interface, XdpMode::Driver) {
                Ok(mode) => mode,
                Err(e) => {
                    tracing::warn!(
                        interface,
                        error = %crate::datapath::error_chain(&e),
                        "native XDP unavailable, using TC"
                    );
                    attach_tc(ebpf, interface)?
                }
            }
        }
        AttachMode::Auto => attach_tc(ebpf, interface)?,
    };
    if mode != ResolvedMode::Tc {
        attach_tc(ebpf, interface)?;
    }
    if mode == ResolvedMode::Xdp {
        add_xdp_target(ebpf, ifindex)?;
    }
    Ok(Attached {
        interface: interface.to_string(),
        mode,
    })
}

/// Lets XDP redirect to `ifindex` (an interface whose driver takes redirected frames).
pub fn add_xdp_target(ebpf: &mut Ebpf, ifindex: u32) -> Result<(), DatapathError> {
    let map = ebpf
        .map_mut(TX_PORTS)
        .ok_or(DatapathError::MissingMap(TX_PORTS))?;
    let mut devmap: DevMapHash<_> =
        DevMapHash::try_from(map).map_err(|source| DatapathError::MapRead {
            map: TX_PORTS,
            source: Box::new(source),
        })?;
    devmap
        .insert(ifindex, ifindex, None, 0)
        .map_err(|source| DatapathError::XdpTarget {
            ifindex,
            source: Box::new(source),
        })
}

/// The index of `interface` in the calling thread's network namespace.
pub fn ifindex(interface: &str) -> Result<u32, DatapathError> {
    interface_index(interface).ok_or_else(|| DatapathError::NoSuchInterface(interface.to_string()))
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    interface: &str,
    mode: XdpMode,
) -> Result<ResolvedMode, DatapathError> {
    let (label, resolved) = match mode {
        XdpMode::Skb => ("xdp-generic", ResolvedMode::XdpGeneric),
        _ => ("xdp", ResolvedMode::Xdp),
    };
    let program = xdp_program(ebpf, XDP_PROGRAM)?;
    program
        .attach(interface, mode)
        .map_err(|source| DatapathError::Attach {
            source: Box::new(source),
            program: XDP_PROGRAM,
            interface: interface.to_string(),
            mode: label,
        })?;
    Ok(resolved)
}

fn attach_tc(ebpf: &mut Ebpf, interface: &str) -> Result<ResolvedMode, DatapathError> {
    let program = tc_program(ebpf, TC_PROGRAM)?;
    program
        .attach(interface, TcAttachType::Ingress)
        .map_err(|source| DatapathError::Attach {
            source: Box::new(source),
            program: TC_PROGRAM,
            interface: interface.to_string(),
            mode: "tc",
        })?;
    Ok(ResolvedMode::Tc)
}
