//! The phases of one peer's round: bulk throughput (iperf3), the connection rate,
//! request/response latency, and CPU per GB at a fixed rate.

use super::backend::{RR_MESSAGE, one_connection};
use super::bench::Bench;
use super::host::{backlog_drops, machine_busy, ns_cmd, wait_exit, wait_listening};
use super::peers::Peer;
use super::report::percentile;
use super::samples::{CPU_PHASE_RATE, Sample};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The CPU-per-GB phase runs this many times `--seconds`: it measures under 1 CPU second per
/// 5 s, against which the machine's own background (kernel threads, the VM agent) is a
/// noticeable share; a longer phase averages it out (rounds of one peer spread ±25 % at 5 s).
const CPU_PHASE_LENGTH: u64 = 3;

impl Bench {
    /// iperf3 with `streams` streams (at most `rate` in total when given): Gbit/s received,
    /// the whole machine's busy CPU seconds meanwhile, bytes received.
    pub(super) fn bulk(
        &self,
        peer: Peer,
        target: SocketAddrV4,
        streams: u32,
        rate: Option<&str>,
        seconds: u64,
    ) -> Result<(f64, f64, f64)> {
        let iperf_port = peer.ports().2;
        let mut server = ns_cmd(&self.t.backend, "iperf3")
            .args(["-s", "-1", "-B", &self.backend().to_string()])
            .args(["-p", &iperf_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        wait_listening(&self.t.backend, iperf_port, "iperf3");
        let out = self.dir.path().join("iperf.json");
        // Diagnostics first: reading the backend's counters starts processes, which must not
        // count as busy time of the phase.
        let drops0 = backlog_drops()?;
        let backend0 = self.t.backend.tcp_counters()?;
        let busy0 = machine_busy()?;
        let mut client = ns_cmd(&self.t.client, "iperf3")
            .args([
                "-c",
                &target.ip().to_string(),
                "-p",
                &target.port().to_string(),
            ])
            .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
            // Kernel pacing (SO_MAX_PACING_RATE), not iperf3's own `-b` throttle, which spins
            // in its loop and would count as forwarding cost.
            .args(rate.map(|r| ["--fq-rate", r]).into_iter().flatten())
            .arg("-J")
            .stdout(Stdio::from(
                std::fs::File::create(&out).context("iperf3 output file")?,
            ))
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 client")?;
        let limit = Duration::from_secs(seconds + 30);
        let status = wait_exit(&mut client, limit)?;
        wait_exit(&mut server, Duration::from_secs(10))?;
        let busy = machine_busy()? - busy0;
        let text = std::fs::read_to_string(&out).context("iperf3 output")?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 JSON ({status}): {text}"))?;
        if !status.success() {
            bail!("iperf3 failed ({status}): {}", json["error"]);
        }
        let bps = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 reported no received rate")?;
        let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        // What explains a slow round: retransmits (spurious ones from reordering between the
        // two CPUs' backlogs are common here), packets the per-CPU backlogs refused, and how
        // many segments the receiver could merge into its queues (a forwarded packet that
        // still shares its buffer with the sender cannot be merged into).
        let backend = self.t.backend.tcp_counters()?;
        let delta = |name: &str| {
            let get = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
            get(&backend).saturating_sub(get(&backend0))
        };
        eprintln!(
            "  {streams} stream(s): {:.2} Gbit/s, {} retransmits, {} backlog drops, {busy:.2} CPU s; \
             the receiver merged {} + {} of {} segments",
            bps / 1e9,
            json["end"]["sum_sent"]["retransmits"],
            backlog_drops()?.saturating_sub(drops0),
            delta("TcpExt.TCPRcvCoalesce"),
            delta("TcpExt.TCPBacklogCoalesce"),
            delta("Tcp.InSegs"),
        );
        Ok((bps / 1e9, busy, bytes))
    }

    /// New connections per second: 4 clients connect, exchange a byte and see the server close.
    pub(super) fn conn_rate(&self, target: SocketAddrV4) -> Result<f64> {
        let secs = self.opts.seconds;
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let client = &self.t.client;
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
                    scope.spawn(move || {
                        client.enter(move || {
                            let end = Instant::now() + Duration::from_secs(secs);
                            while Instant::now() < end {
                                match one_connection(target) {
                                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        })
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("connection worker panicked"))??;
            }
            Ok(())
        })?;
        let elapsed = start.elapsed().as_secs_f64();
        let failed = failed.load(Ordering::Relaxed);
        let done = done.load(Ordering::Relaxed);
        if failed > done / 100 {
            bail!("{failed} of {} connections failed", done + failed);
        }
        Ok(done as f64 / elapsed)
    }

    /// Request/response round trips on one connection: p50 and p99 in µs.
    pub(super) fn rr(&self, target: SocketAddrV4) -> Result<(f64, f64)> {
        let secs = self.opts.seconds;
        let mut samples = self.t.client.enter(move || -> Result<Vec<f64>> {
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"r")?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)?;
            let msg = [0x42u8; RR_MESSAGE];
            let mut back = [0u8; RR_MESSAGE];
            let mut out = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let t0 = Instant::now();
                s.write_all(&msg)?;
                s.read_exact(&mut back)?;
                out.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            Ok(out)
        })??;
        samples.sort_by(f64::total_cmp);
        Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
    }

    pub(super) fn measure(&self, peer: Peer) -> Result<Sample> {
        let _running = self.start(peer)?;
        let (bulk_target, rr_target) = self.targets(peer);
        let (bulk1, _, _) = self
            .bulk(peer, bulk_target, 1, None, self.opts.seconds)
            .context("bulk, 1 stream")?;
        let (bulk4, _, _) = self
            .bulk(peer, bulk_target, 4, None, self.opts.seconds)
            .context("bulk, 4 streams")?;
        let (conn, p50, p99, cpu, bytes) = if peer.tx_off() {
            (f64::NAN, f64::NAN, f64::NAN, f64::NAN, 0.0)
        } else {
            // Before the connection-rate phase: its ~10^5 connections stay in the datapath's
            // table (closing, then reserved for the backend's TIME_WAIT) for a minute, and the
            // sweeper's walks over them would be counted as forwarding cost.
            let (_, cpu, bytes) = self
                .bulk(
                    peer,
                    bulk_target,
                    1,
                    Some(CPU_PHASE_RATE),
                    CPU_PHASE_LENGTH * self.opts.seconds,
                )
                .context("bulk at a fixed rate (CPU per GB)")?;
            let conn = self.conn_rate(rr_target).context("connection rate")?;
            let (p50, p99) = self.rr(rr_target).context("request/response")?;
            (conn, p50, p99, cpu, bytes)
        };
        Ok(Sample {
            bulk1_gbps: bulk1,
            bulk4_gbps: bulk4,
            conn_per_s: conn,
            rr_p50_us: p50,
            rr_p99_us: p99,
            cpu_s_per_gb: if bytes > 0.0 {
                cpu / (bytes / 1e9)
            } else {
                f64::NAN
            },
        })
    }
}
