//! Packet-path fuzzing of both kernel programs through BPF_PROG_TEST_RUN: the corpus in
//! `tests/corpus/packets/` first, then seeded random and mutated frames
//! (`router_tests::packet_fuzz`), with the invariants checked after every frame:
//!
//! - (a) a frame that does not concern the router (not TCP to a routed port, not a segment of a
//!   tracked connection, not an ICMP error about one) leaves unmodified with a pass verdict;
//!   any passed frame is unmodified;
//! - (b) a modified frame is a well-formed IPv4 packet whose IPv4, TCP/ICMP and quoted IPv4
//!   checksums (recomputed from scratch) are right exactly when they were right on arrival
//!   (a router does not repair nor break them), and only header bytes a translation may
//!   touch changed; TCP tuples match the connection entry;
//! - (c) the connection table (with the half-open table: one view) stays consistent: every live
//!   entry has its partner, in the other direction, with translations that point at each other
//!   and the same route; entries appear only for a counted new connection, and change or go
//!   only for the frame's own (or, for a SYN that evicted the oldest half-open connection,
//!   that one's);
//! - (d) the verdict is pass, drop or redirect (never abort), and exactly one counter reason
//!   grows by one packet of the frame's length, of the verdict's kind.
//!
//! `PACKET_FUZZ_SEED` (default fixed, printed) and `PACKET_FUZZ_CASES` (per program) change
//! the run; a failure prints the seed, the case, and a corpus file to save (also written to
//! `target/packet-fuzz/`).

use router_common::conntrack::{CtKey4, CtValue4};
use router_common::stats::{Hook, StatReason, StatValue};
use router_tests::packet::{TCP_ACK, TCP_SYN, Tcp4};
use router_tests::packet_fuzz::{
    self, Case, CorpusEntry, ETH_LEN, Side, World, addr, checksums, concerns_router, may_change,
    mss_option, raw,
};
use router_tests::routes::tcp_routes;
use router_tests::topology::ProgTestNet;
use router_tests::{require_root, workspace_root};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::options::NatSourcePorts;
use router_userspace::datapath::{AttachMode, Datapath, Program, Timeouts};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

/// Random frames per program in a CI run (both programs run, in parallel).
const DEFAULT_CASES: usize = 30_000;
const DEFAULT_SEED: u64 = 0x7a5c_2026_1130;
/// Small, so the table fills up (counted drops) and sweeps free it: only completed handshakes
/// count, which random frames make rarely.
const MAX_CONNECTIONS: u32 = 4;
/// Eight NAT source ports: the client ports of the generator collide often.
const NAT_PORTS: NatSourcePorts = NatSourcePorts::Range(61000, 61007);
/// A sweep with the default timeouts every this many cases; every fourth one expires
/// everything (closed connections become tombstones).
const SWEEP_EVERY: usize = 500;

const PORT: u16 = 20000;
const PORT_UNRESOLVED: u16 = 20001;
const PORT_OTHER_BACKEND: u16 = 20002;
const BACKEND_PORT: u16 = 8080;
const OTHER_BACKEND_PORT: u16 = 9090;
/// The connection opened before the corpus: client 10.70.1.2:40000 → router:20000, NAT source
/// port 40000 (the client's own, free), established.
const BASE_CLIENT_PORT: u16 = 40000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

struct Fuzzer {
    dp: Datapath,
    program: Program,
    hook: Hook,
    world: World,
    client_if: u32,
    backend_if: u32,
    routed_ports: Vec<u16>,
    /// Backend (address, port) per routed port.
    backends: Vec<(u32, u16)>,
    router: Ipv4Addr,
    stats: Vec<StatValue>,
    /// The connection table as of the last run or sweep (read once per frame).
    table_now: HashMap<CtKey4, CtValue4>,
}

/// What happened to one frame.
struct Outcome {
    verdict: Verdict,
    reason: StatReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    Redirect,
    /// The kernel refused to run the frame (BPF_PROG_TEST_RUN's own length checks).
    Refused,
}

impl Fuzzer {
    fn read_stats(&self) -> Vec<StatValue> {
        StatReason::ALL
            .iter()
            .map(|r| {
                self.dp
                    .stat(self.hook, *r)
                    .expect("read the verdict counters")
            })
            .collect()
    }

    /// The connection table and the half-open table as one: a half-open entry hides a
    /// tombstone on its key (the same client taking its tuple back).
    fn table(&self) -> HashMap<CtKey4, CtValue4> {
        let mut table = self
            .dp
            .conntrack_table()
            .expect("read the connection table");
        let (half_open, _) = self.dp.half_open_table().expect("read the half-open table");
        table.extend(half_open.into_iter().map(|(k, v)| (k, v.ct)));
        table
    }

    fn verdict(&self, retval: u32) -> Result<Verdict, String> {
        let v = match (self.hook, retval) {
            (Hook::Xdp, 2) | (Hook::Tc, u32::MAX) => Verdict::Pass,
            (Hook::Xdp, 1) | (Hook::Tc, 2) => Verdict::Drop,
            (Hook::Xdp, 4) | (Hook::Tc, 7) => Verdict::Redirect,
            _ => return Err(format!("unexpected return value {retval}")),
        };
        Ok(v)
    }

    /// Runs one frame and checks every invariant; the error says which one broke.
    fn run(&mut self, case: &Case) -> Result<Outcome, String> {
        let before = std::mem::take(&mut self.table_now);
        let ifindex = match case.side {
            Side::Client => self.client_if,
            Side::Backend => self.backend_if,
        };
        let frame = &case.frame;
        let out = match self.dp.test_run(self.program, frame, 1, Some(ifindex)) {
            Ok(out) => out,
            Err(e) => {
                // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and for TC
                // (which builds an skb) IPv4/IPv6 frames shorter than their network header;
                // nothing else.
                let ethertype = frame.get(12..14);
                let refused = frame.len() < ETH_LEN
                    || (self.hook == Hook::Tc
                        && ((ethertype == Some(&[0x08, 0x00]) && frame.len() < ETH_LEN + 20)
                            || (ethertype == Some(&[0x86, 0xdd]) && frame.len() < ETH_LEN + 40)));
                if !refused {
                    return Err(format!("BPF_PROG_TEST_RUN failed: {e}"));
                }
                if self.read_stats() != self.stats || self.table() != before {
                    return Err("a refused run changed counters or connections".into());
                }
                self.table_now = before;
                return Ok(Outcome {
                    verdict: Verdict::Refused,
                    reason: StatReason::PassMalformed,
                });
            }
        };
        let after = self.table();
        let stats = self.read_stats();
        let verdict = self.verdict(out.retval)?;

        // (d) exactly one reason, one packet of the frame's length, of the verdict's kind.
        let grown: Vec<(usize, u64, u64)> = stats
            .iter()
            .zip(&self.stats)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, a.packets - b.packets, a.bytes - b.bytes))
            .collect();
        self.stats = stats;
        let [(index, packets, bytes)] = grown[..] else {
            return Err(format!(
                "counters grew for {} reasons: {grown:?}",
                grown.len()
            ));
        };
        let reason = StatReason::ALL[index];
        if (packets, bytes) != (1, frame.len() as u64) {
            return Err(format!(
                "{} grew by {packets} packets / {bytes} bytes for one frame of {} bytes",
                reason.name(),
                frame.len()
            ));
        }
        let translated = matches!(
            reason,
            StatReason::Forwarded
                | StatReason::NewConnection
                | StatReason::NewConnectionEvicting
                | StatReason::HandshakeConfirmed
                | StatReason::ForwardedBeforeHandshake
                | StatReason::IcmpTranslated
        );
        let kind_ok = match verdict {
            Verdict::Pass => !translated && !reason.is_drop(),
            Verdict::Drop => reason.is_drop(),
            Verdict::Redirect => translated,
            Verdict::Refused => false,
        };
        if !kind_ok {
            return Err(format!("verdict {verdict:?} counted as {}", reason.name()));
        }

        // (a) frames that do not concern the router, and every passed frame, leave untouched.
        let modified = out.frame != *frame;
        if !concerns_router(frame, &self.routed_ports, &before) && verdict != Verdict::Pass {
            return Err(format!(
                "verdict {verdict:?} ({}) for a frame that does not concern the router",
                reason.name()
            ));
        }
        if verdict == Verdict::Pass && modified {
            return Err(format!("passed ({}) but modified", reason.name()));
        }

        // (b) modified frames: well-formed, checksums right exactly when they were, only
        // translatable bytes changed.
        if modified {
            if out.frame.len() != frame.len() {
                return Err(format!(
                    "length changed from {} to {}",
                    frame.len(),
                    out.frame.len()
                ));
            }
            let (sums_in, sums_out) = (checksums(frame), checksums(&out.frame));
            if sums_in.ipv4.is_none() || sums_in.l4.is_none() {
                return Err(format!(
                    "modified a frame that is not a well-formed IPv4 packet (its lengths leave \
                     no TCP/ICMP checksum to keep right): {sums_in:?}"
                ));
            }
            if sums_in != sums_out {
                return Err(format!(
                    "checksums changed validity: before {sums_in:?}, after {sums_out:?}"
                ));
            }
            if let Some(at) =
                (0..frame.len()).find(|&i| frame[i] != out.frame[i] && !may_change(frame, i))
            {
                return Err(format!(
                    "byte {at} changed ({:#04x} -> {:#04x}), not a header field a translation \
                     rewrites",
                    frame[at], out.frame[at]
                ));
            }
            // An MSS option is only ever lowered (clamped to the links' MTU), never raised.
            if let (Some(before), Some(after)) = (mss_option(frame), mss_option(&out.frame))
                && after > before
            {
                return Err(format!("MSS raised from {before} to {after}"));
            }
            if frame[ETH_LEN + 8].wrapping_sub(1) != out.frame[ETH_LEN + 8] {
                return Err("TTL not decremented by one".into());
            }
            // Rewritten MACs are a next hop's: the peer's, from the router's interface there.
            if out.frame[..12] != frame[..12] {
                let w = &self.world;
                let hops = [
                    [w.client_mac, w.client_dev_mac].concat(),
                    [w.backend_mac, w.backend_dev_mac].concat(),
                ];
                if !hops.iter().any(|h| h[..] == out.frame[..12]) {
                    return Err(format!("MACs rewritten to {:02x?}", &out.frame[..12]));
                }
            }
            self.check_translation(frame, &out.frame, reason, &after)?;
        }

        // (c) the table.
        self.check_table_change(frame, reason, &before, &after)?;
        self.check_table(&after)?;
        self.table_now = after;
        Ok(Outcome { verdict, reason })
    }

    /// The translated tuple is the one the connection entry says.
    fn check_translation(
        &self,
        frame: &[u8],
        out: &[u8],
        reason: StatReason,
        after: &HashMap<CtKey4, CtValue4>,
    ) -> Result<(), String> {
        if reason == StatReason::IcmpTranslated {
            let key = packet_fuzz::icmp_quote_key(frame).ok_or("ICMP translated: no quote")?;
            let v = after
                .get(&key)
                .ok_or("ICMP translated: no entry for the quote")?;
            let outer = packet_fuzz::ipv4_addrs(out).ok_or("ICMP out: not IPv4")?;
            let quoted = packet_fuzz::icmp_quote_key(out).ok_or("ICMP out: no quote")?;
            if outer != (v.saddr, v.daddr) || quoted != v.rewritten() {
                return Err(format!(
                    "ICMP error translated to {outer:?} quoting {:?}, entry says {v:?}",
                    quoted.swapped()
                ));
            }
            return Ok(());
        }
        let key = packet_fuzz::tcp_key(frame).ok_or("translated a frame that is not TCP")?;
        let v = after.get(&key).ok_or("translated without an entry")?;
        let got = packet_fuzz::tcp_key(out).ok_or("output is not TCP")?;
        if got != v.rewritten() {
            return Err(format!(
                "translated to {got:?}, entry says {:?}",
                v.rewritten()
            ));
        }
        Ok(())
    }

    /// Entries appear only for a counted new connection (its pair), and change or disappear
    /// only for the frame's own connection.
    fn check_table_change(
        &self,
        frame: &[u8],
        reason: StatReason,
        before: &HashMap<CtKey4, CtValue4>,
        after: &HashMap<CtKey4, CtValue4>,
    ) -> Result<(), String> {
        let key = packet_fuzz::tcp_key(frame);
        // The frame's own connection: its TCP tuple's pair, or the entry an ICMP error's quote
        // matches (whose next hop it may refresh even when it is then dropped).
        let own: Vec<CtKey4> = match key {
            Some(k) => {
                let mut own = vec![k];
                own.extend(before.get(&k).map(CtKey4::partner_of));
                own.extend(after.get(&k).map(CtKey4::partner_of));
                own
            }
            None => packet_fuzz::icmp_quote_key(frame).into_iter().collect(),
        };
        let opened = matches!(
            reason,
            StatReason::NewConnection | StatReason::NewConnectionEvicting
        );
        for (k, v) in after {
            match before.get(k) {
                None if !opened || !own.contains(k) => {
                    return Err(format!("entry {k:?} appeared ({}): {v:?}", reason.name()));
                }
                Some(old) if old != v && !own.contains(k) => {
                    return Err(format!("entry {k:?} of another connection changed"));
                }
                _ => {}
            }
        }
        for k in before.keys() {
            if !after.contains_key(k)
                && !own.contains(k)
                && reason != StatReason::NewConnectionEvicting
            {
                return Err(format!("entry {k:?} of another connection disappeared"));
            }
        }
        if opened {
            let k = key.ok_or("new connection from a frame that is not TCP")?;
            let v = after.get(&k).ok_or("new connection without its entry")?;
            if v.to_client() || !after.contains_key(&CtKey4::partner_of(v)) {
                return Err(format!("new connection's entries incomplete: {v:?}"));
            }
        }
        Ok(())
    }

    /// Every live entry has its partner in the other direction, pointing back, with the same
    /// route; forward entries are for a routed port at the router and go to that route's
    /// backend; a tombstone has no live forward entry.
    fn check_table(&self, table: &HashMap<CtKey4, CtValue4>) -> Result<(), String> {
        let mut live_pairs = 0u64;
        for (k, v) in table {
            let partner_key = CtKey4::partner_of(v);
            let partner = table.get(&partner_key);
            if v.is_tombstone() {
                if !v.to_client() {
                    return Err(format!("tombstone {k:?} is a forward entry"));
                }
                if partner.is_some_and(|p| !p.is_tombstone() && CtKey4::partner_of(p) == *k) {
                    return Err(format!("tombstone {k:?} still has a live forward entry"));
                }
                continue;
            }
            let Some(p) = partner else {
                return Err(format!(
                    "entry {k:?} has no partner at {partner_key:?}: {v:?}"
                ));
            };
            if p.is_tombstone()
                || p.to_client() == v.to_client()
                || CtKey4::partner_of(p) != *k
                || p.route_id != v.route_id
            {
                return Err(format!(
                    "entries disagree: {k:?} -> {v:?} and {partner_key:?} -> {p:?}"
                ));
            }
            if !v.to_client() {
                live_pairs += 1;
                let port = u16::from_be(k.dport);
                let Some(i) = self.routed_ports.iter().position(|&p| p == port) else {
                    return Err(format!("forward entry {k:?} for a port without a route"));
                };
                if k.daddr != raw(self.router) || (v.daddr, v.dport) != self.backends[i] {
                    return Err(format!(
                        "forward entry {k:?} does not follow its route: {v:?}"
                    ));
                }
            }
        }
        // Only connections in the connection table count against it (not half-open ones).
        let ct4 = self.dp.conntrack_table().map_err(|e| e.to_string())?;
        let live_pairs = live_pairs.min(
            ct4.iter()
                .filter(|(_, v)| !v.is_tombstone() && !v.to_client())
                .count() as u64,
        );
        let (counted, _) = self.dp.fill().map_err(|e| e.to_string())?;
        if counted < live_pairs {
            return Err(format!(
                "{live_pairs} connections in the table but only {counted} counted live (the \
                 table-full check would let the LRU evict live entries)"
            ));
        }
        Ok(())
    }

    fn refresh_world(&mut self) {
        self.world.table = self.table_now.iter().map(|(k, v)| (*k, *v)).collect();
        self.world.table.sort_by_key(|(k, _)| *k);
    }

    fn sweep(&mut self, expire_all: bool) {
        if expire_all {
            self.dp.set_timeouts(Timeouts {
                established: Duration::ZERO,
                opening: Duration::ZERO,
                closing: Duration::ZERO,
                time_wait: Duration::from_secs(3600),
            });
        }
        self.dp.sweep().expect("sweep");
        self.dp.set_timeouts(Timeouts::default());
        let table = self.table();
        if let Err(e) = self.check_table(&table) {
            panic!("{:?}: after a sweep: {e}", self.program);
        }
        self.table_now = table;
        // Sweeps do not count verdicts, but keep the baseline exact.
        self.stats = self.read_stats();
    }
}

fn report_failure(program: Program, label: &str, case: &Case, error: &str) -> ! {
    let text = packet_fuzz::corpus_text(
        &format!("found by the fuzzer ({label}): {}", case.what),
        case.side,
        &case.frame,
    );
    let dir = workspace_root().join("target/packet-fuzz");
    let file = dir.join(format!(
        "{}-{}.hex",
        program.name(),
        label.replace(".hex", "").replace(' ', "-")
    ));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&file, &text))
        .map(|_| format!("saved as {}", file.display()))
        .unwrap_or_else(|e| format!("not saved: {e}"));
    panic!(
        "{program:?}, {label}: {error}\nframe from the {} side, made as: {}\n\
         corpus file ({saved}; add it to tests/corpus/packets/ with the fix):\n{text}",
        case.side.name(),
        case.what
    );
}

fn fuzz(program: Program) {
    require_root();
    let seed = env_u64("PACKET_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("PACKET_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    eprintln!("{program:?}: seed {seed:#x} (PACKET_FUZZ_SEED), {cases} cases (PACKET_FUZZ_CASES)");
    let corpus = packet_fuzz::load_corpus(&workspace_root().join("tests/corpus/packets"))
        .expect("load the packet corpus");
    assert!(!corpus.is_empty(), "the packet corpus is empty");
    let t = ProgTestNet::new().expect("router namespace");
    let client_if = t.ifindex(&t.client_dev).expect("ifindex");
    let backend_if = t.ifindex(&t.backend_dev).expect("ifindex");
    let world = World {
        router: t.router,
        clients: vec![
            t.client,
            Ipv4Addr::new(10, 70, 1, 3),
            Ipv4Addr::new(10, 70, 1, 4),
        ],
        client_mac: t.client_mac,
        client_dev_mac: t.client_dev_mac,
        nat_source: t.nat_source,
        backend: t.backend,
        backend_mac: t.backend_mac,
        backend_dev_mac: t.backend_dev_mac,
        routed_ports: vec![PORT, PORT_UNRESOLVED, PORT_OTHER_BACKEND],
        backend_ports: vec![BACKEND_PORT, OTHER_BACKEND_PORT],
        client_ports: vec![40000, 40001, 40002, 61000, 61003, 12345],
        table: Vec::new(),
    };
    let (client_dev, backend_dev) = (t.client_dev.clone(), t.backend_dev.clone());
    let (router, backend, unresolved) = (t.router, t.backend, t.backend_unresolved);
    // The clients' ports (40000-40002, 12345) keep their own outside the host's range.
    let host = router_tests::progtest_cases::CASES_HOST_EPHEMERAL;
    t.ns.sysctl(&format!(
        "net.ipv4.ip_local_port_range={} {}",
        host.first, host.last
    ))
    .expect("the namespace's ephemeral range");
    let result = t.ns.enter(move || {
        let cfg = DatapathConfig {
            kind: DatapathKind::Ebpf(AttachMode::Tc),
            interfaces: Vec::new(),
            bpffs: std::env::temp_dir(),
            max_connections: MAX_CONNECTIONS,
            conntrack_pressure: router_userspace::datapath::Pressure::default(),
            router_addresses: vec![router],
            nat_source_ports: NAT_PORTS,
        };
        let mut dp = Datapath::open(&cfg).expect("open the datapath");
        dp.add_xdp_target(&client_dev).expect("xdp target");
        dp.add_xdp_target(&backend_dev).expect("xdp target");
        let routes = tcp_routes(&[
            (PORT, backend, BACKEND_PORT),
            (PORT_UNRESOLVED, unresolved, BACKEND_PORT),
            (PORT_OTHER_BACKEND, backend, OTHER_BACKEND_PORT),
        ]);
        dp.apply_routes(&routes).expect("program routes");
        let hook = if program == Program::Xdp {
            Hook::Xdp
        } else {
            Hook::Tc
        };
        let mut f = Fuzzer {
            dp,
            program,
            hook,
            routed_ports: world.routed_ports.clone(),
            backends: vec![
                (raw(backend), BACKEND_PORT.to_be()),
                (raw(unresolved), BACKEND_PORT.to_be()),
                (raw(backend), OTHER_BACKEND_PORT.to_be()),
            ],
            world,
            client_if,
            backend_if,
            router,
            stats: Vec::new(),
            table_now: HashMap::new(),
        };
        f.stats = f.read_stats();
        f.table_now = f.table();
        open_base_connection(&mut f);
        replay_corpus(&mut f, &corpus);
        let started = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for i in 0..cases {
            if i > 0 && i % SWEEP_EVERY == 0 {
                f.sweep(i % (4 * SWEEP_EVERY) == 0);
            }
            f.refresh_world();
            let case = f.world.generate(&mut rng);
            match f.run(&case) {
                Ok(o) => {
                    let name = if o.verdict == Verdict::Refused {
                        "(refused by the kernel)"
                    } else {
                        o.reason.name()
                    };
                    *by_reason.entry(name).or_default() += 1;
                }
                Err(e) => report_failure(program, &format!("seed {seed:#x} case {i}"), &case, &e),
            }
        }
        eprintln!(
            "{program:?}: {} corpus frames and {cases} random frames in {:.1?}; by reason: \
             {by_reason:?}",
            corpus.len(),
            started.elapsed()
        );
        by_reason
    });
    let by_reason = result.expect("the fuzz run failed (see the panic above)");
    // The generator must reach the interesting paths, or the run proves little.
    for must in [
        "forwarded",
        "new_connection",
        "icmp_translated",
        "pass_not_for_range",
        "pass_malformed",
        "drop_table_full",
    ] {
        if cases >= 2000 {
            assert!(
                by_reason.get(must).copied().unwrap_or(0) > 0,
                "{program:?}: no frame ended as {must}: {by_reason:?}"
            );
        }
    }
}

/// client 10.70.1.2:40000 → router:20000, established (its handshake completed, so it is in the
/// connection table, not the half-open one): the corpus's tracked connection.
fn open_base_connection(f: &mut Fuzzer) {
    let w = &f.world;
    let syn = Tcp4::new(w.clients[0], BASE_CLIENT_PORT, w.router, PORT, TCP_SYN)
        .macs(w.client_mac, w.client_dev_mac)
        .build();
    let mut synack = Tcp4::new(
        w.backend,
        BACKEND_PORT,
        w.nat_source,
        BASE_CLIENT_PORT,
        TCP_SYN | TCP_ACK,
    )
    .macs(w.backend_mac, w.backend_dev_mac);
    synack.seq = 1999;
    let ack = Tcp4::new(w.clients[0], BASE_CLIENT_PORT, w.router, PORT, TCP_ACK)
        .macs(w.client_mac, w.client_dev_mac)
        .build();
    for (side, frame, want) in [
        (Side::Client, syn, StatReason::NewConnection),
        (Side::Backend, synack.build(), StatReason::Forwarded),
        (Side::Client, ack, StatReason::HandshakeConfirmed),
    ] {
        let case = Case {
            side,
            frame,
            what: "the base connection".into(),
        };
        match f.run(&case) {
            Ok(o) if o.reason == want => {}
            Ok(o) => panic!(
                "base connection: {} instead of {}",
                o.reason.name(),
                want.name()
            ),
            Err(e) => report_failure(f.program, "base connection", &case, &e),
        }
    }
    let key = CtKey4 {
        saddr: raw(f.world.clients[0]),
        daddr: raw(f.world.router),
        sport: BASE_CLIENT_PORT.to_be(),
        dport: PORT.to_be(),
    };
    let v = f.table()[&key];
    assert_eq!(
        (addr(v.saddr), u16::from_be(v.sport)),
        (f.world.nat_source, BASE_CLIENT_PORT),
        "the base connection keeps the client's port"
    );
}

fn replay_corpus(f: &mut Fuzzer, corpus: &[CorpusEntry]) {
    for entry in corpus {
        let case = Case {
            side: entry.side,
            frame: entry.frame.clone(),
            what: entry.comment.clone(),
        };
        let label = format!("corpus {}", entry.name);
        let outcome = match f.run(&case) {
            Ok(o) => o,
            Err(e) => report_failure(f.program, &label, &case, &e),
        };
        let expect = match f.hook {
            Hook::Xdp => &entry.expect_xdp,
            Hook::Tc => &entry.expect_tc,
        };
        let got = if outcome.verdict == Verdict::Refused {
            "refused"
        } else {
            outcome.reason.name()
        };
        if let Some(want) = expect {
            assert_eq!(got, want, "{:?}: {label} ({})", f.program, entry.comment);
        }
    }
}

#[test]
fn xdp_keeps_its_invariants_on_random_and_mutated_frames() {
    fuzz(Program::Xdp);
}

#[test]
fn tc_keeps_its_invariants_on_random_and_mutated_frames() {
    fuzz(Program::Tc);
}
