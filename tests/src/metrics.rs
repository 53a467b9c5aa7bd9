//! Reading the daemon's Prometheus `/metrics` in scenario tests.

use crate::netns::Netns;
use std::net::SocketAddr;

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// `GET /metrics` from the admin endpoint on `127.0.0.1:admin_port` inside `ns`.
pub fn scrape(ns: &Netns, admin_port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let response = crate::http_client::get_in(ns, addr, "/metrics", &[]).expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}
