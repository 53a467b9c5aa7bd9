//! `task-router`: the daemon binary.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::{self, AttachMode, Datapath, SharedDatapath};
use router_userspace::logging::{self, LogFormat};
use router_userspace::routes::{RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

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
    /// A static TCP route: connections to the router's PORT go to IP:PORT (`10000=10.0.0.5:22`).
    /// Repeat for several.
    #[arg(long = "route", value_parser = parse_route)]
    routes: Vec<(u16, SocketAddrV4)>,
}

fn parse_route(s: &str) -> Result<(u16, SocketAddrV4), String> {
    let (port, upstream) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected PORT=IP:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    let upstream: SocketAddrV4 = upstream
        .parse()
        .map_err(|_| format!("{upstream:?} is not an IPv4 address with a port"))?;
    Ok((port, upstream))
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
    let cfg = DatapathConfig {
        kind: DatapathKind::Ebpf(args.mode),
        interfaces: args.interfaces.clone(),
        bpffs: "/sys/fs/bpf/task-router".into(),
        max_connections: 262_144,
        router_addresses: Vec::new(),
        nat_source_ports: datapath::DEFAULT_NAT_SOURCE_PORTS,
    };
    let mut dp = Datapath::open(&cfg)
        .map_err(|e| anyhow::anyhow!(datapath::error_chain(&e)))
        .context("starting the datapath")?;
    let _kernel_log = dp.spawn_kernel_log();
    for attached in dp.attached() {
        tracing::info!(interface = %attached.interface, mode = %attached.mode, "attached");
    }
    let wanted: BTreeMap<u16, TcpRoute> = args
        .routes
        .iter()
        .map(|&(port, upstream)| {
            let owner = RouteOwner {
                task_id: format!("cli:{port}"),
                task_name: "command line".into(),
                endpoint: String::new(),
            };
            (
                port,
                TcpRoute {
                    port,
                    upstream,
                    owner,
                },
            )
        })
        .collect();
    if !wanted.is_empty() {
        let report = dp
            .apply_routes(&wanted)
            .map_err(|e| anyhow::anyhow!(datapath::error_chain(&e)))?;
        for (route, reason) in &report.failed {
            tracing::error!(route, reason, "route not programmed");
        }
        tracing::info!(added = report.added, "routes programmed");
    }
    let dp = SharedDatapath::new(dp);
    let sweeper =
        datapath::sweeper::Sweeper::spawn(dp.clone(), datapath::sweeper::DEFAULT_INTERVAL, |_| {})
            .context("starting the conntrack sweeper")?;
    tracing::info!("ready");
    wait_for_shutdown().await?;
    drop(sweeper);
    let dp = Arc::try_unwrap(dp.0)
        .map_err(|_| anyhow::anyhow!("the datapath is still shared at shutdown"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("the datapath lock was poisoned"))?;
    for (hook, reason, value) in dp.stats()? {
        if value.packets > 0 {
            tracing::info!(
                hook = hook.name(),
                reason = reason.name(),
                packets = value.packets,
                bytes = value.bytes,
                "counter"
            );
        }
    }
    drop(dp);
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
