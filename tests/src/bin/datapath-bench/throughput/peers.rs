//! The forwarding peers compared, the ports each gets, and the options of a run.

use anyhow::{Context, Result};

/// Each peer gets its own ports (base + its index), router side and backend side: TIME_WAIT
/// sockets one peer leaves on the backend carry another TCP timestamp clock than the next
/// peer's connections on the same tuple would, and PAWS would refuse those SYNs.
const PORT_BULK: u16 = 20000;
const PORT_RR: u16 = 21000;
const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 7000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Peer {
    /// Kernel IP forwarding, no NAT: the client talks to the backend's own address.
    Ceiling,
    Nftables,
    /// nginx `stream` with one plain `listen` per port, as a generated per-route config has it
    /// (and as in the baseline: 0.53x / 0.45x the ceiling): the kernel hands all
    /// connections of a port to whichever worker accepts first.
    NginxStream,
    /// nginx `stream` with `reuseport`: the kernel spreads connections over both workers (the
    /// strongest nginx we know how to configure here).
    NginxStreamReuseport,
    Haproxy,
    /// This datapath, `auto` mode (TC on veth).
    Datapath,
    /// Sending ends' tx offload off (no TSO, full checksums) — as frames from a NIC.
    CeilingTxOff,
    NftablesTxOff,
    /// This datapath in native XDP (peers with GRO on so XDP redirects into veth land).
    DatapathXdpTxOff,
}

impl Peer {
    pub const DEFAULT_GROUP: [Peer; 6] = [
        Peer::Ceiling,
        Peer::Nftables,
        Peer::NginxStream,
        Peer::NginxStreamReuseport,
        Peer::Haproxy,
        Peer::Datapath,
    ];
    pub const TX_OFF_GROUP: [Peer; 3] = [
        Peer::CeilingTxOff,
        Peer::NftablesTxOff,
        Peer::DatapathXdpTxOff,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Ceiling => "no-NAT forwarding (ceiling)",
            Peer::Nftables => "nftables DNAT+masquerade",
            Peer::NginxStream => "nginx stream",
            Peer::NginxStreamReuseport => "nginx stream, reuseport",
            Peer::Haproxy => "haproxy (userspace proxy)",
            Peer::Datapath => "task-router eBPF (auto: TC)",
            Peer::CeilingTxOff => "no-NAT forwarding, tx off",
            Peer::NftablesTxOff => "nftables, tx off",
            Peer::DatapathXdpTxOff => "task-router eBPF XDP, tx off",
        }
    }

    pub const ALL: [Peer; 9] = [
        Peer::Ceiling,
        Peer::Nftables,
        Peer::NginxStream,
        Peer::Haproxy,
        Peer::Datapath,
        Peer::CeilingTxOff,
        Peer::NftablesTxOff,
        Peer::DatapathXdpTxOff,
        Peer::NginxStreamReuseport,
    ];

    /// Short names for `--peers`.
    pub fn id(self) -> &'static str {
        match self {
            Peer::Ceiling => "ceiling",
            Peer::Nftables => "nftables",
            Peer::NginxStream => "nginx",
            Peer::NginxStreamReuseport => "nginx-reuseport",
            Peer::Haproxy => "haproxy",
            Peer::Datapath => "datapath",
            Peer::CeilingTxOff => "ceiling-txoff",
            Peer::NftablesTxOff => "nftables-txoff",
            Peer::DatapathXdpTxOff => "xdp-txoff",
        }
    }

    /// Parses a `--peers` list (comma-separated short names).
    pub fn parse_list(list: &str) -> Result<Vec<Peer>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Peer::ALL
                    .into_iter()
                    .find(|p| p.id() == name)
                    .with_context(|| {
                        let known: Vec<_> = Peer::ALL.iter().map(|p| p.id()).collect();
                        format!(
                            "unknown peer {name:?} in --peers (known: {})",
                            known.join(", ")
                        )
                    })
            })
            .collect()
    }

    fn index(self) -> u16 {
        Peer::ALL.iter().position(|p| *p == self).unwrap_or(0) as u16
    }

    /// (router bulk, router RR, backend iperf3, backend RR) ports.
    pub(super) fn ports(self) -> (u16, u16, u16, u16) {
        let i = self.index();
        (PORT_BULK + i, PORT_RR + i, IPERF_PORT + i, RR_PORT + i)
    }

    pub(super) fn tx_off(self) -> bool {
        Peer::TX_OFF_GROUP.contains(&self)
    }

    pub(super) fn ceiling(self) -> Peer {
        if self.tx_off() {
            Peer::CeilingTxOff
        } else {
            Peer::Ceiling
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub tx_off_group: bool,
    /// Only these peers (the ceilings always run: every ratio needs its own).
    pub only: Option<Vec<Peer>>,
}

impl Options {
    /// The peers of `group` to measure: all, or the `--peers` ones plus the group's ceiling
    /// (every ratio needs it); none when no peer of the group was asked for.
    pub(super) fn selected(&self, group: &[Peer]) -> Vec<Peer> {
        let Some(only) = &self.only else {
            return group.to_vec();
        };
        if !group.iter().any(|p| only.contains(p)) {
            return Vec::new();
        }
        group
            .iter()
            .copied()
            .filter(|p| only.contains(p) || *p == p.ceiling())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_list_names_an_unknown_peer() {
        assert_eq!(
            Peer::parse_list("datapath, nginx").unwrap(),
            vec![Peer::Datapath, Peer::NginxStream]
        );
        let e = Peer::parse_list("datapath,nginks").unwrap_err().to_string();
        assert!(
            e.contains("\"nginks\"") && e.contains("nginx-reuseport"),
            "{e}"
        );
    }

    #[test]
    fn a_selection_keeps_its_groups_ceiling_and_skips_groups_not_asked_for() {
        let opts = Options {
            rounds: 1,
            seconds: 1,
            tx_off_group: true,
            only: Some(vec![Peer::Datapath]),
        };
        assert_eq!(
            opts.selected(&Peer::DEFAULT_GROUP),
            vec![Peer::Ceiling, Peer::Datapath]
        );
        assert!(opts.selected(&Peer::TX_OFF_GROUP).is_empty());
    }
}
