//! The kernel object, embedded at build time so one binary is all a host needs, and the one
//! place it is loaded (maps sized from the configuration, programs verified).

use aya::programs::{ProgramError, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};

/// The `router-ebpf` object, aligned for the ELF parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf.o"));

/// Names of the programs in [`OBJECT`].
pub const XDP_PROGRAM: &str = "task_router_xdp";
pub const TC_PROGRAM: &str = "task_router_tc";
/// Publishes the kernel's jiffies (run through BPF_PROG_TEST_RUN, never attached).
pub const CLOCK_PROGRAM: &str = "task_router_clock";
/// Empty programs: the floor of per-packet cost measurements.
pub const EMPTY_XDP_PROGRAM: &str = "bench_empty_xdp";
pub const EMPTY_TC_PROGRAM: &str = "bench_empty_tc";

/// Names of the maps, as pinned later under `bpffs` (each at most 15 bytes).
pub mod maps {
    pub const STATS: &str = "STATS";
    pub const CONFIG: &str = "CONFIG";
    pub const PORT_FLAGS: &str = "PORT_FLAGS";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const ROUTES: &str = "ROUTES";
    pub const CT4: &str = "CT4";
    pub const CT_COUNT: &str = "CT_COUNT";
    pub const HALF_OPEN4: &str = "HALF_OPEN4";
    pub const HALF_OPEN_RING: &str = "HALF_OPEN_RING";
    pub const HALF_OPEN_NEXT: &str = "HALF_OPEN_NEXT";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const PEER_DEVS: &str = "PEER_DEVS";
    pub const CLOCK: &str = "CLOCK";
    pub const CLIENT_ALLOW: &str = "CLIENT_ALLOW";

    /// The maps whose contents are the datapath's state: pinned under `ROUTER_BPFFS` and
    /// adopted by the next daemon (see `datapath::pins`).
    pub const PINNED: &[&str] = &[
        CONFIG,
        PORT_FLAGS,
        LOCAL_ADDRS,
        ROUTES,
        CT4,
        CT_COUNT,
        HALF_OPEN4,
        HALF_OPEN_RING,
        HALF_OPEN_NEXT,
        TX_PORTS,
        STATS,
        CLIENT_ALLOW,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the kernel object failed (is this root, with BPF and BTF enabled?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("the kernel object has no map named {0}")]
    MissingMap(&'static str),
    #[error("the verifier rejected program {name}")]
    Verify {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to {interface} in {mode} mode failed")]
    Attach {
        program: &'static str,
        interface: String,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("reading map {map} failed")]
    MapRead {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("writing map {map} failed")]
    MapWrite {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("making interface {ifindex} an XDP redirect target failed")]
    XdpTarget {
        ifindex: u32,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    #[error("{operation} on map {map} failed")]
    MapSyscall {
        operation: &'static str,
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("running program {program} through BPF_PROG_TEST_RUN failed")]
    TestRun {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("listing the namespace's interfaces (RTM_GETLINK) failed")]
    Links(#[source] std::io::Error),
    #[error("listing the host's interface addresses failed")]
    Addresses(#[source] std::io::Error),
    #[error("entering the datapath's network namespace failed")]
    Netns(#[source] std::io::Error),
    #[error("invalid datapath configuration: {0}")]
    Config(String),
    #[error("reading the router host's ephemeral port range")]
    HostEphemeral(#[source] crate::host_ephemeral::HostEphemeralError),
    #[error("{operation} {} failed", path.display())]
    Pin {
        operation: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "ROUTER_BPFFS={} is not on a bpffs mount ({} has filesystem type {found}): mount one \
         (`mount -t bpf bpf /sys/fs/bpf`) or point ROUTER_BPFFS at a directory under a bpffs mount",
        dir.display(),
        checked.display()
    )]
    NotBpffs {
        dir: std::path::PathBuf,
        checked: std::path::PathBuf,
        found: String,
    },
    #[error(
        "{} holds a datapath pinned with layout version {found}, this build expects {expected}: \
         its maps cannot be adopted and were left untouched; run `task-router uninstall` (with the \
         same ROUTER_BPFFS; it cuts established connections) and start again",
        dir.display()
    )]
    IncompatibleLayout {
        dir: std::path::PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "{} holds {entry:?}, which task-router did not create: point ROUTER_BPFFS at a directory \
         of its own",
        dir.display()
    )]
    ForeignPin {
        dir: std::path::PathBuf,
        entry: String,
    },
    #[error(
        "the map {map} pinned in {} does not match this build ({difference}) although both claim \
         layout version {version}: left untouched; run `task-router uninstall` and start again",
        dir.display()
    )]
    PinnedMapMismatch {
        dir: std::path::PathBuf,
        map: &'static str,
        difference: String,
        version: u32,
    },
    #[error(
        "the connection table pinned in {} has {pinned} entries, ROUTER_MAX_CONNECTIONS={max_connections} \
         needs {needed}: a pinned table cannot grow without cutting its connections; lower \
         ROUTER_MAX_CONNECTIONS, or run `task-router uninstall` (cuts established connections) \
         and start again",
        dir.display()
    )]
    ConntrackTooSmall {
        dir: std::path::PathBuf,
        pinned: u32,
        needed: u32,
        max_connections: u32,
    },
    #[error("{operation} the {kind} link of {interface} failed")]
    Link {
        operation: &'static str,
        kind: &'static str,
        interface: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading the kernel object {} failed", path.display())]
    ObjectFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the kernel object failed")]
    Parse(#[source] Box<aya_obj::ParseError>),
}

/// Sizes and options of a load.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions<'a> {
    /// Connections the table must hold (two entries each).
    pub max_connections: u32,
    /// The directory where the state maps ([`maps::PINNED`]) are pinned (`PinDir::dir`):
    /// pinned ones are reused, missing ones created and pinned. `None`: private maps, gone with
    /// the process.
    pub pin_dir: Option<&'a std::path::Path>,
    /// The object to load (default [`OBJECT`]).
    pub object: &'a [u8],
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            max_connections: 262_144,
            pin_dir: None,
            object: OBJECT,
        }
    }
}

/// Test-only: a kernel object file the daemon loads instead of the embedded one, so the
/// scenario tests can upgrade a running datapath to a rebuilt object. Not an operator setting.
pub const OBJECT_OVERRIDE_ENV: &str = "TASK_ROUTER_TEST_OBJECT_FILE";

/// The object the daemon runs: the embedded one, or the file named by [`OBJECT_OVERRIDE_ENV`].
pub fn daemon_object() -> Result<std::borrow::Cow<'static, [u8]>, DatapathError> {
    match std::env::var_os(OBJECT_OVERRIDE_ENV) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            tracing::warn!(object = %path.display(), "loading a kernel object file instead of the embedded one ({OBJECT_OVERRIDE_ENV}, tests only)");
            std::fs::read(&path)
                .map(std::borrow::Cow::Owned)
                .map_err(|source| DatapathError::ObjectFile { path, source })
        }
        None => Ok(std::borrow::Cow::Borrowed(OBJECT)),
    }
}

/// The maps `object` defines, with their shapes.
pub fn map_definitions(
    object: &[u8],
) -> Result<std::collections::HashMap<String, aya_obj::Map>, DatapathError> {
    aya_obj::Object::parse(object)
        .map(|o| o.maps)
        .map_err(|e| DatapathError::Parse(Box::new(e)))
}

/// Entries of the `CT4` LRU map for `max_connections`: two per connection, plus room for the
/// LRU's per-CPU free lists, so it never evicts a live entry before the kernel's count says the
/// table is full (which is a counted drop instead).
pub fn conntrack_entries(max_connections: u32) -> u32 {
    // The LRU keeps free lists per possible CPU, which may be more than this process may use.
    // SAFETY: sysconf has no preconditions.
    let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    let usable = std::thread::available_parallelism().map_or(64, |n| n.get());
    let cpus = (configured.max(0) as usize).max(usable) as u32;
    max_connections
        .saturating_mul(2)
        .saturating_add(cpus.saturating_mul(256))
        .saturating_add(1024)
}

/// Loads the embedded object with the default sizes (programs not yet verified).
pub fn load() -> Result<Ebpf, DatapathError> {
    load_with(&LoadOptions::default())
}

/// Loads the embedded object into the kernel: maps created with their configured sizes,
/// programs not yet verified (see [`verify_all`]).
pub fn load_with(opts: &LoadOptions) -> Result<Ebpf, DatapathError> {
    if opts.max_connections == 0 {
        return Err(DatapathError::Config(
            "max_connections must be at least 1".into(),
        ));
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(maps::CT4, conntrack_entries(opts.max_connections));
    let half_open = super::half_open_sizes::Sizes::for_connections(opts.max_connections);
    loader.map_max_entries(maps::HALF_OPEN4, half_open.table_entries);
    loader.map_max_entries(maps::HALF_OPEN_RING, half_open.ring_slots);
    if let Some(dir) = opts.pin_dir {
        for name in maps::PINNED {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader
        .load(opts.object)
        .map_err(|e| DatapathError::Load(Box::new(e)))
}

fn verify_error(name: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Verify {
        name,
        source: Box::new(source),
    }
}

/// Loads (verifies) an XDP program of the object unless already loaded.
pub fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DatapathError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(verify_error(name))?;
    if program.fd().is_err() {
        program.load().map_err(verify_error(name))?;
    }
    Ok(program)
}

/// Loads (verifies) a TC program of the object unless already loaded.
pub fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(verify_error(name))?;
    if program.fd().is_err() {
        program.load().map_err(verify_error(name))?;
    }
    Ok(program)
}

/// Verifies every program the daemon runs, so a kernel that rejects one fails at start-up.
pub fn verify_all(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    xdp_program(ebpf, XDP_PROGRAM)?;
    tc_program(ebpf, TC_PROGRAM)?;
    xdp_program(ebpf, CLOCK_PROGRAM)?;
    Ok(())
}
