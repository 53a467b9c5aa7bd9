//! What the kernel has attached to an interface, as an operator would check it: XDP through
//! bpftool, TCX links through the kernel's program query (Debian 12's bpftool predates TCX).

use crate::netns::Netns;
use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::Value;

/// Names of the programs attached to `dev` in `ns` at the XDP, TCX ingress and TCX egress hooks.
pub fn program_names(ns: &Netns, dev: &str) -> Result<Vec<String>> {
    let mut names = xdp_program_names(ns, dev)?;
    let dev_owned = dev.to_string();
    let tcx = ns.enter(move || -> Result<Vec<String>> {
        let mut names = Vec::new();
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&dev_owned, hook)
                .with_context(|| format!("query TCX programs on {dev_owned}"))?;
            names.extend(
                progs
                    .iter()
                    .filter_map(|p| p.name_as_str().map(str::to_string)),
            );
        }
        Ok(names)
    })??;
    names.extend(tcx);
    Ok(names)
}

fn xdp_program_names(ns: &Netns, dev: &str) -> Result<Vec<String>> {
    let out = ns.run("bpftool", &["-j", "net", "show", "dev", dev])?;
    let json: Value = serde_json::from_slice(&out.stdout).context("bpftool net show JSON")?;
    let mut ids = Vec::new();
    for entry in json.as_array().into_iter().flatten() {
        for xdp in entry
            .get("xdp")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ids.extend(xdp.get("id").and_then(Value::as_u64));
        }
    }
    let mut names = Vec::new();
    for id in ids {
        let out = ns.run("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?;
        let prog: Value = serde_json::from_slice(&out.stdout).context("bpftool prog show JSON")?;
        names.extend(prog.get("name").and_then(Value::as_str).map(str::to_string));
    }
    Ok(names)
}
