//! The machine the benchmark runs on: processes it started (stopped by PID on drop), its
//! scratch directory, waiting for a listener, the machine's busy time and backlog drops.

use anyhow::{Context, Result, bail};
use router_tests::netns::Netns;
use router_tests::wait;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Processes the benchmark started, stopped by PID on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let p = std::env::temp_dir().join(format!("trbench-{}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub(super) fn ns_cmd(ns: &Netns, program: &str) -> Command {
    ns.command(program)
}

pub(super) fn listening(ns: &Netns, port: u16) -> bool {
    ns.run("ss", &["-Hltn", &format!("sport = :{port}")])
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

pub(crate) fn wait_listening(ns: &Netns, port: u16, what: &str) {
    wait::until(
        &format!("{what} listening on port {port}"),
        Duration::from_secs(15),
        || listening(ns, port).then_some(()),
    );
}

/// Busy CPU time of the whole machine, seconds.
pub(crate) fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq (steal, the hypervisor running others, is not
    // this machine's work)
    let busy = v
        .iter()
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4);
    let ticks: u64 = busy.map(|(_, x)| *x).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Packets the per-CPU input backlogs dropped since boot (`/proc/net/softnet_stat`, column 2).
pub(crate) fn backlog_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").context("read softnet_stat")?;
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|hex| u64::from_str_radix(hex, 16).context("softnet_stat column"))
        .sum()
}

/// Waits for a child to exit; kills it after `timeout`.
pub(super) fn wait_exit(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for process {pid}"))?
        {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process {pid} did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
