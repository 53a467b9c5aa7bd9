//! `cargo xtask bench [SECTION]`: benchmarks, never timed tests. Each section is a driver
//! binary run as root after the kernel object is built; `bench` alone runs every section.
//! One module per section (`datapath`, `control`, `http`, `observability`, `hostile`, `churn`); `driver` builds
//! and runs the drivers. Results: Markdown on stdout and in `target/bench/<section>.md`, raw
//! rounds as JSON next to it.

mod churn;
pub mod control;
mod datapath;
mod driver;
mod hostile;
pub mod http;
mod observability;
mod options;

use crate::build::{self, EbpfOptions};
use crate::prereq;
use anyhow::Result;
pub use options::{BenchOptions, Section};

pub fn run(opts: &BenchOptions) -> Result<()> {
    prereq::ensure_bench()?;
    let object = build::ebpf(&EbpfOptions { release: true })?;
    let sections = match opts.section {
        Some(s) => vec![s],
        None => Section::ALL.to_vec(),
    };
    for section in sections {
        match section {
            Section::Datapath => datapath::run(&object, opts)?,
            Section::Observability => observability::run(&object, opts)?,
            Section::Hostile => hostile::run(&object, opts)?,
            Section::Churn => churn::run(&object, opts)?,
            Section::Control => control::run(&control::BenchControlOptions {
                tasks: 10_000,
                requests: 20,
                poll_interval: "2s".into(),
            })?,
            Section::Http => http::run(&http::BenchHttpOptions {
                seconds: 3,
                rounds: 9,
                connections: 32,
                routes: 100,
            })?,
        }
    }
    Ok(())
}
