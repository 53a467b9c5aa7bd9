//! The kernel object, embedded at build time so one binary is all a host needs.

use aya::{Ebpf, EbpfLoader};

/// The `router-ebpf` object, aligned for the ELF parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf.o"));

/// Names of the programs in [`OBJECT`].
pub const XDP_PROGRAM: &str = "task_router_xdp";
pub const TC_PROGRAM: &str = "task_router_tc";

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
}

/// Loads the embedded object into the kernel (maps created, programs not yet verified).
pub fn load() -> Result<Ebpf, DatapathError> {
    EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| DatapathError::Load(Box::new(e)))
}
