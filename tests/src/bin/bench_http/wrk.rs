//! `wrk` (Debian package) as the load generator: one URL, or two at the same moment, and what
//! it reports (requests/s, p50/p99 latency, requests made).

use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
}

/// How `wrk` loads one URL.
#[derive(Clone, Copy)]
pub struct Wrk<'a> {
    pub url: &'a str,
    pub threads: u32,
    pub connections: u32,
    /// `Name: value` headers sent with every request.
    pub headers: &'a [String],
}

impl<'a> Wrk<'a> {
    /// One thread, no extra header: the generated vs hand-written comparison.
    pub fn plain(url: &'a str, connections: u32) -> Wrk<'a> {
        Wrk {
            url,
            threads: 1,
            connections,
            headers: &[],
        }
    }

    fn command(&self, seconds: u64) -> Command {
        let mut cmd = Command::new("wrk");
        cmd.args([
            &format!("-t{}", self.threads),
            &format!("-c{}", self.connections),
            &format!("-d{seconds}s"),
            "--latency",
        ]);
        for h in self.headers {
            cmd.arg("-H").arg(h);
        }
        cmd.arg(self.url);
        cmd
    }

    /// One run of `seconds`.
    pub fn run(&self, seconds: u64) -> Result<Load> {
        let out = self
            .command(seconds)
            .output()
            .context("run wrk (Debian package wrk)")?;
        parse_wrk(self.url, out)
    }
}

/// `wrk` against both URLs at the same moment: whatever else loads the machine loads both
/// alike, and the two proxies share the CPUs, so the one costing more per request serves fewer.
pub fn pair(a: Wrk<'_>, b: Wrk<'_>, seconds: u64) -> Result<(Load, Load)> {
    let ca = a
        .command(seconds)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let cb = b
        .command(seconds)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let oa = ca.wait_with_output().context("wait for wrk")?;
    let ob = cb.wait_with_output().context("wait for wrk")?;
    Ok((parse_wrk(a.url, oa)?, parse_wrk(b.url, ob)?))
}

fn parse_wrk(url: &str, out: std::process::Output) -> Result<Load> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors ({line}) against {url}:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(str::trim)
            .and_then(parse_duration_ms)
            .with_context(|| format!("no {p} latency in wrk output:\n{text}"))
    };
    // "  123456 requests in 3.00s, 12.34MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    Ok(Load {
        rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        requests,
    })
}

/// wrk's `1.23ms`, `456.00us`, `1.2s`.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let (num, factor) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|n| n * factor)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
