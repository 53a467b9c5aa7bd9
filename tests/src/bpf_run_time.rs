//! The kernel's run-time accounting of BPF programs (`kernel.bpf_stats_enabled`, switched on
//! for as long as a [`RunTimeAccounting`] lives): the CPU time the datapath's programs spent,
//! which a rate alone does not show on a machine whose CPUs the clients and the task share.

use anyhow::{Context, Result};
use aya::programs::loaded_programs;
use aya::sys::{Stats, enable_stats};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The datapath's packet programs (`router-ebpf`'s `task_router_xdp` and `task_router_tc`).
const DATAPATH_PROGRAMS: [&str; 2] = ["task_router_xdp", "task_router_tc"];

/// Run-time accounting on; off again when every holder is dropped.
pub struct RunTimeAccounting {
    _enabled: OwnedFd,
}

/// What the datapath's programs cost up to a moment: summed over every loaded copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTime {
    pub time: Duration,
    pub runs: u64,
}

impl RunTime {
    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: RunTime) -> RunTime {
        RunTime {
            time: self.time.saturating_sub(earlier.time),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

impl RunTimeAccounting {
    pub fn enable() -> Result<RunTimeAccounting> {
        let fd = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)")?;
        Ok(RunTimeAccounting { _enabled: fd })
    }

    /// The datapath programs' run time and runs so far (programs are global: the namespace
    /// does not matter).
    pub fn datapath(&self) -> Result<RunTime> {
        let mut total = RunTime::default();
        for info in loaded_programs() {
            let info = info.context("read a loaded BPF program's information")?;
            if info
                .name_as_str()
                .is_some_and(|n| DATAPATH_PROGRAMS.contains(&n))
            {
                total.time += info.run_time();
                total.runs += info.run_count();
            }
        }
        Ok(total)
    }
}
