//! A device's `xdp-features`, from the `netdev` generic netlink family (kernel 6.3+): whether
//! its driver runs XDP natively (`basic`) and whether it takes frames other interfaces redirect
//! to it (`ndo-xmit`). A veth takes them only while its peer runs an XDP program or has GRO on
//! (the peer needs NAPI to receive them, `shared/kernel-notes.md`); the kernel updates the flag
//! as that changes.

use super::netlink::{self, GENL_HDR, NLM_F_DUMP, NLM_F_REQUEST, attributes, u32_at, u64_at};
use std::collections::BTreeMap;
use std::io;

// linux/netdev.h.
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

/// A device's `xdp-features` bits (`enum netdev_xdp_act`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpFeatures(pub u64);

impl XdpFeatures {
    const BASIC: u64 = 1 << 0;
    const NDO_XMIT: u64 = 1 << 2;

    /// The driver runs XDP programs natively.
    pub fn native(self) -> bool {
        self.0 & Self::BASIC != 0
    }

    /// The device takes frames redirected to it by XDP (`ndo_xdp_xmit`).
    pub fn takes_redirects(self) -> bool {
        self.0 & Self::NDO_XMIT != 0
    }
}

/// Every device's `xdp-features` in the calling thread's network namespace, by ifindex;
/// `None` when the kernel has no `netdev` family (before 6.3: nothing can be told).
pub fn xdp_features() -> io::Result<Option<BTreeMap<u32, XdpFeatures>>> {
    let Some(family) = netlink::genl_family_id("netdev")? else {
        return Ok(None);
    };
    let seq = 1;
    let request = netlink::message(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &netlink::genl_body(NETDEV_CMD_DEV_GET, &[]),
    );
    let mut devices = BTreeMap::new();
    netlink::exchange(libc::NETLINK_GENERIC, &request, |datagram| {
        parse_devices(datagram, family, seq, &mut devices)
    })?;
    Ok(Some(devices))
}

/// Parses one datagram of a `netdev` device dump into `devices`; true when it is complete.
fn parse_devices(
    datagram: &[u8],
    family: u16,
    seq: u32,
    devices: &mut BTreeMap<u32, XdpFeatures>,
) -> io::Result<bool> {
    netlink::answer_datagram(datagram, seq, |kind, body| {
        if kind != family {
            return Ok(());
        }
        let attrs = body
            .get(GENL_HDR..)
            .ok_or_else(|| netlink::malformed("genlmsghdr"))?;
        let (mut index, mut features) = (None, XdpFeatures::default());
        for a in attributes(attrs) {
            let (kind, payload) = a?;
            match kind {
                NETDEV_A_DEV_IFINDEX => index = u32_at(payload, 0),
                NETDEV_A_DEV_XDP_FEATURES => {
                    features = XdpFeatures(u64_at(payload, 0).unwrap_or(0))
                }
                _ => {}
            }
        }
        if let Some(index) = index {
            devices.insert(index, features);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_dump_reads_index_and_features() {
        use netlink::{NLMSG_DONE, attr, message};
        let family = 0x20;
        let device = |index: u32, features: u64| {
            let attrs = [
                attr(NETDEV_A_DEV_IFINDEX, &index.to_ne_bytes()),
                attr(NETDEV_A_DEV_XDP_FEATURES, &features.to_ne_bytes()),
            ]
            .concat();
            message(
                family,
                0,
                1,
                &netlink::genl_body(NETDEV_CMD_DEV_GET, &attrs),
            )
        };
        let mut datagram = [device(1, 0), device(7, 0b111)].concat();
        let mut devices = BTreeMap::new();
        assert!(!parse_devices(&datagram, family, 1, &mut devices).expect("parse"));
        datagram = message(NLMSG_DONE, 0, 1, &0u32.to_ne_bytes());
        assert!(parse_devices(&datagram, family, 1, &mut devices).expect("parse"));
        assert_eq!(devices[&7], XdpFeatures(0b111));
        assert!(devices[&7].native() && devices[&7].takes_redirects());
        assert!(!devices[&1].native());
        let cut = &device(1, 0)[..20];
        assert!(parse_devices(cut, family, 1, &mut BTreeMap::new()).is_err());
    }

    #[test]
    fn the_kernel_answers_for_the_loopback_device() {
        let features = xdp_features().expect("netdev dump").expect("kernel 6.3+");
        let lo = crate::datapath::attach::ifindex("lo").expect("lo");
        assert!(features.contains_key(&lo), "{features:?}");
    }
}
