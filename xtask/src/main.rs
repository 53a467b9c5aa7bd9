//! `cargo xtask`: every step a developer or CI needs, so a fresh machine needs no hand step.

mod bench;
mod bench_control;
mod bench_hostile;
mod bench_http;
mod build;
mod cmd;
mod demo;
mod prereq;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and run task-router")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces the kernel build needs (nightly rust-src, bpf-linker built
    /// against the nightly toolchain's own LLVM). Does nothing when they are already in place.
    Setup,
    /// Build the kernel object (runs `setup` first when needed).
    BuildEbpf(build::EbpfOptions),
    /// Build the kernel object and the daemon that embeds it.
    Build(build::BuildOptions),
    /// Run the whole test suite: format, lints, unit, BPF_PROG_TEST_RUN and network-namespace
    /// tests. Installs missing Debian packages and mounts bpffs (needs root).
    Test(test::TestOptions),
    /// Build and run the daemon: `cargo xtask run -- run --interfaces eth0`.
    Run(build::RunOptions),
    /// Control-plane benchmark: a 10,000-task sync cycle, request-to-endpoint time.
    BenchControl(bench_control::BenchControlOptions),
    /// HTTP routes benchmark: generated vs hand-written nginx config, apply-to-routed time.
    BenchHttp(bench_http::BenchHttpOptions),
    /// The whole system on one machine: namespaces for a client, the router and two task hosts,
    /// the ClearML test server, the daemon and nginx, two SDK tasks (TCP and HTTP) and real
    /// traffic through their endpoints; removed when done or on Ctrl-C (`--keep` to explore).
    Demo(demo::DemoOptions),
    /// Benchmarks (root): `bench datapath`, or `bench` for every section.
    Bench(bench::BenchOptions),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure(),
        Command::BuildEbpf(opts) => build::ebpf(&opts).map(|_| ()),
        Command::Build(opts) => build::all(&opts).map(|_| ()),
        Command::Test(opts) => test::run(&opts),
        Command::Run(opts) => build::run(&opts),
        Command::BenchControl(opts) => bench_control::run(&opts),
        Command::BenchHttp(opts) => bench_http::run(&opts),
        Command::Demo(opts) => demo::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
    }
}
