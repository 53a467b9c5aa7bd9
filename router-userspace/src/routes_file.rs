//! Static routes from a TOML file (`--routes-file`), for use without ClearML and for
//! benchmarks. Validated like task input; reloaded when its content changes; a file that no
//! longer validates keeps the previous routes in force.
//!
//! ```toml
//! [[tcp]]
//! port = 30001
//! upstream = "10.0.0.5:8888"
//! name = "ssh-gw"          # optional, default tcp-<port>
//! preserve_client_ip = "auto"  # optional: off, auto or on; default ROUTER_PRESERVE_CLIENT_IP
//! allow = "10.8.0.0/16"    # optional: the clients that may connect (narrows
//!                          # ROUTER_TCP_CLIENT_ALLOW; absent = that list)
//!
//! [[http]]
//! name = "grafana"         # the route key: /service/grafana/
//! upstream = "10.0.0.6:3000"
//! mode = "subdomain"       # optional: path (default) or subdomain
//! ```

use crate::client_allow::ClientAllow;
use crate::endpoint::EndpointId;
use crate::routes::{HttpMode, HttpRoute, PreserveClientIp, RouteOwner, RouteSet, TcpRoute};
use crate::validate::{self, UpstreamPolicy};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    #[error("reading the routes file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the routes file {} is not valid TOML of the expected shape", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("the routes file {}: {entry}: {reason}", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    tcp: Vec<TcpEntry>,
    #[serde(default)]
    http: Vec<HttpEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpEntry {
    port: i64,
    upstream: String,
    name: Option<String>,
    preserve_client_ip: Option<String>,
    allow: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpEntry {
    name: String,
    upstream: String,
    mode: Option<String>,
}

/// What the rest of the configuration allows of the file's routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRules {
    /// `ROUTER_DOMAIN` is set, so `mode = "subdomain"` can be served.
    pub domain_set: bool,
    /// `AUTH_ENABLED=true` without `AUTH_BASE64_JWKS_KEY`: no request to an HTTP route could be
    /// authenticated, so the file may hold TCP routes only (a TCP-only router needs no key).
    pub auth_key_missing: bool,
    /// `ROUTER_TCP_CLIENT_ALLOW`: a TCP route's `allow` may only narrow it.
    pub client_allow: ClientAllow,
}

/// `a.b.c.d:port`, checked by `policy`.
fn upstream(policy: &UpstreamPolicy, raw: &str) -> Result<std::net::SocketAddrV4, String> {
    let (addr, port) = raw
        .rsplit_once(':')
        .ok_or_else(|| format!("upstream {raw:?} is not address:port"))?;
    policy.upstream(addr, port)
}

/// The effective client allow-list of a TCP entry: the operator's list narrowed by the entry's
/// `allow`, which may not admit anyone the operator's list does not.
fn tcp_allow(rules: &FileRules, allow: Option<&str>) -> Result<ClientAllow, String> {
    let Some(text) = allow else {
        return Ok(rules.client_allow.clone());
    };
    let own = ClientAllow::parse(text).map_err(|reason| format!("allow: {reason}"))?;
    rules.client_allow.narrow(&own).map_err(|outside| {
        format!(
            "allow: {outside} is outside ROUTER_TCP_CLIENT_ALLOW ({}): a route may only narrow it",
            rules.client_allow
        )
    })
}

/// Parses and validates the file's text.
pub fn parse(
    path: &Path,
    text: &str,
    policy: &UpstreamPolicy,
    rules: &FileRules,
) -> Result<RouteSet, RoutesFileError> {
    let shape: FileShape = toml::from_str(text).map_err(|e| RoutesFileError::Syntax {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let entry_err = |entry: String, reason: String| RoutesFileError::Entry {
        path: path.to_path_buf(),
        entry,
        reason,
    };
    let mut set = RouteSet::default();
    for (i, e) in shape.tcp.into_iter().enumerate() {
        let entry = format!("[[tcp]] #{}", i + 1);
        let port = u16::try_from(e.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| entry_err(entry.clone(), format!("port {} is not 1-65535", e.port)))?;
        let name = e.name.unwrap_or_else(|| format!("tcp-{port}"));
        validate::task_id(&name).map_err(|r| entry_err(entry.clone(), r))?;
        let upstream = upstream(policy, &e.upstream).map_err(|r| entry_err(entry.clone(), r))?;
        let preserve_client_ip = match e.preserve_client_ip.as_deref() {
            None => None,
            Some(raw) => Some(PreserveClientIp::parse(raw).ok_or_else(|| {
                entry_err(
                    entry.clone(),
                    format!("preserve_client_ip {raw:?} is not off, auto or on"),
                )
            })?),
        };
        let allow =
            tcp_allow(rules, e.allow.as_deref()).map_err(|r| entry_err(entry.clone(), r))?;
        if set.tcp.contains_key(&port) {
            return Err(entry_err(entry, format!("port {port} is listed twice")));
        }
        set.tcp.insert(
            port,
            TcpRoute {
                port,
                upstream,
                owner: owner(&name),
                preserve_client_ip,
                allow,
            },
        );
    }
    for (i, e) in shape.http.into_iter().enumerate() {
        let entry = format!("[[http]] #{} ({:?})", i + 1, validate::truncate(&e.name));
        if rules.auth_key_missing {
            return Err(entry_err(
                entry,
                "AUTH_ENABLED=true and AUTH_BASE64_JWKS_KEY is unset, so HTTP routes cannot be \
                 authenticated: set the key or AUTH_ENABLED=false"
                    .into(),
            ));
        }
        validate::task_id(&e.name).map_err(|r| entry_err(entry.clone(), r))?;
        let upstream = upstream(policy, &e.upstream).map_err(|r| entry_err(entry.clone(), r))?;
        let mode = match e.mode.as_deref() {
            None | Some("path") => HttpMode::Path,
            Some("subdomain") if rules.domain_set => HttpMode::Subdomain,
            Some("subdomain") => {
                return Err(entry_err(
                    entry,
                    "mode subdomain needs ROUTER_DOMAIN".into(),
                ));
            }
            Some(other) => {
                return Err(entry_err(
                    entry,
                    format!("mode {other:?} is neither path nor subdomain"),
                ));
            }
        };
        if set.http.contains_key(&e.name) {
            return Err(entry_err(entry, "the name is listed twice".into()));
        }
        set.http.insert(
            e.name.clone(),
            HttpRoute {
                key: e.name.clone(),
                upstream,
                mode,
                owner: owner(&e.name),
                company: String::new(),
            },
        );
    }
    Ok(set)
}

fn owner(name: &str) -> RouteOwner {
    RouteOwner::new(
        EndpointId::new(format!("file:{name}"), String::new()),
        name.to_string(),
    )
}

/// The file, its last good routes, and the content they came from.
#[derive(Debug)]
pub struct RoutesFile {
    path: PathBuf,
    rules: FileRules,
    content: Option<String>,
    routes: RouteSet,
    /// The last reload's error; the routes of the last good content stay in force.
    pub error: Option<String>,
}

impl RoutesFile {
    /// Loads the file; any problem is an error (start-up never half-succeeds).
    pub fn load(
        path: &Path,
        policy: &UpstreamPolicy,
        rules: FileRules,
    ) -> Result<Self, RoutesFileError> {
        let text = read(path)?;
        let routes = parse(path, &text, policy, &rules)?;
        Ok(RoutesFile {
            path: path.to_path_buf(),
            rules,
            content: Some(text),
            routes,
            error: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn routes(&self) -> &RouteSet {
        &self.routes
    }

    /// Re-reads the file; returns `Ok(true)` when new routes were taken. On an error the previous
    /// routes stay (and the error is kept in [`RoutesFile::error`]); the same bad content is not
    /// reported twice.
    pub fn reload(&mut self, policy: &UpstreamPolicy) -> Result<bool, RoutesFileError> {
        let text = match read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let first = self.error.as_deref() != Some(&e.to_string());
                self.error = Some(e.to_string());
                self.content = None;
                return if first { Err(e) } else { Ok(false) };
            }
        };
        if self.content.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        self.content = Some(text.clone());
        match parse(&self.path, &text, policy, &self.rules) {
            Ok(routes) => {
                self.error = None;
                let changed = routes != self.routes;
                self.routes = routes;
                Ok(changed)
            }
            Err(e) => {
                self.error = Some(crate::error::error_chain(&e));
                Err(e)
            }
        }
    }
}

fn read(path: &Path) -> Result<String, RoutesFileError> {
    std::fs::read_to_string(path).map_err(|source| RoutesFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UpstreamPolicy {
        UpstreamPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], [])
    }

    fn p(text: &str) -> Result<RouteSet, String> {
        parse(
            Path::new("routes.toml"),
            text,
            &policy(),
            &FileRules::default(),
        )
        .map_err(|e| crate::error::error_chain(&e))
    }

    #[test]
    fn without_a_jwt_key_tcp_routes_load_and_http_routes_are_refused_naming_the_fix() {
        let rules = FileRules {
            domain_set: false,
            auth_key_missing: true,
            ..FileRules::default()
        };
        let tcp = "[[tcp]]\nport = 1000\nupstream = \"10.0.0.5:1\"\n";
        let set = parse(Path::new("routes.toml"), tcp, &policy(), &rules).unwrap();
        assert_eq!(set.tcp.len(), 1);
        let both = format!("{tcp}[[http]]\nname = \"a\"\nupstream = \"10.0.0.5:2\"\n");
        let e = parse(Path::new("routes.toml"), &both, &policy(), &rules).unwrap_err();
        let e = crate::error::error_chain(&e);
        assert!(
            e.contains("[[http]] #1") && e.contains("AUTH_BASE64_JWKS_KEY"),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_routes_allow_narrows_the_operators_list_and_never_widens_it() {
        let rules = FileRules {
            client_allow: ClientAllow::parse("10.0.0.0/8").unwrap(),
            ..FileRules::default()
        };
        let parse_with = |allow: &str| {
            let text = format!("[[tcp]]\nport = 1000\nupstream = \"10.0.0.5:1\"\n{allow}");
            parse(Path::new("routes.toml"), &text, &policy(), &rules)
                .map(|set| set.tcp[&1000].allow.to_string())
                .map_err(|e| crate::error::error_chain(&e))
        };
        assert_eq!(parse_with("").unwrap(), "10.0.0.0/8");
        assert_eq!(
            parse_with("allow = \"10.8.0.0/16 10.9.0.1\"").unwrap(),
            "10.8.0.0/16,10.9.0.1/32"
        );
        let e = parse_with("allow = \"10.8.0.0/16,192.168.0.0/16\"").unwrap_err();
        assert!(
            e.contains("[[tcp]] #1")
                && e.contains("192.168.0.0/16 is outside ROUTER_TCP_CLIENT_ALLOW"),
            "{e}"
        );
        let e = parse_with("allow = \"10.8.0.0/33\"").unwrap_err();
        assert!(
            e.contains("[[tcp]] #1: allow: \"10.8.0.0/33\" is not an IPv4 CIDR"),
            "{e}"
        );
    }

    #[test]
    fn parses_tcp_and_http_routes() {
        let set = p(r#"
            [[tcp]]
            port = 30001
            upstream = "10.0.0.5:8888"
            [[tcp]]
            port = 22
            upstream = "10.0.0.6:22"
            name = "ssh"
            preserve_client_ip = "Auto"
            [[http]]
            name = "grafana"
            upstream = "10.0.0.6:3000"
        "#)
        .unwrap();
        assert_eq!(set.tcp[&30001].upstream, "10.0.0.5:8888".parse().unwrap());
        assert_eq!(set.tcp[&30001].owner.id.task_id, "file:tcp-30001");
        assert_eq!(set.tcp[&22].owner.task_name, "ssh");
        assert_eq!(set.tcp[&30001].preserve_client_ip, None);
        assert_eq!(
            set.tcp[&22].preserve_client_ip,
            Some(PreserveClientIp::Auto)
        );
        assert_eq!(set.http["grafana"].mode, HttpMode::Path);
        assert_eq!(set.http["grafana"].owner.id.task_id, "file:grafana");
        assert_eq!(p("").unwrap(), RouteSet::default());
    }

    #[test]
    fn refuses_what_tasks_may_not_do_either() {
        for (text, why) in [
            (
                "[[tcp]]\nport = 0\nupstream = \"10.0.0.5:1\"",
                "not 1-65535",
            ),
            (
                "[[tcp]]\nport = 70000\nupstream = \"10.0.0.5:1\"",
                "not 1-65535",
            ),
            ("[[tcp]]\nport = 1\nupstream = \"127.0.0.1:1\"", "loopback"),
            ("[[tcp]]\nport = 1\nupstream = \"10.0.0.5\"", "address:port"),
            ("[[tcp]]\nport = 1\nupstream = \"10.0.0.5:0\"", "not a port"),
            ("[[tcp]]\nport = 1\nupstream = \"8.8.8.8:53\"", "outside"),
            (
                "[[tcp]]\nport = 1\nupstream = \"10.0.0.5:1\"\npreserve_client_ip = \"yes\"",
                "not off, auto or on",
            ),
            (
                "[[tcp]]\nport = 1\nupstream = \"10.0.0.5:1\"\n[[tcp]]\nport = 1\nupstream = \"10.0.0.5:2\"",
                "twice",
            ),
            (
                "[[http]]\nname = \"a;b\"\nupstream = \"10.0.0.5:1\"",
                "A-Z a-z 0-9",
            ),
            (
                "[[http]]\nname = \"a\"\nupstream = \"10.0.0.5:1\"\nmode = \"subdomain\"",
                "ROUTER_DOMAIN",
            ),
            (
                "[[http]]\nname = \"a\"\nupstream = \"10.0.0.5:1\"\nmode = \"x\"",
                "neither",
            ),
            (
                "[[tcp]]\nport = 1\nupstream = \"10.0.0.5:1\"\nextra = 1",
                "unknown field",
            ),
            ("[[tcp]", "TOML"),
        ] {
            let e = p(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn reload_takes_changes_and_keeps_the_last_good_routes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, "[[tcp]]\nport = 1000\nupstream = \"10.0.0.5:1\"\n").unwrap();
        let mut f = RoutesFile::load(&path, &policy(), FileRules::default()).unwrap();
        assert_eq!(f.routes().tcp.len(), 1);
        assert!(!f.reload(&policy()).unwrap(), "unchanged content");
        std::fs::write(
            &path,
            "[[tcp]]\nport = 1000\nupstream = \"10.0.0.5:1\"\n[[tcp]]\nport = 1001\nupstream = \"10.0.0.5:2\"\n",
        )
        .unwrap();
        assert!(f.reload(&policy()).unwrap());
        assert_eq!(f.routes().tcp.len(), 2);
        std::fs::write(&path, "[[tcp]]\nport = 1000\nupstream = \"127.0.0.1:1\"\n").unwrap();
        assert!(f.reload(&policy()).is_err());
        assert_eq!(
            f.routes().tcp.len(),
            2,
            "bad content keeps the previous routes"
        );
        assert!(f.error.as_deref().unwrap().contains("loopback"));
        assert!(
            !f.reload(&policy()).unwrap(),
            "the same bad content is reported once"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(f.reload(&policy()).is_err());
        assert_eq!(f.routes().tcp.len(), 2);
        std::fs::write(&path, "").unwrap();
        assert!(f.reload(&policy()).unwrap());
        assert!(f.routes().tcp.is_empty() && f.error.is_none());
    }

    #[test]
    fn load_refuses_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.toml");
        assert!(RoutesFile::load(&path, &policy(), FileRules::default()).is_err());
        std::fs::write(
            &path,
            "[[http]]\nname = \"../x\"\nupstream = \"10.0.0.5:1\"\n",
        )
        .unwrap();
        assert!(RoutesFile::load(&path, &policy(), FileRules::default()).is_err());
    }
}

#[cfg(test)]
mod fuzz;
