//! `cargo xtask bench hostile`: a spoofed SYN flood (sources in 10.250.0.0/16, inside the
//! benchmark's namespaces) on one routed port at 10 000 and 50 000 SYN/s and as fast as one
//! generator thread goes, while a legitimate client connects in a loop and a long connection
//! streams; the datapath (full NAT, and with the client's address kept: the backend's
//! SYN-ACKs to the spoofed sources go back through the router), nftables DNAT + masquerade and
//! nginx `stream` side by side, fresh
//! namespaces per measurement, each flood lasting 2 × `--seconds` (10 s at the default: at
//! 10 000 SYN/s, past the ~64 500 tuples of a backend port); then the datapath alone at
//! 10 000 SYN/s for 24 × `--seconds`.
//! Report: `target/bench/hostile.md`, raw rounds in `hostile.json` next to it.

use super::driver::{build_driver, capture};
use super::options::BenchOptions;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

/// Each flood lasts this many times `--seconds`.
const FLOOD_FACTOR: u32 = 2;
/// The sustained run lasts this many times `--seconds` (5 s: two minutes).
const SUSTAINED_FACTOR: u32 = 24;

pub fn run(object: &Path, opts: &BenchOptions) -> Result<()> {
    let (bin, out_dir) = build_driver(object)?;
    let sustained = opts.seconds * SUSTAINED_FACTOR;
    let table = capture(Command::new(&bin).args([
        "hostile",
        "--rounds",
        &opts.rounds.to_string(),
        "--seconds",
        &(opts.seconds * FLOOD_FACTOR).to_string(),
        "--sustained-seconds",
        &sustained.to_string(),
    ]))
    .context("the hostile section")?;
    let report = format!(
        "# Hostile traffic: a spoofed SYN flood\n\nCommand: `cargo xtask bench hostile --rounds \
         {} --seconds {}` (as root): floods of {} s. Per measurement a fresh veth topology; the \
         flood's sources \
         are drawn from 10.250.0.0/16, routed back into the client namespace where nothing \
         answers; the legitimate client connects in a loop (3 s timeout, 10 ms apart) and reads \
         the backend's banner; a long connection streams random data and checks every echoed \
         byte. The datapath runs in full NAT and, as its own row, with the client's address \
         kept (the route in destination-only mode, the backend's default route via the router: \
         its SYN-ACKs to the spoofed sources go back through the router into the client \
         namespace). Medians over interleaved rounds; the machine is shared, so CPU figures are \
         noisy.\n\n{table}",
        opts.rounds,
        opts.seconds,
        opts.seconds * FLOOD_FACTOR
    );
    let file = out_dir.join("hostile.md");
    std::fs::write(&file, &report)?;
    println!("{report}");
    eprintln!("xtask: report written to {}", file.display());
    Ok(())
}
