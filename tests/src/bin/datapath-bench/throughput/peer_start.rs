//! Starting each peer in the router namespace for its turn (nftables rules, nginx, haproxy,
//! the datapath with its sweeper), and tearing it down after.

use super::bench::Bench;
use super::host::{Proc, ns_cmd, wait_listening};
use super::peers::Peer;
use super::samples::Sweep;
use anyhow::{Context, Result};
use router_userspace::config::{DatapathConfig, DatapathKind};
use router_userspace::datapath::sweeper::{DEFAULT_INTERVAL, Sweeper};
use router_userspace::datapath::{AttachMode, DEFAULT_NAT_SOURCE_PORTS, Datapath, SharedDatapath};
use router_userspace::endpoint::EndpointId;
use router_userspace::routes::{RouteOwner, TcpRoute};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A running peer: whatever must stay alive, torn down on drop.
pub(super) enum Running {
    Nothing,
    /// An nftables table in the router namespace (named by the namespace).
    Nft(String),
    Proc(#[allow(dead_code)] Proc),
    Datapath(
        #[allow(dead_code)] Sweeper,
        #[allow(dead_code)] SharedDatapath,
    ),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Nft(ns) = self {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", ns, "nft", "delete", "table", "ip", "trbench",
                ])
                .status();
        }
    }
}

impl Bench {
    pub(super) fn start(&self, peer: Peer) -> Result<Running> {
        match peer {
            Peer::Ceiling | Peer::CeilingTxOff => Ok(Running::Nothing),
            Peer::Nftables | Peer::NftablesTxOff => self.start_nftables(peer),
            Peer::NginxStream | Peer::NginxStreamReuseport => self.start_nginx(peer),
            Peer::Haproxy => self.start_haproxy(peer),
            Peer::Datapath | Peer::DatapathXdpTxOff => self.start_datapath(peer),
        }
    }

    fn start_nftables(&self, peer: Peer) -> Result<Running> {
        let (r, b) = (self.router(), self.backend());
        let (bulk_port, rr_port, iperf_port, backend_rr_port) = peer.ports();
        router_tests::nft_nat::dnat_masquerade(
            &self.t.router,
            self.dir.path(),
            "trbench",
            r,
            &[(bulk_port, iperf_port), (rr_port, backend_rr_port)],
            b,
        )?;
        Ok(Running::Nft(self.t.router.name.clone()))
    }

    fn start_nginx(&self, peer: Peer) -> Result<Running> {
        let (r, b) = (self.router(), self.backend());
        let (bulk_port, rr_port, iperf_port, backend_rr_port) = peer.ports();
        let reuseport = if peer == Peer::NginxStreamReuseport {
            " reuseport"
        } else {
            ""
        };
        let dir = self.dir.path().join("nginx");
        std::fs::create_dir_all(&dir)?;
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off; master_process on; worker_processes 2;\n\
             pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             stream {{\n\
             server {{ listen {r}:{bulk_port}{reuseport}; proxy_pass {b}:{iperf_port}; }}\n\
             server {{ listen {r}:{rr_port}{reuseport}; proxy_pass {b}:{backend_rr_port}; }}\n\
             }}\n",
            d = dir.display()
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf)?;
        let mut cmd = ns_cmd(&self.t.router, "nginx");
        cmd.args(["-e", &dir.join("error.log").display().to_string()])
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(&file);
        self.start_proxy(cmd, "nginx", [rr_port, bulk_port])
    }

    fn start_haproxy(&self, peer: Peer) -> Result<Running> {
        let (r, b) = (self.router(), self.backend());
        let (bulk_port, rr_port, iperf_port, backend_rr_port) = peer.ports();
        let conf = format!(
            "global\n  maxconn 8000\n  nbthread 2\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             frontend bulk\n  bind {r}:{bulk_port}\n  default_backend bulk\n\
             backend bulk\n  server s {b}:{iperf_port}\n\
             frontend rr\n  bind {r}:{rr_port}\n  default_backend rr\n\
             backend rr\n  server s {b}:{backend_rr_port}\n"
        );
        let file = self.dir.path().join("haproxy.cfg");
        std::fs::write(&file, conf)?;
        let mut cmd = ns_cmd(&self.t.router, "haproxy");
        cmd.args(["-db", "-f"]).arg(&file);
        self.start_proxy(cmd, "haproxy", [rr_port, bulk_port])
    }

    /// Starts a userspace proxy (`what`) and waits until it listens on `ports`.
    fn start_proxy(&self, mut cmd: Command, what: &str, ports: [u16; 2]) -> Result<Running> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {what}"))?;
        let proc = Proc(child);
        for port in ports {
            wait_listening(&self.t.router, port, what);
        }
        Ok(Running::Proc(proc))
    }

    fn start_datapath(&self, peer: Peer) -> Result<Running> {
        let (r, b) = (self.router(), self.backend());
        let (bulk_port, rr_port, iperf_port, backend_rr_port) = peer.ports();
        let mode = if peer == Peer::Datapath {
            AttachMode::Auto
        } else {
            AttachMode::Xdp
        };
        let cfg = DatapathConfig {
            kind: DatapathKind::Ebpf(mode),
            interfaces: vec![
                (self.t.router_client.dev.clone(), None),
                (self.t.router_backend.dev.clone(), None),
            ],
            bpffs: self.dir.path().to_path_buf(),
            max_connections: 262_144,
            conntrack_pressure: router_userspace::datapath::Pressure::default(),
            router_addresses: vec![r],
            nat_source_ports: DEFAULT_NAT_SOURCE_PORTS,
        };
        let mut dp = self
            .t
            .router
            .enter(move || Datapath::open(&cfg))?
            .context("open the datapath")?;
        let owner = RouteOwner::new(EndpointId::new("bench", ""), "bench");
        let routes: BTreeMap<u16, TcpRoute> = [(bulk_port, iperf_port), (rr_port, backend_rr_port)]
            .into_iter()
            .map(|(port, up)| {
                (
                    port,
                    TcpRoute {
                        port,
                        upstream: SocketAddrV4::new(b, up),
                        owner: owner.clone(),
                        preserve_client_ip: None,
                        allow: router_userspace::client_allow::ClientAllow::Any,
                    },
                )
            })
            .collect();
        dp.apply_routes(&routes)?;
        let dp = SharedDatapath::new(dp);
        let sweeps = Arc::clone(&self.sweeps);
        let sweeper = Sweeper::spawn(dp.clone(), DEFAULT_INTERVAL, move |r| {
            if let Ok(mut s) = sweeps.lock() {
                s.push(Sweep {
                    connections: r.live,
                    reserved: r.tombstones,
                    took_ms: r.took.as_secs_f64() * 1e3,
                });
            }
        })?;
        Ok(Running::Datapath(sweeper, dp))
    }
}
