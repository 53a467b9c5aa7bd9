//! `datapath-bench`: the datapath section of `cargo xtask bench` (run as root, from xtask).
//!
//! `datapath-bench costs` measures per-packet program costs through BPF_PROG_TEST_RUN;
//! `datapath-bench throughput` compares forwarding peers in a veth topology. Each prints a
//! Markdown table and writes JSON with the raw rounds.

mod costs;

use anyhow::Result;

fn main() -> Result<()> {
    router_tests::require_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("costs");
    match what {
        "costs" => {
            let costs = costs::measure(200_000, 7, 4000)?;
            println!("| path | program | median ns | empty ns | program cost ns |");
            println!("|---|---|---:|---:|---:|");
            for c in &costs {
                println!(
                    "| {} | {} | {:.0} | {:.0} | {:.0} |",
                    c.path, c.program, c.median_ns, c.empty_ns, c.cost_ns
                );
            }
            Ok(())
        }
        other => anyhow::bail!("unknown section {other:?}: expected costs or throughput"),
    }
}
