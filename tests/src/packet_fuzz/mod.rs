//! Packet-path fuzzing for BPF_PROG_TEST_RUN: a seeded generator of random and mutated frames
//! (`generator`: valid Ethernet/IPv4/TCP and ICMP frames for the routed ports and tracked
//! connections; `mutate`: bit flips, truncations, bad IHL/lengths, IP options, fragments, odd
//! TCP flags and data offsets, VLAN tags, IPv6, ARP, runts), the oracle the invariants use
//! (`oracle`: checksums recomputed from scratch with [`crate::packet::checksum`], never the
//! crate's incremental `csum` code; which frames concern the router; which bytes a translation
//! may change), and the corpus format (`corpus`: `tests/corpus/packets/*.hex`).

mod case;
mod corpus;
mod generator;
mod mutate;
mod oracle;
mod random;

pub use case::{Case, ETH_LEN, Side, addr, raw};
pub use corpus::{CorpusEntry, corpus_text, load_corpus, parse_corpus_entry};
pub use generator::World;
pub use mutate::{insert_vlan, mutate};
pub use oracle::{
    Checksums, checksums, concerns_router, fix_checksums, icmp_quote_key, ipv4_addrs, may_change,
    mss_option, tcp_key,
};
