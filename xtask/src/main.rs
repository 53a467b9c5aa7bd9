//! `cargo xtask`: every step a developer or CI needs, so a fresh machine needs no hand step.

mod bench;
mod build;
mod cmd;
mod demo;
mod dist;
mod image;
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
    BenchControl(bench::control::BenchControlOptions),
    /// HTTP routes benchmark: generated vs hand-written nginx config, apply-to-routed time.
    BenchHttp(bench::http::BenchHttpOptions),
    /// The whole system on one machine: namespaces for a client, the router and two task hosts,
    /// the ClearML test server, the daemon and nginx, two SDK tasks (TCP and HTTP) and real
    /// traffic through their endpoints; removed when done or on Ctrl-C (`--keep` to explore).
    Demo(demo::DemoOptions),
    /// Benchmarks (root): `bench datapath`, or `bench` for every section.
    Bench(bench::BenchOptions),
    /// The router's OCI image from deploy/Dockerfile (podman; `--local-bases` where the public
    /// base images cannot be pulled, `--prebuilt BINARY` to skip the in-image build).
    Image(image::ImageOptions),
    /// Release artifacts in target/dist/: the Debian package (binary, systemd unit, example
    /// configuration, man pages, shell completions) and the OCI image.
    Dist(dist::DistOptions),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::ensure(),
        Command::BuildEbpf(opts) => build::ebpf(&opts).map(|_| ()),
        Command::Build(opts) => build::all(&opts).map(|_| ()),
        Command::Test(opts) => test::run(&opts),
        Command::Run(opts) => build::run(&opts),
        Command::BenchControl(opts) => bench::control::run(&opts),
        Command::BenchHttp(opts) => bench::http::run(&opts),
        Command::Demo(opts) => demo::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Image(opts) => image::run(&opts),
        Command::Dist(opts) => dist::run(&opts),
    }
}
