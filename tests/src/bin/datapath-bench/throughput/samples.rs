//! The figures a round records: one peer's throughput, latency and CPU, a conntrack sweep,
//! an observability round.

/// Offered rate (iperf3 `--fq-rate`, one stream) of the CPU-per-GB phase: below what every peer moves
/// with one stream here (the proxies about 7 Gbit/s), so all peers carry the same bytes at the
/// same rate and the machine's busy time per GB differs by what forwarding costs. The machine
/// as a whole, because forwarding in softirq is charged to whichever process the packets
/// interrupt (the iperf3 processes on this kernel), not to a router process.
pub const CPU_PHASE_RATE: &str = "3G";

/// One round's figures for one peer.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub bulk1_gbps: f64,
    pub bulk4_gbps: f64,
    pub conn_per_s: f64,
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    /// Busy CPU seconds of the whole machine per GB moved at [`CPU_PHASE_RATE`] (1 stream).
    pub cpu_s_per_gb: f64,
}

/// One conntrack sweep during the datapath's turns: the table it walked and how long it took.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sweep {
    pub connections: u64,
    /// Tuples of closed connections still reserved (each one more entry to walk).
    pub reserved: u64,
    pub took_ms: f64,
}

/// One round of the observability benchmark: the datapath with or without `/metrics` rendered
/// every second.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObservabilitySample {
    pub scraped: bool,
    /// Renders done during the round.
    pub scrapes: u64,
    /// Mean wall time of one render, in milliseconds (its CPU share at one scrape a second is
    /// this over 1000).
    pub render_ms: f64,
    pub bulk1_gbps: f64,
    pub conn_per_s: f64,
}
