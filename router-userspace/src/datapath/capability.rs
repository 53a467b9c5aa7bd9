//! What an interface can do for the datapath, asked of the kernel, and what that makes of the
//! mode configured for it: fine, degraded (it forwards, slower or with a condition the daemon
//! cannot see: a warning and `task_router_datapath_degraded`), or impossible (the daemon
//! refuses to start, exit 2, before anything is attached).
//!
//! The kernel's own answer decides, not a list of drivers: its `xdp-features`
//! ([`super::xdp_features`]) say whether a driver runs native XDP and takes redirected frames;
//! the driver name comes from the ethtool ioctl, the link kind from `RTM_GETLINK`. Also here:
//! whether the attached interfaces can still deliver ([`undeliverable`]), asked every cycle.

use super::attach::{Attached, driver_info};
use super::options::AttachMode;
use super::peer_devs;
use super::xdp_features::{XdpFeatures, xdp_features};
use std::io;

/// What the kernel says about one configured interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// From the ethtool ioctl (`None`: the device answers none).
    pub driver: Option<String>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...).
    pub kind: Option<String>,
    /// `None`: the kernel cannot tell (no `netdev` family).
    pub xdp: Option<XdpFeatures>,
}

impl Interface {
    fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth") || self.driver.as_deref() == Some("veth")
    }

    fn driver_name(&self) -> &str {
        self.driver
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("unknown")
    }
}

/// Asks the kernel about `names` (in the calling thread's network namespace). An interface
/// the kernel does not list is left out (attaching names it).
pub fn probe(names: &[&str]) -> io::Result<Vec<Interface>> {
    let links = peer_devs::dump_links()?;
    let features = xdp_features()?;
    Ok(names
        .iter()
        .filter_map(|name| {
            let link = links.iter().find(|l| l.name == *name)?;
            Some(Interface {
                name: link.name.clone(),
                driver: driver_info(name).map(|(driver, _)| driver),
                kind: link.kind.clone(),
                xdp: features
                    .as_ref()
                    .map(|f| f.get(&link.index).copied().unwrap_or_default()),
            })
        })
        .collect())
}

/// A mode that runs on an interface, but not as well as it could.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Degradation {
    pub interface: String,
    /// A short name for the metric label (`xdp_no_redirect_target`, ...).
    pub reason: String,
    /// What it means and what to do, for the log and `/readyz`.
    pub detail: String,
}

/// What `mode` makes of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    Degraded(Degradation),
    /// It cannot work: why, naming the interface and what to use instead.
    Refused(String),
}

/// The verdict for `mode` on `iface` (pure: everything asked of the kernel is in `iface`).
pub fn assess(iface: &Interface, mode: AttachMode) -> Verdict {
    let degraded = |reason: &str, detail: String| {
        Verdict::Degraded(Degradation {
            interface: iface.name.clone(),
            reason: reason.to_string(),
            detail,
        })
    };
    let name = &iface.name;
    match mode {
        AttachMode::Auto | AttachMode::Tc => Verdict::Fine,
        AttachMode::XdpGeneric => degraded(
            "xdp_generic",
            format!(
                "generic XDP on {name} runs after the kernel built each packet and never \
                 redirects: the TC program forwards everything and XDP only adds work; \
                 ROUTER_DATAPATH=tc does the same without it"
            ),
        ),
        AttachMode::Xdp => match iface.xdp {
            Some(f) if !f.native() => Verdict::Refused(format!(
                "interface {name} (driver {}) has no native XDP support, so \
                 ROUTER_DATAPATH=xdp cannot run there; use ROUTER_DATAPATH=auto or tc \
                 (or xdp-generic)",
                iface.driver_name()
            )),
            _ if iface.is_veth() => degraded(
                "xdp_on_veth",
                format!(
                    "native XDP on veth {name}: what a local sender puts on a veth carries a \
                     partial checksum XDP cannot see, so while a veth runs native XDP, XDP \
                     translates nothing and hands every packet to the TC program, which \
                     forwards it; native XDP on a veth also turns GSO off on its peer, so this \
                     is slower than ROUTER_DATAPATH=auto or tc, the modes for veth"
                ),
            ),
            Some(f) if !f.takes_redirects() => degraded(
                "xdp_no_redirect_target",
                format!(
                    "{name} (driver {}) takes no XDP redirects: XDP hands the packets leaving \
                     through it to the TC program, which forwards them",
                    iface.driver_name()
                ),
            ),
            // Supported, or an older kernel that cannot say (attaching will).
            _ => Verdict::Fine,
        },
    }
}

/// Refused interface and mode combinations: the daemon does not start (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("the configured datapath cannot run here: {}", .0.join("; "))]
pub struct ModeRefused(pub Vec<String>);

/// What the start-up check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Interfaces whose mode forwards, but not as well as it could (each logged as a warning).
    pub degraded: Vec<Degradation>,
    /// Whether XDP may redirect (and so translate): not while a veth runs native XDP.
    pub xdp_redirects: bool,
}

impl Checked {
    /// Nothing degraded, XDP free to redirect.
    pub fn nothing_found() -> Checked {
        Checked {
            degraded: Vec::new(),
            xdp_redirects: true,
        }
    }
}

/// Checks every `(interface, mode)` before anything is attached: the refusals as one error,
/// else what runs degraded.
pub fn check(interfaces: &[(&str, AttachMode)]) -> Result<Checked, ModeRefused> {
    let names: Vec<&str> = interfaces.iter().map(|(name, _)| *name).collect();
    let mut checked = Checked::nothing_found();
    let probed = match probe(&names) {
        Ok(p) => p,
        Err(e) => {
            // Without an answer the attach itself is the check (as before this existed).
            tracing::warn!(error = %e, "cannot ask the kernel what the interfaces support");
            return Ok(checked);
        }
    };
    let mut refused = Vec::new();
    for iface in &probed {
        let Some((_, mode)) = interfaces.iter().find(|(n, _)| *n == iface.name) else {
            continue;
        };
        tracing::info!(
            interface = %iface.name,
            driver = iface.driver_name(),
            native_xdp = ?iface.xdp.map(XdpFeatures::native),
            takes_xdp_redirects = ?iface.xdp.map(XdpFeatures::takes_redirects),
            "interface capabilities"
        );
        if *mode == AttachMode::Xdp && iface.is_veth() {
            checked.xdp_redirects = false;
        }
        match assess(iface, *mode) {
            Verdict::Fine => {}
            Verdict::Refused(why) => refused.push(why),
            Verdict::Degraded(d) => {
                tracing::warn!(interface = %d.interface, reason = %d.reason, "degraded datapath: {}", d.detail);
                checked.degraded.push(d);
            }
        }
    }
    if refused.is_empty() {
        Ok(checked)
    } else {
        Err(ModeRefused(refused))
    }
}

/// Why the attached interfaces cannot deliver now, if so: one was deleted (or replaced: its
/// index changed, so the programs went with the old one) or set down. `attached` holds each
/// interface with its index at attach time.
pub fn undeliverable(attached: &[(Attached, u32)]) -> Option<String> {
    let problems: Vec<String> = attached
        .iter()
        .filter_map(|(a, index)| match link_state(&a.interface) {
            None => Some(format!("interface {} is gone", a.interface)),
            Some((now, _)) if now != *index => Some(format!(
                "interface {} was replaced (index {index} -> {now}); restart the daemon to \
                 attach to it",
                a.interface
            )),
            Some((_, false)) => Some(format!("interface {} is down", a.interface)),
            Some(_) => None,
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// `(ifindex, administratively up)` of `interface` in the calling thread's namespace.
pub fn link_state(interface: &str) -> Option<(u32, bool)> {
    let index = super::attach::ifindex(interface).ok()?;
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid `ifreq`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a datagram socket used only for the ioctl and closed right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` is a live `ifreq` naming the device, as SIOCGIFFLAGS expects.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Some((index, flags & libc::IFF_UP as libc::c_short != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, kind: Option<&str>, xdp: Option<u64>) -> Interface {
        Interface {
            name: name.into(),
            driver: kind.map(str::to_string),
            kind: kind.map(str::to_string),
            xdp: xdp.map(XdpFeatures),
        }
    }

    fn reason(v: &Verdict) -> &str {
        match v {
            Verdict::Degraded(d) => &d.reason,
            Verdict::Refused(_) => "refused",
            Verdict::Fine => "fine",
        }
    }

    #[test]
    fn native_xdp_where_the_driver_has_none_is_refused_with_what_to_use() {
        let bridge = iface("br0", Some("bridge"), Some(0));
        let Verdict::Refused(why) = assess(&bridge, AttachMode::Xdp) else {
            panic!("bridge accepted");
        };
        assert!(why.contains("br0") && why.contains("bridge"), "{why}");
        assert!(why.contains("ROUTER_DATAPATH=auto or tc"), "{why}");
        for mode in [AttachMode::Auto, AttachMode::Tc] {
            assert_eq!(assess(&bridge, mode), Verdict::Fine);
        }
        assert_eq!(
            reason(&assess(&bridge, AttachMode::XdpGeneric)),
            "xdp_generic"
        );
    }

    #[test]
    fn native_xdp_on_veth_runs_degraded_whatever_its_peer_takes() {
        // basic | redirect | rx-sg: a veth whose peer has neither XDP nor GRO; + ndo-xmit.
        for features in [0b10_0011, 0b110_0111] {
            let v = iface("v0", Some("veth"), Some(features));
            let verdict = assess(&v, AttachMode::Xdp);
            assert_eq!(reason(&verdict), "xdp_on_veth");
            let Verdict::Degraded(d) = verdict else {
                panic!("{verdict:?}")
            };
            assert!(
                d.detail.contains("ROUTER_DATAPATH=auto or tc"),
                "{}",
                d.detail
            );
        }
        // A NIC that takes redirects is what native XDP is for; one that does not is
        // served through TC for what leaves through it.
        let nic = iface("eth0", Some("mlx5_core"), Some(0b111_1111));
        assert_eq!(assess(&nic, AttachMode::Xdp), Verdict::Fine);
        let no_xmit = iface("eth1", Some("e1000e"), Some(0b11));
        assert_eq!(
            reason(&assess(&no_xmit, AttachMode::Xdp)),
            "xdp_no_redirect_target"
        );
        // A kernel that cannot tell: the attach decides.
        assert_eq!(
            assess(&iface("x", None, None), AttachMode::Xdp),
            Verdict::Fine
        );
    }

    #[test]
    fn the_kernel_tells_the_state_of_a_link() {
        let lo = crate::datapath::attach::ifindex("lo").expect("lo");
        assert_eq!(link_state("lo").map(|(i, _)| i), Some(lo));
        assert_eq!(link_state("no-such-if0"), None);
    }
}
