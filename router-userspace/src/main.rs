//! `task-router`: the daemon binary.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use router_userspace::datapath::{self, AttachMode};
use router_userspace::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "task-router",
    version,
    about = "Gives ClearML tasks reachable endpoints: TCP forwarded by eBPF, HTTP through nginx",
    long_about = None
)]
struct Cli {
    /// Log level or tracing filter (`info`, `debug`, `task_router=trace`). `RUST_LOG` wins.
    #[arg(long, env = "LOGGER_LEVEL", default_value = "info", global = true)]
    log_level: String,
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs, attach them and serve until SIGINT/SIGTERM.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Interface to attach to, optionally with its mode: `eth0` or `eth0:tc`. Repeat for
    /// several. Modes: auto (native XDP on physical NICs, TC on veth/bridges), xdp, xdp-generic, tc.
    #[arg(long = "interface", short = 'i', required = true, value_parser = parse_interface)]
    interfaces: Vec<(String, Option<AttachMode>)>,
    /// Mode for interfaces given without one.
    #[arg(long, value_enum, default_value = "auto")]
    mode: AttachMode,
}

fn parse_interface(s: &str) -> Result<(String, Option<AttachMode>), String> {
    let (name, mode) = match s.split_once(':') {
        Some((name, mode)) => {
            let mode = <AttachMode as clap::ValueEnum>::from_str(mode, true).map_err(|_| {
                format!("unknown mode {mode:?} for {name}: expected auto, xdp, xdp-generic or tc")
            })?;
            (name, Some(mode))
        }
        None => (s, None),
    };
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok((name.to_string(), mode))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log_level, cli.log_format) {
        eprintln!("task-router: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let mut ebpf = datapath::load().context("starting the datapath")?;
    let _kernel_log = datapath::kernel_log::spawn(&mut ebpf);
    for (interface, mode) in &args.interfaces {
        let attached = datapath::attach::attach(&mut ebpf, interface, mode.unwrap_or(args.mode))
            .map_err(|e| anyhow::anyhow!(datapath::error_chain(&e)))?;
        tracing::info!(interface = %attached.interface, mode = %attached.mode, "attached");
    }
    tracing::info!("ready");
    wait_for_shutdown().await?;
    for (reason, value) in datapath::stats::read_all(&ebpf)? {
        tracing::info!(
            reason = reason.name(),
            packets = value.packets,
            bytes = value.bytes,
            "counter"
        );
    }
    drop(ebpf);
    tracing::info!("detached, exiting");
    Ok(())
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
