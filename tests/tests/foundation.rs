//! The programs load, pass the verifier on this kernel, attach in each mode, count real TCP
//! traffic without disturbing it, and the daemon detaches cleanly on SIGTERM.

use router_common::stats::{Hook, StatReason};
use router_tests::netns::Netns;
use router_tests::require_root;
use router_tests::scenario::DaemonSetup;
use router_tests::topology::ClientRouter;
use router_userspace::datapath::{self, AttachMode, ResolvedMode};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Sends `len` bytes from the client namespace to an echo server in the server namespace and
/// checks every byte comes back.
fn echo_through(client: &Netns, server: &Netns, server_addr: Ipv4Addr, len: usize) {
    let listener = server
        .enter(move || TcpListener::bind((server_addr, 0)))
        .expect("enter server ns")
        .expect("bind echo server");
    let addr: SocketAddr = listener.local_addr().expect("listener address");
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf).expect("server read");
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).expect("server write");
        }
    });
    let mut conn = client
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("enter client ns")
        .expect("connect through the router namespace");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let writer_data = data.clone();
    let mut writer = conn.try_clone().expect("clone stream");
    let send = std::thread::spawn(move || {
        writer.write_all(&writer_data).expect("client write");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("client shutdown");
    });
    let mut back = Vec::with_capacity(len);
    conn.read_to_end(&mut back).expect("client read");
    send.join().expect("sender");
    echo.join().expect("echo server");
    assert!(back == data, "echoed data differs from what was sent");
}

fn counts_traffic_in(mode: AttachMode, expect: ResolvedMode, hook: Hook) {
    require_root();
    let net = ClientRouter::new(&[201]).expect("client and router namespaces");
    let (client, router, r_end) = (&net.client, &net.router, net.router_end(0));
    let dev = r_end.dev.clone();
    let ebpf = router
        .enter(move || -> anyhow::Result<_> {
            let mut ebpf = datapath::load()?;
            let attached = datapath::attach::attach(&mut ebpf, &dev, mode)?;
            Ok((ebpf, attached))
        })
        .expect("enter router ns");
    let (ebpf, attached) = ebpf.expect("load and attach (verifier accepted the programs)");
    assert_eq!(attached.mode, expect);
    let before = datapath::stats::seen(&ebpf, hook).expect("read counters");
    echo_through(client, router, r_end.addr, 1 << 20);
    let after = datapath::stats::seen(&ebpf, hook).expect("read counters");
    assert!(
        after.packets > before.packets + 10,
        "{} counters did not move with 1 MiB of TCP: {before:?} -> {after:?}",
        hook.name()
    );
    assert!(
        after.bytes > before.bytes + (1 << 20) / 2,
        "bytes counted: {after:?}"
    );
    let passed = datapath::stats::read(&ebpf, hook, StatReason::PassNotForRange).expect("counters");
    assert!(passed.packets >= after.packets - before.packets);
}

#[test]
fn tc_program_counts_tcp_and_passes_it() {
    counts_traffic_in(AttachMode::Tc, ResolvedMode::Tc, Hook::Tc);
}

#[test]
fn native_xdp_program_counts_tcp_and_passes_it() {
    counts_traffic_in(AttachMode::Xdp, ResolvedMode::Xdp, Hook::Xdp);
}

#[test]
fn auto_mode_picks_tc_on_veth() {
    counts_traffic_in(AttachMode::Auto, ResolvedMode::Tc, Hook::Tc);
}

/// Names of the programs the kernel shows attached to `dev` in `ns` (bpftool's view).
fn attached_programs(ns: &Netns, dev: &str) -> String {
    router_tests::attached::program_names(ns, dev)
        .expect("bpftool net show")
        .join(" ")
}

#[test]
fn daemon_reports_modes_and_detaches_on_sigterm() {
    require_root();
    let net = ClientRouter::new(&[202, 203]).expect("client and router namespaces");
    let (client, router) = (&net.client, &net.router);
    let (r1, r2) = (net.router_end(0), net.router_end(1));
    // Its own state directory (the setup's): it holds the instance lock, which the default
    // (/var/lib/task-router) would share with any other daemon on the machine.
    let mut daemon = DaemonSetup::new(router)
        .interface_as(&r1.dev, "xdp")
        .interface(&r2.dev)
        // The default leaves the programs attached for the next daemon (see ops_restart).
        .args(["--detach-on-exit"])
        .spawn();
    let line = daemon.wait_for_log(
        &format!("attached interface={}", r1.dev),
        Duration::from_secs(20),
    );
    assert!(line.contains("mode=xdp"), "xdp interface line: {line}");
    let line = daemon.wait_for_log(
        &format!("attached interface={}", r2.dev),
        Duration::from_secs(20),
    );
    assert!(
        line.contains("mode=tc"),
        "auto on veth must pick tc: {line}"
    );
    daemon.wait_for_log("ready", Duration::from_secs(20));
    assert!(attached_programs(router, &r1.dev).contains("task_router_xdp"));
    assert!(attached_programs(router, &r2.dev).contains("task_router_tc"));
    echo_through(client, router, r2.addr, 64 * 1024);

    daemon.terminate();
    assert!(!attached_programs(router, &r1.dev).contains("task_router"));
    assert!(!attached_programs(router, &r2.dev).contains("task_router"));
}

#[test]
fn daemon_refuses_unknown_interface_with_a_clear_error() {
    require_root();
    let router = Netns::new("trer").expect("router ns");
    // Its own state directory (the instance lock), so no other daemon on the machine matters.
    let out = DaemonSetup::new(&router).interface("nosuch0").run_to_end();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interface nosuch0 does not exist"),
        "{stderr}"
    );
}
