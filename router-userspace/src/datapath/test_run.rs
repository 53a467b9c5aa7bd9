//! Running the programs on a given frame through BPF_PROG_TEST_RUN: the unit tests of every
//! packet path and the per-packet cost benchmark. Nothing is sent: the verdict, the rewritten
//! frame and the map side effects are what the caller checks.

use super::DatapathError;
use super::object::{EMPTY_TC_PROGRAM, EMPTY_XDP_PROGRAM, TC_PROGRAM, XDP_PROGRAM};
use aya::Ebpf;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use std::time::Duration;

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Xdp,
    Tc,
    /// A program that only passes: the floor of a cost measurement.
    EmptyXdp,
    EmptyTc,
}

impl Program {
    pub const fn name(self) -> &'static str {
        match self {
            Program::Xdp => XDP_PROGRAM,
            Program::Tc => TC_PROGRAM,
            Program::EmptyXdp => EMPTY_XDP_PROGRAM,
            Program::EmptyTc => EMPTY_TC_PROGRAM,
        }
    }

    const fn is_xdp(self) -> bool {
        matches!(self, Program::Xdp | Program::EmptyXdp)
    }
}

/// What a run returned.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The program's verdict (`XDP_*` or `TC_ACT_*` as unsigned).
    pub retval: u32,
    /// The frame after the program.
    pub frame: Vec<u8>,
    /// Average time per run as the kernel measured it.
    pub per_run: Duration,
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Offset of `ifindex` in `struct __sk_buff`; the fields before it must be zero.
const SKB_IFINDEX_OFFSET: usize = 40;

/// Runs `program` `repeat` times on `frame` as if it arrived on `ifindex` (which must exist in
/// the calling thread's network namespace; `None` = loopback).
pub fn run(
    ebpf: &mut Ebpf,
    program: Program,
    frame: &[u8],
    repeat: u32,
    ifindex: Option<u32>,
) -> Result<RunOutput, DatapathError> {
    let name = program.name();
    let test_error = |source| DatapathError::TestRun {
        program: name,
        source: Box::new(source),
    };
    let mut out = vec![0u8; frame.len() + 256];
    let ctx: Vec<u8> = match (program.is_xdp(), ifindex) {
        (_, None) => Vec::new(),
        (true, Some(ifindex)) => {
            let md = XdpMd {
                data: 0,
                data_end: frame.len() as u32,
                data_meta: 0,
                ingress_ifindex: ifindex,
                rx_queue_index: 0,
                egress_ifindex: 0,
            };
            // SAFETY: a plain `repr(C)` struct of u32 fields, viewed as its bytes.
            unsafe {
                std::slice::from_raw_parts(
                    (&md as *const XdpMd).cast::<u8>(),
                    std::mem::size_of::<XdpMd>(),
                )
            }
            .to_vec()
        }
        (false, Some(ifindex)) => {
            let mut skb = vec![0u8; SKB_IFINDEX_OFFSET + 4];
            skb[SKB_IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
            skb
        }
    };
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: (!ctx.is_empty()).then_some(ctx.as_slice()),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    };
    let result = if program.is_xdp() {
        let prog = super::object::xdp_program(ebpf, name)?;
        let prog: &Xdp = prog;
        prog.test_run(opts).map_err(test_error)?
    } else {
        let prog = super::object::tc_program(ebpf, name)?;
        let prog: &SchedClassifier = prog;
        prog.test_run(opts).map_err(test_error)?
    };
    out.truncate(result.data_size_out as usize);
    Ok(RunOutput {
        retval: result.return_value,
        frame: out,
        per_run: result.duration,
    })
}
