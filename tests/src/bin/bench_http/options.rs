//! The benchmark's command line.

use anyhow::{Context, Result, bail};

pub struct Options {
    pub seconds: u64,
    pub rounds: u32,
    pub connections: u32,
    pub routes: usize,
    pub auth_only: bool,
    pub json: Option<String>,
}

pub fn options() -> Result<Options> {
    let mut o = Options {
        seconds: 3,
        rounds: 9,
        connections: 32,
        routes: 100,
        auth_only: false,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--connections" => o.connections = value()?.parse()?,
            "--routes" => o.routes = value()?.parse()?,
            "--auth-only" => o.auth_only = true,
            "--json" => o.json = Some(value()?),
            other => bail!(
                "unknown argument {other}: --seconds N --rounds N --connections N --routes N --auth-only --json FILE"
            ),
        }
    }
    Ok(o)
}
