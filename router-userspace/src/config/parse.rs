//! Parsers of variable values: each takes the trimmed text (the variable's default when it is
//! unset or empty) and returns the typed value, or what was wrong in words (`""` when the
//! variable's `expected` text says it all). The variable's name, value and origin are added by
//! the reader.

use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::datapath::options::{AttachMode, DatapathKind, NatSourcePorts, parse_attach_mode};
use crate::logging::LogFormat;
use crate::routes::{HttpMode, PreserveClientIp};

/// What a parser returns: the value, or the detail of what is wrong.
pub type Parsed<T> = Result<T, String>;

/// The value as it is.
pub fn text(s: &str) -> Parsed<String> {
    Ok(s.to_string())
}

/// `None` for an unset variable, else the value `parse` makes of it.
pub fn unless_empty<T>(s: &str, parse: impl Fn(&str) -> Parsed<T>) -> Parsed<Option<T>> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(s).map(Some)
    }
}

/// An empty value (`""`, `[]`) for an unset variable, else the value `parse` makes of it.
pub fn empty_or<T: Default>(s: &str, parse: impl Fn(&str) -> Parsed<T>) -> Parsed<T> {
    if s.is_empty() {
        Ok(T::default())
    } else {
        parse(s)
    }
}

pub fn boolean(s: &str) -> Parsed<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(String::new()),
    }
}

/// `SSL_VERIFY`: a boolean, or (as the SDK's `verify_certificate`, clearml
/// `backend_api/utils.py:174-178`) the path of a CA bundle to trust, with verification on; an
/// absolute one, since a daemon's working directory is nothing to rely on (and a typo of
/// `true` stays an error). Whether the bundle is there and holds certificates is checked when
/// the client is built.
pub fn tls_verify(s: &str) -> Parsed<(bool, Option<PathBuf>)> {
    match boolean(s) {
        Ok(verify) => Ok((verify, None)),
        Err(_) => absolute_path(s)
            .map(|path| (true, Some(path)))
            .map_err(|_| "neither a boolean nor an absolute path".into()),
    }
}

/// `2s`, `500ms`, `1m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Parsed<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}")),
    };
    let secs = number * scale;
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err("out of range".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration in `min..=max`.
pub fn duration_between(s: &str, min: Duration, max: Duration) -> Parsed<Duration> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!("between {min:?} and {max:?}"));
    }
    Ok(d)
}

/// A whole number in `range`.
pub fn number_in(s: &str, range: std::ops::RangeInclusive<u32>) -> Parsed<u32> {
    match s.parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(String::new()),
    }
}

pub fn port(s: &str) -> Parsed<u16> {
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(String::new()),
    }
}

/// `high,low`: percentages of the connection table, both 1-100, low below high (equal would
/// evict on every sweep at the watermark).
pub fn pressure(s: &str) -> Parsed<(u8, u8)> {
    let (high, low) = s
        .split_once(',')
        .ok_or_else(|| "two numbers separated by a comma".to_string())?;
    let percent = |v: &str| match v.trim().parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err(format!("{:?} is not a percentage 1-100", v.trim())),
    };
    let (high, low) = (percent(high)?, percent(low)?);
    if low >= high {
        return Err(format!("low {low} is not below high {high}"));
    }
    Ok((high, low))
}

/// `auto` (its router ports are filled in from the TCP range once that is read), or
/// `first-last`, both 1024-65535, at least 64 ports (the kernel probes a bounded number of
/// random ports; a tiny range would fail connections long before it is in use).
pub fn nat_ports(s: &str) -> Parsed<NatSourcePorts> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(NatSourcePorts::Auto { router_ports: None });
    }
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not `auto` and has no `-`"))?;
    let port = |p: &str| match p.trim().parse::<u32>() {
        Ok(n @ 1024..=65535) => Ok(n as u16),
        _ => Err(format!("{:?} is not a port 1024-65535", p.trim())),
    };
    let (first, last) = (port(a)?, port(b)?);
    if last < first || last - first < 63 {
        return Err(format!("{first}-{last} holds fewer than 64 ports"));
    }
    Ok(NatSourcePorts::Range(first, last))
}

/// Items separated by commas and/or whitespace.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
}

/// `LISTEN_QUEUE_NAME`: names separated by commas or spaces; `none` (any case) = none.
pub fn queue_names(s: &str) -> Parsed<Vec<String>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    Ok(split_list(s).map(str::to_string).collect())
}

pub fn cidrs(s: &str) -> Parsed<Vec<Ipv4Net>> {
    split_list(s)
        .map(|item| {
            item.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .or_else(|_| item.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| format!("{item:?} is not an IPv4 CIDR"))
        })
        .collect()
}

pub fn ipv4_addresses(s: &str) -> Parsed<Vec<Ipv4Addr>> {
    split_list(s)
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| format!("{a:?} is not IPv4"))
        })
        .collect()
}

/// `eth0` or `eth0:tc`.
pub fn parse_interface(s: &str) -> Parsed<(String, Option<AttachMode>)> {
    let (name, mode) = match s.split_once(':') {
        Some((name, mode)) => (
            name,
            Some(parse_attach_mode(mode).ok_or_else(|| {
                format!("unknown mode {mode:?} for {name}: expected auto, xdp, xdp-generic or tc")
            })?),
        ),
        None => (s, None),
    };
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ' ', '\0', ',', ':'])
        || name == "."
        || name == ".."
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok((name.to_string(), mode))
}

pub fn interfaces(s: &str) -> Parsed<Vec<(String, Option<AttachMode>)>> {
    split_list(s).map(parse_interface).collect()
}

pub fn preserve_client_ip(s: &str) -> Parsed<PreserveClientIp> {
    PreserveClientIp::parse(s).ok_or_else(String::new)
}

pub fn datapath(s: &str) -> Parsed<DatapathKind> {
    if s.eq_ignore_ascii_case("nginx") {
        return Ok(DatapathKind::Nginx);
    }
    parse_attach_mode(s)
        .map(DatapathKind::Ebpf)
        .ok_or_else(String::new)
}

/// A DNS name: labels of `[A-Za-z0-9-]`, not starting or ending with `-`, ≤ 253 bytes.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An IP address or a host name.
pub fn host(s: &str) -> Parsed<String> {
    if s.parse::<IpAddr>().is_ok() || is_host_name(s) {
        Ok(s.to_string())
    } else {
        Err(String::new())
    }
}

/// A DNS domain (not an address), lower-cased.
pub fn domain(s: &str) -> Parsed<String> {
    if is_host_name(s) && s.parse::<IpAddr>().is_err() {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(String::new())
    }
}

/// `http(s)://host[:port][/path]`; returns it without a trailing slash.
pub fn parse_http_url(s: &str) -> Parsed<String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not accepted".into());
    }
    let host_part = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("unterminated [")?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            if let Some(p) = after.strip_prefix(':') {
                port(p).map_err(|_| format!("bad port {p:?}"))?;
            } else if !after.is_empty() {
                return Err(format!("unexpected {after:?} after the address"));
            }
            None
        }
        None => {
            let (h, p) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if let Some(p) = p {
                port(p).map_err(|_| format!("bad port {p:?}"))?;
            }
            Some(h)
        }
    };
    if let Some(h) = host_part
        && host(h).is_err()
    {
        return Err(format!("{h:?} is not a host name or address"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err("the path may not hold spaces, a query or a fragment".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// A router name: `[A-Za-z0-9._-]`, 1–64 bytes (it is written on tasks and shown in URLs).
pub fn is_router_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub fn router_name(s: &str) -> Parsed<String> {
    if is_router_name(s) {
        Ok(s.to_string())
    } else {
        Err(String::new())
    }
}

pub fn http_mode(s: &str) -> Parsed<HttpMode> {
    match s.to_ascii_lowercase().as_str() {
        "path" => Ok(HttpMode::Path),
        "subdomain" => Ok(HttpMode::Subdomain),
        _ => Err(String::new()),
    }
}

/// `AUTH_COOKIE_NAME`: one cookie name or several separated by commas (each install names its
/// cookie: compose `clearml_token_basic`, Helm `clearml-token-k8s`, Enterprise others); kept as
/// written, without spaces, the first being the one the router sets.
pub fn cookie_names(s: &str) -> Parsed<String> {
    let names: Vec<&str> = split_list(s).collect();
    let ok = |n: &&str| {
        n.len() <= 128
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if names.is_empty() {
        return Err("no cookie name".into());
    }
    if let Some(bad) = names.iter().find(|n| !ok(n)) {
        return Err(format!("{bad:?} is not a cookie name"));
    }
    Ok(names.join(","))
}

/// `AUTH_BASE64_JWKS_KEY` as written: the API server's token secret, whose bytes are the HMAC
/// key (PyJWT signs with the string), or the JWKS `k` of that key; both forms are tried
/// (`AuthConfig::hmac_keys`). At least 16 characters.
pub fn token_secret(s: &str) -> Parsed<Vec<u8>> {
    if s.len() < 16 {
        return Err(format!("{} characters, at least 16 needed", s.len()));
    }
    Ok(s.as_bytes().to_vec())
}

/// The bytes a JWKS `k` (base64url without padding; padded and standard base64 accepted too,
/// since operators paste either) stands for; `None` when `text` is not base64 or decodes to
/// nothing.
pub fn base64url_key(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let trimmed = text.trim_ascii();
    let unpadded = trimmed
        .strip_suffix(b"==")
        .or_else(|| trimmed.strip_suffix(b"="));
    URL_SAFE_NO_PAD
        .decode(unpadded.unwrap_or(trimmed))
        .or_else(|_| STANDARD.decode(trimmed))
        .ok()
        .filter(|key| !key.is_empty())
}

pub fn jwt_algorithm(s: &str) -> Parsed<String> {
    match s.to_ascii_uppercase().as_str() {
        a @ ("HS256" | "HS384" | "HS512") => Ok(a.to_string()),
        _ => Err(String::new()),
    }
}

pub fn socket_addr(s: &str) -> Parsed<SocketAddr> {
    s.parse::<SocketAddr>().map_err(|_| String::new())
}

pub fn path(s: &str) -> Parsed<PathBuf> {
    Ok(PathBuf::from(s))
}

pub fn absolute_path(s: &str) -> Parsed<PathBuf> {
    let path = PathBuf::from(s);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(String::new())
    }
}

/// Maps ClearML's Python-style level names onto tracing's; anything else is taken as a tracing
/// filter and checked.
pub fn log_level(s: &str) -> Parsed<String> {
    let level = match s.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" | "fatal" => "error".to_string(),
        "notset" => "trace".to_string(),
        l @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => l.to_string(),
        _ => s.to_string(),
    };
    tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| e.to_string())?;
    Ok(level)
}

pub fn log_format(s: &str) -> Parsed<LogFormat> {
    match s.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn jwks_keys_decode_in_any_base64_flavour() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let raw = b"secret\xff\xfe key";
        let url = URL_SAFE_NO_PAD.encode(raw);
        let std = STANDARD.encode(raw);
        assert_eq!(base64url_key(url.as_bytes()).unwrap(), raw);
        assert_eq!(base64url_key(format!("{url}==").as_bytes()).unwrap(), raw);
        assert_eq!(base64url_key(std.as_bytes()).unwrap(), raw);
        assert_eq!(base64url_key(b"not base64 !"), None);
        assert_eq!(base64url_key(b""), None);
    }
}
