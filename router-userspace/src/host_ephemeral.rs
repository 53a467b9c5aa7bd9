//! The router host's ephemeral port range (`net.ipv4.ip_local_port_range`): the source ports
//! its own stack picks for outgoing connections, nginx's and health checks' to tasks among
//! them. The datapath keeps clients' tuples toward tasks out of it and the configuration
//! refuses NAT source ports inside it, so both read it here. The sysctl is per network
//! namespace: it is read in the namespace of the calling thread.

use std::path::{Path, PathBuf};

/// The sysctl, as an operator would set it.
pub const SYSCTL: &str = "net.ipv4.ip_local_port_range";

/// Where the sysctl is read.
pub const PROC_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// An inclusive port range, low end first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: (u16, u16)) -> bool {
        self.first <= other.1 && other.0 <= self.last
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostEphemeralError {
    #[error("reading {SYSCTL} from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {SYSCTL} {text:?}: expected two ports, low first")]
    Parse { text: String },
}

/// The range the host's stack picks ephemeral ports from now.
pub fn read() -> Result<PortRange, HostEphemeralError> {
    read_from(Path::new(PROC_PATH))
}

/// [`read`] from `path` (tests give a file of their own).
pub fn read_from(path: &Path) -> Result<PortRange, HostEphemeralError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostEphemeralError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// The sysctl's text: two ports separated by whitespace (`32768\t60999\n`). Linux accepts a
/// range whose ends are equal; it refuses one whose low end is above the high end.
pub fn parse(text: &str) -> Result<PortRange, HostEphemeralError> {
    let refused = || HostEphemeralError::Parse {
        text: text.trim().to_string(),
    };
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>());
    match (ports.next(), ports.next(), ports.next()) {
        (Some(Ok(first)), Some(Ok(last)), None) if first >= 1 && first <= last => {
            Ok(PortRange { first, last })
        }
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sysctl_text() {
        assert_eq!(
            parse("32768\t60999\n").unwrap(),
            PortRange {
                first: 32768,
                last: 60999
            }
        );
        assert_eq!(parse(" 1024 1024 ").unwrap().to_string(), "1024-1024");
        for bad in [
            "",
            "32768",
            "60999 32768",
            "0 100",
            "1 70000",
            "1 2 3",
            "a b",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(SYSCTL), "{bad:?}: {e}");
        }
    }

    #[test]
    fn overlap_is_any_shared_port() {
        let eph = PortRange {
            first: 32768,
            last: 60999,
        };
        assert!(eph.overlaps((60999, 65535)));
        assert!(eph.overlaps((1024, 32768)));
        assert!(eph.overlaps((40000, 40010)));
        assert!(!eph.overlaps((61000, 65535)));
        assert!(!eph.overlaps((1024, 32767)));
    }

    #[test]
    fn reads_this_namespace_and_names_a_missing_file() {
        // Every Linux network namespace has the sysctl.
        let range = read().expect("the host's range");
        assert!(range.first <= range.last);
        let e = read_from(Path::new("/nonexistent/ip_local_port_range")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }
}
