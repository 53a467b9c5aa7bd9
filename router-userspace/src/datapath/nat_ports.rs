//! Which source ports toward tasks the kernel may draw when it does not keep a client's own:
//! the configured set ([`NatSourcePorts`]) less the router host's ephemeral range, which the
//! datapath follows while it runs (`host_range`; a change applies to the next connection).
//!
//! Why: the host's own connections to tasks (nginx proxying HTTP routes, health checks, the
//! SDK) leave from the same router address with ports from that range. A client given such a
//! tuple may meet the task's TIME_WAIT of a host connection (unrelated timestamps: PAWS, a 1 s
//! SYN retransmission) or a host connection in progress (whose replies would then be
//! translated to the client); and the host's `connect()` cannot know our tuples. Disjoint
//! ranges rule out both.

use super::options::NatSourcePorts;
use crate::host_ephemeral::PortRange;
use router_common::config::{NAT_PORT_SPANS, PortSpan};

/// The lowest port `auto` draws (below are the well-known ports).
pub const AUTO_FIRST_PORT: u16 = 1024;

/// The spans of `nat` outside `host` (and, for `auto`, outside its router ports), in order.
pub fn spans(nat: NatSourcePorts, host: PortRange) -> [PortSpan; NAT_PORT_SPANS] {
    let (base, router_ports) = match nat {
        NatSourcePorts::Auto { router_ports } => ((AUTO_FIRST_PORT, u16::MAX), router_ports),
        NatSourcePorts::Range(first, last) => ((first, last), None),
    };
    let mut pieces = vec![base];
    let excluded = [Some((host.first, host.last)), router_ports];
    for (lo, hi) in excluded.into_iter().flatten() {
        pieces = pieces
            .into_iter()
            .flat_map(|(first, last)| {
                let below = (first < lo).then(|| (first, last.min(lo - 1)));
                let above = (last > hi).then(|| (first.max(hi + 1), last));
                below.into_iter().chain(above)
            })
            .collect();
    }
    let mut out = [PortSpan::default(); NAT_PORT_SPANS];
    // Two ranges taken out of one leave at most three pieces.
    for (slot, (first, last)) in out.iter_mut().zip(pieces) {
        *slot = PortSpan { first, last };
    }
    out
}

/// Ports in all of `spans`.
pub fn count(spans: &[PortSpan]) -> u32 {
    spans.iter().map(PortSpan::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: PortRange = PortRange {
        first: 32768,
        last: 60999,
    };

    fn pairs(spans: [PortSpan; NAT_PORT_SPANS]) -> Vec<(u16, u16)> {
        spans
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| (s.first, s.last))
            .collect()
    }

    #[test]
    fn auto_is_every_port_from_1024_outside_the_host_range_and_the_router_ports() {
        let auto = NatSourcePorts::Auto {
            router_ports: Some((30000, 30999)),
        };
        let s = spans(auto, LINUX);
        assert_eq!(pairs(s), [(1024, 29999), (31000, 32767), (61000, 65535)]);
        assert_eq!(count(&s), 35_280);
        let without = spans(NatSourcePorts::Auto { router_ports: None }, LINUX);
        assert_eq!(pairs(without), [(1024, 32767), (61000, 65535)]);
        assert_eq!(count(&without), 36_280);
    }

    #[test]
    fn a_range_loses_what_the_host_range_covers() {
        assert_eq!(
            pairs(spans(NatSourcePorts::Range(61000, 65535), LINUX)),
            [(61000, 65535)]
        );
        assert_eq!(
            pairs(spans(NatSourcePorts::Range(60000, 61999), LINUX)),
            [(61000, 61999)]
        );
        assert!(pairs(spans(NatSourcePorts::Range(40000, 40999), LINUX)).is_empty());
        // A host range reaching the ends.
        let all = PortRange {
            first: 1024,
            last: 65535,
        };
        assert!(pairs(spans(DEFAULT_AUTO, all)).is_empty());
    }

    const DEFAULT_AUTO: NatSourcePorts = NatSourcePorts::Auto { router_ports: None };
}
