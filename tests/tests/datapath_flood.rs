//! A spoofed SYN flood through the datapath, in namespaces: SYNs from 10.250.0.0/16 (routed back
//! into the client namespace, where nothing answers) to one routed port, many times what the
//! half-open table holds, while a legitimate client connects in a loop and a long connection
//! streams through the router. Expected: the flood lives and dies in the half-open table (the
//! SYNs evict each other, counted; none reaches the connection table), every legitimate
//! attempt connects, and the long connection loses no byte. Bounded in size and time; no
//! timing is asserted (the figures are in `cargo xtask bench hostile`).

use router_common::stats::{Hook, StatReason};
use router_tests::connect_loop::ConnectLoop;
use router_tests::flood_setup;
use router_tests::require_root;
use router_tests::syn_flood::{Flood, Target, mac_of};
use router_tests::topology::Topology;
use router_tests::traffic::{Client, EchoServer};
use router_tests::wait;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const PORT: u16 = 20300;
const BACKEND_PORT: u16 = 8080;
/// Small, so the half-open table is small (256 connections) and a short flood wraps it many
/// times; on a build without the half-open table this many SYNs fill the table itself.
const MAX_CONNECTIONS: u32 = 4096;
const FLOOD_RATE: u64 = 5_000;
const FLOOD_SECONDS: u64 = 4;
/// Generous: a legitimate handshake that meets a tuple the backend still holds for a spoofed
/// SYN (its listen queue, SYN_RECV) takes a SYN retransmission (1 s) to complete.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ECHO_ROUND: usize = 256 * 1024;

/// Streams random data through `client` in rounds until `stop`, checking every echoed byte;
/// returns the bytes verified.
fn stream_until(
    mut client: Client,
    stop: Arc<AtomicBool>,
    verified: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    while !stop.load(Ordering::Relaxed) {
        let n = client.echo_random(ECHO_ROUND, 16 * 1024, |_| {})?;
        verified.fetch_add(n as u64, Ordering::Relaxed);
    }
    client.finish()?;
    Ok(verified.load(Ordering::Relaxed))
}

#[test]
fn legitimate_clients_connect_and_streams_flow_through_a_spoofed_syn_flood() {
    require_root();
    let t = Topology::new().expect("topology");
    // Answers to spoofed sources go back into the client namespace, which drops them (not its
    // addresses, no forwarding).
    flood_setup::route_spoofed_subnet(&t).expect("route the spoofed subnet");
    let _server =
        EchoServer::start(&t.backend, t.backend_end.addr, BACKEND_PORT, "flooded").expect("echo");
    let backend = SocketAddrV4::new(t.backend_end.addr, BACKEND_PORT);
    let dp = flood_setup::open_datapath(&t, MAX_CONNECTIONS, &std::env::temp_dir(), PORT, backend)
        .expect("open the datapath");
    let (_, capacity) = dp.half_open_table().expect("half-open table");
    let target = SocketAddrV4::new(t.router_addr(), PORT);

    let long = Client::connect(&t.client, target).expect("long connection");
    let stop = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicU64::new(0));
    let streamer = {
        let (stop, verified) = (Arc::clone(&stop), Arc::clone(&verified));
        std::thread::spawn(move || stream_until(long, stop, verified))
    };
    let legit = ConnectLoop::start(
        &t.client,
        target,
        CONNECT_TIMEOUT,
        Duration::from_millis(20),
    )
    .expect("connect loop");
    let flood = Flood::start(
        &t.client,
        Target {
            dev: t.client_end.dev.clone(),
            src_mac: mac_of(&t.client, &t.client_end.dev).expect("client MAC"),
            dst_mac: mac_of(&t.router, &t.router_client.dev).expect("router MAC"),
            dst: target,
        },
        Some(FLOOD_RATE),
        Duration::from_secs(FLOOD_SECONDS),
    )
    .expect("start the flood");
    wait::until(
        "the flood to end",
        Duration::from_secs(FLOOD_SECONDS + 30),
        || flood.finished().then_some(()),
    );
    let report = flood.stop().expect("flood");
    // A few more attempts after the flood, then stop.
    let after = legit.done() + 3;
    wait::until("attempts after the flood", Duration::from_secs(60), || {
        (legit.done() >= after).then_some(())
    });
    let attempts = legit.stop().expect("connect loop");
    stop.store(true, Ordering::Relaxed);
    let streamed = streamer
        .join()
        .expect("streamer thread")
        .expect("the long connection lost or garbled bytes");

    let count = |reason| dp.stat(Hook::Tc, reason).expect("verdict counters").packets;
    let evicting = count(StatReason::NewConnectionEvicting);
    eprintln!(
        "flood: {} SYNs in {:.1?} ({:.0}/s); half-open capacity {capacity}; {evicting} SYNs \
         evicted the oldest half-open connection; {} legitimate attempts; {streamed} bytes \
         streamed and verified",
        report.sent,
        report.elapsed,
        report.rate(),
        attempts.len()
    );
    assert!(
        report.sent > 4 * capacity as u64,
        "the flood must wrap the half-open table: {} SYNs",
        report.sent
    );
    assert!(evicting > 0, "no SYN evicted a half-open connection");
    // Nothing dropped: in particular every SYN found a NAT source port (the half-open table
    // holds too few tuples to crowd the probe range).
    let drops: Vec<String> = dp
        .stats()
        .expect("verdict counters")
        .into_iter()
        .filter(|(_, reason, v)| reason.is_drop() && v.packets > 0)
        .map(|(hook, reason, v)| format!("{}/{}: {}", hook.name(), reason.name(), v.packets))
        .collect();
    assert!(drops.is_empty(), "{drops:?}");
    let failed: Vec<_> = attempts.iter().filter(|a| a.connect.is_none()).collect();
    assert!(
        failed.is_empty(),
        "attempts that did not connect: {failed:?}"
    );
    assert!(attempts.len() >= 10, "{} attempts", attempts.len());
    assert!(streamed >= ECHO_ROUND as u64, "{streamed} bytes streamed");
    // The flood never reached the connection table: only the legitimate connections did.
    let (live, _) = dp.fill().expect("fill");
    assert!(
        live <= attempts.len() as u64 + 1,
        "{live} connections counted for {} legitimate ones",
        attempts.len() + 1
    );
    // Each legitimate connection confirmed once (or restarted in place when the client reused
    // the port of an ended one), no spoofed one.
    let confirmed = count(StatReason::HandshakeConfirmed);
    assert!(
        confirmed <= attempts.len() as u64 + 1,
        "{confirmed} handshakes confirmed for {} legitimate connections",
        attempts.len() + 1
    );
}
