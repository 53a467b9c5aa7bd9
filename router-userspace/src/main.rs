//! `task-router`: the daemon binary.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use router_userspace::config::show::Shown;
use router_userspace::config::{self, Config, Sources};
use router_userspace::logging::{self, LogFormat};
use router_userspace::{admin, daemon, instance_lock};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "task-router",
    version,
    about = "Gives ClearML tasks reachable endpoints: TCP forwarded by eBPF, HTTP through nginx",
    long_about = "Gives ClearML tasks reachable endpoints: TCP forwarded by eBPF, HTTP through \
                  nginx.\n\nConfiguration comes from environment variables (ClearML's runtime.env \
                  names), an optional --env-file in the same KEY=value format, and command-line \
                  flags; flags win over the environment, which wins over the file. \
                  `task-router check-config --help` lists every variable."
)]
struct Cli {
    /// Log level (`debug`, `info`, `warning`, `error`) or a tracing filter (`task_router=trace`);
    /// sets LOGGER_LEVEL. `RUST_LOG` wins over both.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format; sets LOG_FORMAT.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the datapath, sync routes from ClearML (and/or a routes file), write endpoints back
    /// and serve until SIGINT/SIGTERM.
    #[command(after_long_help = config::docs::help_table())]
    Run(ConfigArgs),
    /// Validate the whole configuration and print the effective values (secrets masked) with
    /// where each comes from. Exits 2 when something is wrong.
    #[command(after_long_help = config::docs::help_table())]
    CheckConfig(ConfigArgs),
    /// Show the running daemon's routes, refusals and health, read from its admin endpoint.
    Status(StatusArgs),
    /// Remove everything `run` left in place: detach the programs, unpin every link and map
    /// under ROUTER_BPFFS (of any layout version) and remove the nginx files it generated
    /// (stopping a managed nginx). Cuts the connections it forwards. Refused while a daemon
    /// runs on this instance (it holds ROUTER_STATE_DIR/task-router.lock) or on the same
    /// pins (it holds a lock on the ROUTER_BPFFS directory): stop it first; give it the
    /// configuration the daemon ran with. Safe to repeat.
    #[command(after_long_help = config::docs::help_table())]
    Uninstall(ConfigArgs),
    /// Write the man pages and shell completions (generated from these definitions) into DIR;
    /// `cargo xtask dist` packs them.
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

#[derive(Args, Clone, Default)]
struct ConfigArgs {
    /// Read variables from FILE (runtime.env format: KEY=value lines, # comments, blank lines).
    /// Real environment variables win over it.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Interface to attach to, optionally with its mode: `eth0` or `eth0:tc`. Repeat for several.
    /// Modes: auto (native XDP on physical NICs, TC on veth/bridges), xdp, xdp-generic, tc.
    /// Sets ROUTER_INTERFACES.
    #[arg(long = "interface", short = 'i', value_name = "IFACE[:MODE]", value_parser = config::parse_interface)]
    interfaces: Vec<(String, Option<router_userspace::datapath::AttachMode>)>,
    /// Datapath, and the mode of interfaces given without one: auto, xdp, xdp-generic, tc, nginx.
    /// Sets ROUTER_DATAPATH.
    #[arg(long, alias = "datapath", value_name = "MODE")]
    mode: Option<String>,
    /// Static routes file (TOML: [[tcp]] port/upstream, [[http]] name/upstream), reloaded on
    /// change. Sets ROUTER_ROUTES_FILE.
    #[arg(long, value_name = "FILE")]
    routes_file: Option<PathBuf>,
    /// Where port allocations and the last route set are kept. Sets ROUTER_STATE_DIR.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Admin endpoint address (health, status, metrics, auth check). Sets ROUTER_ADMIN_ADDR.
    #[arg(long, value_name = "ADDR:PORT")]
    admin_addr: Option<String>,
    /// How often tasks are synced (`2s`, `500ms`). Sets ROUTER_POLL_INTERVAL.
    #[arg(long, value_name = "DURATION")]
    poll_interval: Option<String>,
    /// On exit, detach the programs and unpin everything, as `uninstall` does (default: leave
    /// them forwarding for the next daemon to adopt). Sets ROUTER_DETACH_ON_EXIT.
    #[arg(long)]
    detach_on_exit: bool,
    /// Set any variable (see the list below); wins over the environment. Repeatable.
    #[arg(long = "set", value_name = "VAR=VALUE", value_parser = parse_assignment)]
    set: Vec<(String, String)>,
    /// Refuse names that look like task-router variables but are none (ROUTER_*, TCP_*, AUTH_*,
    /// CLEARML_API_* in the --env-file, ROUTER__* in the environment) instead of warning.
    #[arg(long)]
    strict: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The daemon's admin address (default: ROUTER_ADMIN_ADDR from the environment or
    /// --env-file, else 127.0.0.1:9180).
    #[arg(long, value_name = "ADDR:PORT")]
    admin_addr: Option<String>,
    /// Read ROUTER_ADMIN_ADDR from this file too.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
}

fn parse_assignment(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not VAR=VALUE"))?;
    if config::env_var(k).is_none() {
        return Err(format!("{k} is not a variable task-router reads"));
    }
    Ok((k.to_string(), v.to_string()))
}

impl ConfigArgs {
    /// The flags as `(VARIABLE, value)` pairs.
    fn flags(&self, cli: &Cli) -> Vec<(String, String)> {
        let mut flags = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                flags.push((k.to_string(), v));
            }
        };
        add("LOGGER_LEVEL", cli.log_level.clone());
        add("LOG_FORMAT", cli.log_format.map(|f| f.shown()));
        if !self.interfaces.is_empty() {
            add("ROUTER_INTERFACES", Some(self.interfaces.shown()));
        }
        add("ROUTER_DATAPATH", self.mode.clone());
        add(
            "ROUTER_ROUTES_FILE",
            self.routes_file.as_ref().map(|p| p.display().to_string()),
        );
        add(
            "ROUTER_STATE_DIR",
            self.state_dir.as_ref().map(|p| p.display().to_string()),
        );
        add("ROUTER_ADMIN_ADDR", self.admin_addr.clone());
        add("ROUTER_POLL_INTERVAL", self.poll_interval.clone());
        add(
            "ROUTER_DETACH_ON_EXIT",
            self.detach_on_exit.then(|| "true".to_string()),
        );
        flags.extend(self.set.iter().cloned());
        flags
    }
}

/// The command line, with the build's identity as its version (`-V` short, `--version` long).
fn command() -> clap::Command {
    Cli::command()
        .version(router_userspace::build_info::short_version())
        .long_version(router_userspace::build_info::long_version())
}

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    match &cli.command {
        Command::Run(args) => run(&cli, args.clone()),
        Command::CheckConfig(args) => check_config(&cli, args),
        Command::Status(args) => status(args),
        Command::Uninstall(args) => uninstall(&cli, args),
        Command::GenerateAssets { out_dir } => generate_assets(out_dir),
    }
}

fn generate_assets(dir: &std::path::Path) -> ExitCode {
    match router_userspace::cli_assets::write(command(), dir) {
        Ok(files) => {
            files.iter().for_each(|f| println!("{}", f.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("task-router: {}", router_userspace::error::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn uninstall(cli: &Cli, args: &ConfigArgs) -> ExitCode {
    let (cfg, _) = match load(cli, args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Err(e) = logging::init(&cfg.log_level, cfg.log_format) {
        eprintln!("task-router: {e:#}");
        return ExitCode::from(2);
    }
    // Held until everything is removed: a daemon starting meanwhile waits for nothing, it is
    // refused.
    let _instance = match instance_lock::lock_for_uninstall(&cfg) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("task-router uninstall: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let bpffs = &cfg.datapath.bpffs;
    match router_userspace::datapath::pins::uninstall(bpffs) {
        Ok(done) if done.is_empty() => println!("nothing pinned under {}", bpffs.display()),
        Ok(done) => done.iter().for_each(|line| println!("{line}")),
        Err(e) => {
            eprintln!(
                "task-router uninstall: {}",
                router_userspace::error::error_chain(&e)
            );
            failed = true;
        }
    }
    match router_userspace::nginx::uninstall(&cfg.nginx) {
        Ok(done) if done.is_empty() => println!(
            "no nginx files of task-router in {}",
            cfg.nginx.conf_dir.display()
        ),
        Ok(done) => done.iter().for_each(|line| println!("{line}")),
        Err(e) => {
            eprintln!(
                "task-router uninstall: {}",
                router_userspace::error::error_chain(&e)
            );
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Loads the configuration or says why not (exit 2); under `--strict` a misspelled variable
/// is refused too.
fn load(cli: &Cli, args: &ConfigArgs) -> Result<(Config, Sources), ExitCode> {
    let loaded =
        Config::load(args.flags(cli), args.env_file.as_deref()).and_then(|(cfg, sources)| {
            if args.strict {
                sources.strict()?;
            }
            Ok((cfg, sources))
        });
    loaded.map_err(|e| {
        eprintln!("task-router: {e}");
        ExitCode::from(2)
    })
}

fn check_config(cli: &Cli, args: &ConfigArgs) -> ExitCode {
    let (cfg, sources) = match load(cli, args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    for w in &sources.warnings {
        eprintln!("warning: {w}");
    }
    // The CA bundles are read where the client is built: a missing one fails here, not at start.
    if cfg.clearml_enabled()
        && let Err(e) = router_userspace::clearml::Client::new(&cfg.clearml)
    {
        eprintln!("task-router: {}", router_userspace::error::error_chain(&e));
        return ExitCode::from(2);
    }
    if let Some(path) = &cfg.routes_file {
        let policy = router_userspace::validate::UpstreamPolicy::new(
            cfg.tcp.allowed_upstreams.clone(),
            cfg.datapath.router_addresses.clone(),
        );
        if let Err(e) =
            router_userspace::routes_file::RoutesFile::load(path, &policy, cfg.routes_file_rules())
        {
            eprintln!("task-router: {}", router_userspace::error::error_chain(&e));
            return ExitCode::from(2);
        }
    }
    print!("{}", cfg.render(&sources));
    ExitCode::SUCCESS
}

fn run(cli: &Cli, args: ConfigArgs) -> ExitCode {
    let (cfg, sources) = match load(cli, &args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Err(e) = logging::init(&cfg.log_level, cfg.log_format) {
        eprintln!("task-router: {e:#}");
        return ExitCode::from(2);
    }
    for w in &sources.warnings {
        tracing::warn!("{w}");
    }
    // First, before anything is touched; declared before the runtime so it is released only
    // after the runtime (and every owner it drove) is gone.
    let _instance = match instance_lock::lock_instance(&cfg) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            daemon::exit_code(&e)
        }
    }
}

async fn serve(cfg: Config) -> Result<()> {
    daemon::run_extra_command(&cfg)?;
    let status = daemon::new_status(&cfg);
    let (admin, admin_addr) = daemon::bind_admin(&cfg).await?;
    let parts = daemon::open_parts(&cfg, &status, admin_addr)?;
    let running = daemon::start(cfg, parts, status, admin).await?;
    let mut signalled = Ok(());
    running
        .run_until(async {
            signalled = wait_for_shutdown().await;
        })
        .await?;
    signalled?;
    tracing::info!("exiting");
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

fn status(args: &StatusArgs) -> ExitCode {
    match fetch_status(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("task-router status: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fetch_status(args: &StatusArgs) -> Result<String> {
    let flags = args
        .admin_addr
        .clone()
        .map(|a| vec![("ROUTER_ADMIN_ADDR".to_string(), a)])
        .unwrap_or_default();
    let sources = Sources::from_process(flags, args.env_file.as_deref())?;
    let raw = sources
        .get("ROUTER_ADMIN_ADDR")
        .map(|(v, _)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "127.0.0.1:9180".to_string());
    let mut addr: std::net::SocketAddr = raw
        .parse()
        .with_context(|| format!("ROUTER_ADMIN_ADDR={raw:?} is not an address:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let body = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let url = format!("http://{addr}/status");
        let response = client.get(&url).send().await.with_context(|| {
            format!(
                "cannot reach the daemon at {url} (is `task-router run` running? ROUTER_ADMIN_ADDR)"
            )
        })?;
        let code = response.status();
        let text = response.text().await.context("reading the status")?;
        anyhow::ensure!(code.is_success(), "{url} answered {code}: {}", text.trim());
        Ok::<_, anyhow::Error>(text)
    })?;
    if args.json {
        return Ok(body + "\n");
    }
    let status: admin::Status =
        serde_json::from_str(&body).context("the daemon's status is not what this build reads")?;
    Ok(admin::render(&status))
}
