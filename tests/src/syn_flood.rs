//! A spoofed SYN generator for the flood test and the `hostile` bench: Ethernet frames written
//! with `sendmmsg` to an AF_PACKET socket bound to one interface of a namespace the caller
//! created, so they leave through that link only. Sources are drawn from one /16 subnet of
//! [`SPOOFED_SUBNET`] (routed back into the sending namespace, where nothing answers), source
//! ports and sequence numbers at random; every frame carries an MSS option as a real SYN does.

use crate::netns::Netns;
use crate::packet::checksum;
use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The only source subnet the generator uses: 10.250.0.0/16.
pub const SPOOFED_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 250, 0, 0), 16);
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// Ethernet + IPv4 + TCP with one MSS option.
const FRAME_LEN: usize = 14 + 20 + 24;

/// Where the flood goes: out of `dev` (in the namespace given to [`Flood::start`]) to the next
/// hop `dst_mac`, at `dst`.
#[derive(Clone, Debug)]
pub struct Target {
    pub dev: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: SocketAddrV4,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
    /// CPU time of the sending thread (the kernel charges what it does for the sender's
    /// frames on veth, the receiving side's first steps included, to this thread too).
    pub cpu: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A running flood; stops at its duration or when stopped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<FloodReport>>>,
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let out = ns.run("cat", &[&format!("/sys/class/net/{dev}/address")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address of {dev}: {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address of {dev}: {text:?}"))
}

/// A packet socket bound to `dev`, created in the calling thread's namespace.
fn packet_socket(dev: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}: {}", std::io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid `sockaddr_ll`.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid `sockaddr_ll` of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!("bind to {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// xorshift64*: fast, and good enough to scatter sources, ports and sequence numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Writes a SYN from a random source of the subnet into `frame` (a template from [`template`]).
fn randomize(frame: &mut [u8; FRAME_LEN], rng: &mut Rng) {
    let r = rng.next();
    // Source 10.250.x.y (never .0 or .255 in the last byte), port 1024-65535, sequence.
    let host = (r as u16) | 1;
    let host = if host & 0xff == 0xff {
        host ^ 0x02
    } else {
        host
    };
    frame[14 + 14..14 + 16].copy_from_slice(&host.to_be_bytes());
    let sport = 1024 + ((r >> 16) as u16 % (65535 - 1024));
    frame[34..36].copy_from_slice(&sport.to_be_bytes());
    frame[38..42].copy_from_slice(&((r >> 32) as u32).to_be_bytes());
    frame[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let ip = checksum(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&ip.to_be_bytes());
    frame[34 + 16..34 + 18].copy_from_slice(&[0, 0]);
    let mut pseudo = [0u8; 12 + 24];
    pseudo[..8].copy_from_slice(&frame[14 + 12..14 + 20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    pseudo[12..].copy_from_slice(&frame[34..]);
    let tcp = checksum(&pseudo);
    frame[34 + 16..34 + 18].copy_from_slice(&tcp.to_be_bytes());
}

/// The frame every SYN starts from: addresses, ports, flags, window and MSS 1460.
fn template(target: &Target) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&target.dst_mac);
    f[6..12].copy_from_slice(&target.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 24).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..14].copy_from_slice(&SPOOFED_SUBNET.0.octets()[..2]);
    ip[16..20].copy_from_slice(&target.dst.ip().octets());
    let tcp = &mut f[34..];
    tcp[2..4].copy_from_slice(&target.dst.port().to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    f
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: all-zero is a valid `timespec`, written by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a live `timespec`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sends up to `count` frames from `frames` in one `sendmmsg`; returns how many went.
fn send_batch(fd: &OwnedFd, frames: &mut [[u8; FRAME_LEN]], count: usize) -> Result<usize> {
    let mut iov: Vec<libc::iovec> = frames[..count]
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: FRAME_LEN,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: all-zero is a valid `mmsghdr` (no name, no control data).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: `msgs` points at `count` headers whose buffers outlive the call.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), count as u32, 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOBUFS) {
            return Ok(0);
        }
        return Err(e).context("sendmmsg");
    }
    Ok(n as usize)
}

fn run(
    fd: OwnedFd,
    target: Target,
    rate: Option<u64>,
    duration: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Result<FloodReport> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let base = template(&target);
    let mut frames = vec![base; BATCH];
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = match rate {
            Some(r) => (elapsed.as_secs_f64() * r as f64) as u64,
            None => u64::MAX,
        };
        if total >= due {
            // Pacing, not waiting for a condition: the next frame is not due yet.
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let count = (due - total).min(BATCH as u64) as usize;
        for f in &mut frames[..count] {
            randomize(f, &mut rng);
        }
        let n = send_batch(&fd, &mut frames, count)?;
        total += n as u64;
        sent.store(total, Ordering::Relaxed);
    }
    Ok(FloodReport {
        sent: total,
        elapsed: started.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu_before),
    })
}

impl Flood {
    /// Starts sending SYNs out of `target.dev` in `ns` at `rate` per second (`None`: as fast
    /// as one thread can) for at most `duration`.
    pub fn start(
        ns: &Netns,
        target: Target,
        rate: Option<u64>,
        duration: Duration,
    ) -> Result<Flood> {
        let dev = target.dev.clone();
        let fd = ns.enter(move || packet_socket(&dev))??;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::Builder::new()
            .name("syn-flood".into())
            .spawn(move || run(fd, target, rate, duration, st, se))?;
        Ok(Flood {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// SYNs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the flood has ended (its duration is over).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the flood (if still running) and reports.
    pub fn stop(mut self) -> Result<FloodReport> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the SYN generator panicked"))?,
            None => bail!("the flood was already stopped"),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{TCP_SYN, parse, tcp_checksum_ok};

    #[test]
    fn frames_are_well_formed_syns_from_the_spoofed_subnet() {
        let target = Target {
            dev: "unused".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 81, 1, 1), 20000),
        };
        let mut frame = template(&target);
        let mut rng = Rng(7);
        for _ in 0..1000 {
            randomize(&mut frame, &mut rng);
            let p = parse(&frame).expect("parses");
            assert_eq!(p.flags, TCP_SYN);
            assert_eq!((p.daddr, p.dport), (*target.dst.ip(), 20000));
            let [a, b, _, last] = p.saddr.octets();
            assert_eq!((a, b), (10, 250), "{}", p.saddr);
            assert!(last != 0 && last != 255, "{}", p.saddr);
            assert!(p.sport >= 1024);
            assert!(crate::packet::ipv4_checksum_ok(&frame));
            assert!(tcp_checksum_ok(&frame));
        }
    }
}
