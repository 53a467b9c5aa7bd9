//! Attaching the programs to interfaces, in the mode each interface can serve.
//!
//! On veth, bridges and other virtual devices TC is the fast path (it moves GSO super-packets,
//! XDP cannot; `shared/kernel-notes.md`), so `auto` picks TC there and native XDP on physical
//! NICs whose driver supports it, falling back to TC when the driver refuses.

use super::object::maps::TX_PORTS;
use super::object::{DatapathError, TC_PROGRAM, XDP_PROGRAM, tc_program, xdp_program};
use super::options::AttachMode;
use aya::Ebpf;
use aya::maps::DevMapHash;
use aya::programs::{TcAttachType, XdpMode};
use std::fmt;

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
pub(super) fn driver_info(interface: &str) -> Option<(String, String)> {
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
/// egress that takes no XDP redirects, an oversized frame) untouched. Which native XDP
/// interfaces XDP may redirect to (`TX_PORTS`) is [`super::xdp_targets`]' to say.
pub fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    mode: AttachMode,
) -> Result<Attached, DatapathError> {
    if interface_index(interface).is_none() {
        return Err(DatapathError::NoSuchInterface(interface.to_string()));
    }
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
                        error = %crate::error::error_chain(&e),
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

// ------------------------------------------------------------------------------------------
// Pinned links: attached once, then kept by their pin; a later daemon replaces the program in
// them atomically (BPF_LINK_UPDATE through aya's `attach_to_link`), so no packet meets an
// interface without a program.

use super::pins::{LinkKind, PinDir};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;

/// What happened to one link of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// Newly attached and pinned.
    Attached { kind: LinkKind, program_id: u32 },
    /// Pinned by an earlier daemon; now runs this daemon's program.
    Replaced {
        kind: LinkKind,
        link_id: u32,
        old_program_id: u32,
        new_program_id: u32,
    },
    /// Pinned, but no longer wanted (another mode configured): detached and unpinned.
    Removed { kind: LinkKind },
}

fn link_error(
    operation: &'static str,
    kind: LinkKind,
    interface: &str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DatapathError {
    let interface = interface.to_string();
    move |source| DatapathError::Link {
        operation,
        kind: kind.as_str(),
        interface,
        source,
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

fn program_id_of(link: &FdLink, kind: LinkKind, interface: &str) -> Result<u32, DatapathError> {
    link.info()
        .map(|i| i.program_id())
        .map_err(|e| link_error("reading", kind, interface)(boxed(e)))
}

/// Whether a link update failed because the link's interface is gone (the link is defunct).
fn is_defunct(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOLINK))
}

/// Puts this object's program into the pinned link of `kind` on `interface`. `Ok(None)` when
/// the link is defunct (its interface was deleted since); it is unpinned then.
fn replace_pinned(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    kind: LinkKind,
    interface: &str,
) -> Result<Option<LinkChange>, DatapathError> {
    let path = pins.link_path(kind, interface);
    let pinned = PinnedLink::from_pin(&path)
        .map_err(|e| link_error("opening", kind, interface)(boxed(e)))?;
    let fd_link = FdLink::from(pinned);
    let info = fd_link
        .info()
        .map_err(|e| link_error("reading", kind, interface)(boxed(e)))?;
    // aya 0.14 has no trait over program types for this, so one body for both link types.
    macro_rules! replace_program {
        ($link:ty, $program:expr) => {{
            let link = <$link>::try_from(fd_link)
                .map_err(|e| link_error("adopting", kind, interface)(boxed(e)))?;
            let program = $program?;
            match program.attach_to_link(link) {
                Ok(id) => {
                    let link = program
                        .take_link(id)
                        .map_err(|e| link_error("taking", kind, interface)(boxed(e)))?;
                    Some(
                        FdLink::try_from(link)
                            .map_err(|e| link_error("taking", kind, interface)(boxed(e)))?,
                    )
                }
                Err(e) if is_defunct(&e) => None,
                Err(e) => return Err(link_error("updating", kind, interface)(boxed(e))),
            }
        }};
    }
    let updated = match kind {
        LinkKind::Tc => replace_program!(SchedClassifierLink, tc_program(ebpf, TC_PROGRAM)),
        LinkKind::Xdp | LinkKind::XdpGeneric => {
            replace_program!(XdpLink, xdp_program(ebpf, XDP_PROGRAM))
        }
    };
    let Some(link) = updated else {
        tracing::warn!(
            interface,
            kind = kind.as_str(),
            "the pinned link's interface is gone; attaching anew"
        );
        std::fs::remove_file(&path)
            .map_err(|e| link_error("unpinning", kind, interface)(boxed(e)))?;
        return Ok(None);
    };
    let new_program_id = program_id_of(&link, kind, interface)?;
    // The pin keeps the link attached; this process's handle is not needed.
    drop(link);
    Ok(Some(LinkChange::Replaced {
        kind,
        link_id: info.id(),
        old_program_id: info.program_id(),
        new_program_id,
    }))
}

/// Attaches the program of `kind` to `interface` and pins the link.
fn attach_and_pin(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    kind: LinkKind,
    interface: &str,
) -> Result<LinkChange, DatapathError> {
    let path = pins.link_path(kind, interface);
    let link: FdLink = match kind {
        LinkKind::Tc => {
            let program = tc_program(ebpf, TC_PROGRAM)?;
            let id = program
                .attach(interface, TcAttachType::Ingress)
                .map_err(|source| DatapathError::Attach {
                    source: Box::new(source),
                    program: TC_PROGRAM,
                    interface: interface.to_string(),
                    mode: "tc",
                })?;
            let link = program
                .take_link(id)
                .map_err(|e| link_error("taking", kind, interface)(boxed(e)))?;
            FdLink::try_from(link).map_err(|e| link_error("taking", kind, interface)(boxed(e)))?
        }
        LinkKind::Xdp | LinkKind::XdpGeneric => {
            let (mode, label) = if kind == LinkKind::Xdp {
                (XdpMode::Driver, "xdp")
            } else {
                (XdpMode::Skb, "xdp-generic")
            };
            let program = xdp_program(ebpf, XDP_PROGRAM)?;
            let id = program
                .attach(interface, mode)
                .map_err(|source| DatapathError::Attach {
                    source: Box::new(source),
                    program: XDP_PROGRAM,
                    interface: interface.to_string(),
                    mode: label,
                })?;
            let link = program
                .take_link(id)
                .map_err(|e| link_error("taking", kind, interface)(boxed(e)))?;
            FdLink::try_from(link).map_err(|e| link_error("taking", kind, interface)(boxed(e)))?
        }
    };
    let program_id = program_id_of(&link, kind, interface)?;
    link.pin(&path)
        .map_err(|e| link_error("pinning", kind, interface)(boxed(e)))?;
    Ok(LinkChange::Attached { kind, program_id })
}

/// Detaches and unpins the pinned link of `kind` on `interface`.
pub fn remove_pinned(pins: &PinDir, kind: LinkKind, interface: &str) -> Result<(), DatapathError> {
    let path = pins.link_path(kind, interface);
    if let Err(e) = super::sys::detach_pinned_link(&path) {
        tracing::debug!(link = %path.display(), error = %e, "detaching before unpinning");
    }
    std::fs::remove_file(&path).map_err(|e| link_error("unpinning", kind, interface)(boxed(e)))
}

/// [`attach`] with pinned links: adopts (replaces the program in) the links an earlier daemon
/// pinned for `interface` in the mode asked, attaches and pins the missing ones, and removes
/// pinned links of another mode. `auto` keeps the XDP-or-TC choice a pinned link records.
pub fn attach_pinned(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    pinned: &[LinkKind],
    interface: &str,
    mode: AttachMode,
) -> Result<(Attached, Vec<LinkChange>), DatapathError> {
    if interface_index(interface).is_none() {
        return Err(DatapathError::NoSuchInterface(interface.to_string()));
    }
    let has = |k: LinkKind| pinned.contains(&k);
    let xdp_kind = match mode {
        AttachMode::Tc => None,
        AttachMode::Xdp => Some(LinkKind::Xdp),
        AttachMode::XdpGeneric => Some(LinkKind::XdpGeneric),
        AttachMode::Auto if has(LinkKind::Xdp) => Some(LinkKind::Xdp),
        AttachMode::Auto if has(LinkKind::Tc) => None,
        AttachMode::Auto if is_physical(interface) => Some(LinkKind::Xdp),
        AttachMode::Auto => None,
    };
    let mut changes = Vec::new();
    for &kind in pinned {
        if kind != LinkKind::Tc && Some(kind) != xdp_kind {
            remove_pinned(pins, kind, interface)?;
            changes.push(LinkChange::Removed { kind });
        }
    }
    let mut wanted = vec![LinkKind::Tc];
    wanted.extend(xdp_kind);
    let mut resolved = ResolvedMode::Tc;
    for kind in wanted {
        let adopted = if has(kind) {
            replace_pinned(ebpf, pins, kind, interface)?
        } else {
            None
        };
        let change = match adopted {
            Some(change) => change,
            None => match attach_and_pin(ebpf, pins, kind, interface) {
                Ok(change) => change,
                Err(e) if mode == AttachMode::Auto && kind == LinkKind::Xdp => {
                    tracing::warn!(
                        interface,
                        error = %crate::error::error_chain(&e),
                        "native XDP unavailable, using TC"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        changes.push(change);
        resolved = match kind {
            LinkKind::Tc => resolved,
            LinkKind::Xdp => ResolvedMode::Xdp,
            LinkKind::XdpGeneric => ResolvedMode::XdpGeneric,
        };
    }
    Ok((
        Attached {
            interface: interface.to_string(),
            mode: resolved,
        },
        changes,
    ))
}
