//! The nginx TCP datapath (`ROUTER_DATAPATH=nginx`): TCP routes become nginx `stream` servers
//! on the same managed nginx as the HTTP routes. Connections are forwarded, routes follow the
//! wanted set, an established connection keeps its backend when its route goes, and a port
//! someone else holds fails only its own route.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use router_tests::nginx::{Rig, in_netns};
use router_tests::wait::until;
use router_userspace::endpoint::EndpointId;
use router_userspace::nginx::{NginxStreamForwarder, Slot};
use router_userspace::routes::{RouteOwner, TcpForwarder, TcpRoute};

const WAIT: Duration = Duration::from_secs(15);

fn tcp_route(port: u16, upstream: SocketAddrV4) -> TcpRoute {
    TcpRoute {
        port,
        upstream,
        owner: RouteOwner::new(
            EndpointId::new("task\"; } server { listen 1; } #", "}"),
            "ssh $remote_addr ;\n",
        ),
        preserve_client_ip: None,
        allow: router_userspace::client_allow::ClientAllow::Any,
    }
}

fn roundtrip(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(msg)?;
    let mut back = vec![0; msg.len()];
    conn.read_exact(&mut back)?;
    Ok(back)
}

/// Connects to `port` on the namespace's loopback and echoes one message, if it can.
fn echo_via(port: u16) -> Option<Vec<u8>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    roundtrip(&mut conn, b"ping through nginx stream").ok()
}

#[test]
fn stream_fallback_forwards_tcp_and_follows_the_wanted_set() {
    in_netns("thta", || {
        let rig = Rig::managed(None).expect("rig");
        let echo = rig.servers.tcp_echo().expect("echo server");
        let mut fwd = NginxStreamForwarder::new(rig.nginx.clone()).expect("stream module");

        // A port someone else holds fails its route alone.
        let squatter = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("squat a port");
        let taken = squatter.local_addr().unwrap().port();
        let wanted: BTreeMap<u16, TcpRoute> = [
            (10022, tcp_route(10022, echo)),
            (10023, tcp_route(10023, echo)),
            (taken, tcp_route(taken, echo)),
        ]
        .into();
        let report = fwd.apply(&wanted).expect("apply");
        assert_eq!(report.added, 2);
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].1.contains("in use"));
        let text = std::fs::read_to_string(rig.nginx.path(Slot::Stream)).unwrap();
        assert!(!text.contains("server { listen 1;") && !text.contains("$remote_addr"));

        let expected = b"ping through nginx stream".to_vec();
        assert_eq!(
            until("port 10022 forwards", WAIT, || echo_via(10022)),
            expected
        );
        assert_eq!(echo_via(10023), Some(expected.clone()));

        // An established connection keeps its backend when its route is removed; new
        // connections are refused.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 10022));
        let mut held = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut held, b"before").unwrap(), b"before");
        let only_23: BTreeMap<u16, TcpRoute> = [(10023, tcp_route(10023, echo))].into();
        let report = fwd.apply(&only_23).expect("remove 10022");
        assert_eq!(report.removed, 1);
        until("port 10022 closed to new connections", WAIT, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .is_err()
                .then_some(())
        });
        assert_eq!(roundtrip(&mut held, b"after").unwrap(), b"after");
        drop(held);
        assert_eq!(echo_via(10023), Some(expected.clone()));

        // The same set again reloads nothing; HTTP routes on the same nginx are unaffected.
        let reloads = rig.nginx.status().reloads;
        assert!(fwd.apply(&only_23).expect("same set").is_noop());
        assert_eq!(rig.nginx.status().reloads, reloads);
        assert_eq!(fwd.programmed().len(), 1);
        drop(squatter);
    });
}
