//! The kernel clock of connection entries (`last_seen`, jiffies): read through the
//! `task_router_clock` program, with HZ learnt by comparing it with the monotonic clock.

use super::DatapathError;
use super::object::{CLOCK_PROGRAM, maps::CLOCK};
use aya::Ebpf;
use aya::maps::Array;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use std::time::{Duration, Instant};

/// Kernel tick rates Linux is built with.
const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];
/// Until HZ is known, assume the highest: idle times then come out short, never long, so no
/// connection expires early.
const ASSUMED_HZ: u32 = 1000;
/// Measuring HZ needs this much wall time between samples.
const MEASURE_SPAN: Duration = Duration::from_millis(900);

pub struct KernelClock {
    origin: (u64, Instant),
    hz: Option<u32>,
}

impl KernelClock {
    pub fn new(ebpf: &mut Ebpf) -> Result<KernelClock, DatapathError> {
        let now = read(ebpf)?;
        Ok(KernelClock {
            origin: (now, Instant::now()),
            hz: None,
        })
    }

    /// The kernel's jiffies now (and HZ learnt once enough time has passed).
    pub fn now(&mut self, ebpf: &mut Ebpf) -> Result<u64, DatapathError> {
        let jiffies = read(ebpf)?;
        if self.hz.is_none() {
            let elapsed = self.origin.1.elapsed();
            if elapsed >= MEASURE_SPAN {
                let rate = jiffies.saturating_sub(self.origin.0) as f64 / elapsed.as_secs_f64();
                self.hz = Some(snap_hz(rate));
            }
        }
        Ok(jiffies)
    }

    pub fn hz(&self) -> u32 {
        self.hz.unwrap_or(ASSUMED_HZ)
    }

    /// Time between two `last_seen` stamps (low 32 bits of jiffies); a stamp ahead of `now`
    /// (written after `now` was read) counts as no time.
    pub fn since(&self, now: u64, stamp: u32) -> Duration {
        let ticks = (now as u32).wrapping_sub(stamp);
        if ticks > u32::MAX / 2 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(ticks as f64 / self.hz() as f64)
    }
}

/// The nearest kernel HZ to a measured rate.
pub fn snap_hz(rate: f64) -> u32 {
    KNOWN_HZ
        .iter()
        .copied()
        .min_by(|a, b| {
            let da = (*a as f64 - rate).abs();
            let db = (*b as f64 - rate).abs();
            da.total_cmp(&db)
        })
        .unwrap_or(ASSUMED_HZ)
}

fn read(ebpf: &mut Ebpf) -> Result<u64, DatapathError> {
    let program: &Xdp = ebpf
        .program(CLOCK_PROGRAM)
        .ok_or(DatapathError::MissingProgram(CLOCK_PROGRAM))?
        .try_into()
        .map_err(|source| DatapathError::TestRun {
            program: CLOCK_PROGRAM,
            source: Box::new(source),
        })?;
    let frame = [0u8; 64];
    program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        })
        .map_err(|source| DatapathError::TestRun {
            program: CLOCK_PROGRAM,
            source: Box::new(source),
        })?;
    let map = ebpf.map(CLOCK).ok_or(DatapathError::MissingMap(CLOCK))?;
    let array: Array<_, u64> = Array::try_from(map).map_err(|source| DatapathError::MapRead {
        map: CLOCK,
        source: Box::new(source),
    })?;
    array.get(&0, 0).map_err(|source| DatapathError::MapRead {
        map: CLOCK,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_rates_snap_to_kernel_hz() {
        assert_eq!(snap_hz(998.0), 1000);
        assert_eq!(snap_hz(251.3), 250);
        assert_eq!(snap_hz(290.0), 300);
        assert_eq!(snap_hz(90.0), 100);
    }
}
