//! What `cargo xtask bench` takes: the sections and the options they share.

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// The kernel datapath: program costs and forwarding peers.
    Datapath,
    /// The control plane: a 10,000-task sync cycle, request-to-endpoint time
    /// (`cargo xtask bench-control` takes its own options).
    Control,
    /// HTTP routes: generated vs hand-written nginx config, apply-to-routed time
    /// (`cargo xtask bench-http` takes its own options).
    Http,
    /// Cost of observability: datapath throughput and connection rate with `/metrics`
    /// scraped every second versus not (target: under 2 % difference).
    Observability,
    /// A spoofed SYN flood on a routed port while legitimate clients connect and a long
    /// connection streams: the datapath, nftables and nginx stream side by side.
    Hostile,
    /// Many clients churning short connections the task closes first to one task port: the
    /// ceiling, nftables and the datapath side by side.
    Churn,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Datapath,
        Section::Control,
        Section::Http,
        Section::Observability,
        Section::Hostile,
        Section::Churn,
    ];
}

#[derive(Args)]
pub struct BenchOptions {
    /// Which benchmark to run; every section when omitted.
    pub section: Option<Section>,
    /// Interleaved rounds per peer (medians and raw rounds are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Only the per-packet costs (quick; no peers).
    #[arg(long)]
    pub costs_only: bool,
    /// Datapath section: only these peers (comma-separated: ceiling, nftables, nginx,
    /// nginx-reuseport, haproxy, datapath, ceiling-txoff, nftables-txoff, xdp-txoff); the
    /// ceilings always run.
    #[arg(long)]
    pub peers: Option<String>,
}
