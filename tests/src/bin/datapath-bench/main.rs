//! `datapath-bench`: the datapath section of `cargo xtask bench` (run as root, from xtask).
//!
//! `datapath-bench costs` measures per-packet program costs through BPF_PROG_TEST_RUN;
//! `datapath-bench throughput` compares forwarding peers in a veth topology;
//! `datapath-bench observability` measures the datapath with and without `/metrics` scraped
//! every second; `datapath-bench hostile` floods a routed port with spoofed SYNs, peers side by
//! side; `datapath-bench churn` has many clients churn short connections to one task. Each prints a Markdown table and writes JSON with the raw rounds.

mod churn;
mod churn_report;
mod costs;
mod hostile;
mod hostile_report;
mod throughput;

use anyhow::{Context, Result};

/// The number after `flag`, if given.
fn arg(args: &[String], flag: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<()> {
    router_tests::require_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("costs");
    match what {
        "costs" => {
            let costs = costs::measure(200_000, 7, 4000)?;
            let target = |path: &str, program: &str| match (program, path) {
                ("xdp", p) if p.starts_with("not for") => "≤ 15",
                ("xdp", p) if p.starts_with("established") => "≤ 67",
                ("tc", p) if p.starts_with("established") => "≤ 150",
                _ => "",
            };
            println!(
                "| path | program | median ns/run | empty program ns/run | program cost ns | target |"
            );
            println!("|---|---|---:|---:|---:|---|");
            for c in &costs {
                println!(
                    "| {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                    c.path,
                    c.program,
                    c.median_ns,
                    c.empty_ns,
                    c.cost_ns,
                    target(c.path, c.program)
                );
            }
            let dir = throughput::output_path();
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("datapath-costs.json"),
                serde_json::to_string_pretty(&costs)?,
            )?;
            Ok(())
        }
        "throughput" => {
            let rounds = arg(&args, "--rounds").unwrap_or(3);
            let seconds = arg(&args, "--seconds").unwrap_or(5);
            let tx_off_group = !args.iter().any(|a| a == "--no-tx-off");
            let only = match args.iter().position(|a| a == "--peers") {
                Some(i) => Some(throughput::Peer::parse_list(
                    args.get(i + 1)
                        .context("--peers needs a comma-separated list")?,
                )?),
                None => None,
            };
            let (results, sweeps) = throughput::run(throughput::Options {
                rounds: rounds as usize,
                seconds,
                tx_off_group,
                only,
            })?;
            let dir = throughput::output_path();
            std::fs::create_dir_all(&dir)?;
            let raw: Vec<_> = results
                .iter()
                .map(|(peer, s)| serde_json::json!({"peer": peer.name(), "rounds": s}))
                .collect();
            let file = dir.join("datapath-throughput.json");
            std::fs::write(&file, serde_json::to_string_pretty(&raw)?)?;
            println!("{}", throughput::table(&results));
            println!("Targets:\n\n{}", throughput::targets(&results));
            println!("Raw rounds:\n\n{}", throughput::raw_table(&results));
            println!("{}\n", throughput::sweep_summary(&sweeps));
            eprintln!("raw rounds: {}", file.display());
            Ok(())
        }
        "observability" => {
            let rounds = arg(&args, "--rounds").unwrap_or(3);
            let seconds = arg(&args, "--seconds").unwrap_or(5);
            let samples = throughput::observability(throughput::Options {
                rounds: rounds as usize,
                seconds,
                tx_off_group: false,
                only: None,
            })?;
            let dir = throughput::output_path();
            std::fs::create_dir_all(&dir)?;
            let file = dir.join("observability.json");
            std::fs::write(&file, serde_json::to_string_pretty(&samples)?)?;
            println!("{}", throughput::observability_table(&samples));
            eprintln!("raw rounds: {}", file.display());
            Ok(())
        }
        "hostile" => hostile::section(&args),
        "churn" => churn::section(&args),
        other => {
            anyhow::bail!(
                "unknown section {other:?}: expected costs, throughput, observability, hostile or churn"
            )
        }
    }
}
