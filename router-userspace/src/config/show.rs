//! Values written back as variable text, as `check-config` shows them and as flags are passed
//! on: the inverse of the parsers (`parse.rs`: parsing the text gives the value back).

use ipnet::Ipv4Net;
use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::client_allow::ClientAllow;
use crate::datapath::options::{AttachMode, DatapathKind, NatSourcePorts, attach_mode_name};
use crate::logging::LogFormat;
use crate::routes::{HttpMode, PreserveClientIp};

/// A value in the spelling of its variable.
pub trait Shown {
    fn shown(&self) -> String;
}

/// Values spelled as they display.
macro_rules! shown_as_displayed {
    ($($type:ty),+) => {
        $(
            impl Shown for $type {
                fn shown(&self) -> String {
                    self.to_string()
                }
            }
        )+
    };
}

shown_as_displayed!(
    bool,
    u16,
    u32,
    SocketAddr,
    DatapathKind,
    Ipv4Net,
    Ipv4Addr,
    NatSourcePorts
);

/// Everyone is the empty list.
impl Shown for ClientAllow {
    fn shown(&self) -> String {
        self.nets()
            .map(|nets| nets.to_vec().shown())
            .unwrap_or_default()
    }
}

impl Shown for String {
    fn shown(&self) -> String {
        self.clone()
    }
}

/// Unset is empty.
impl<T: Shown> Shown for Option<T> {
    fn shown(&self) -> String {
        self.as_ref().map(Shown::shown).unwrap_or_default()
    }
}

/// `2s` or, below whole seconds, `500ms`.
impl Shown for Duration {
    fn shown(&self) -> String {
        let ms = self.as_millis();
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }
}

impl Shown for PathBuf {
    fn shown(&self) -> String {
        self.display().to_string()
    }
}

impl Shown for HttpMode {
    fn shown(&self) -> String {
        match self {
            HttpMode::Path => "path",
            HttpMode::Subdomain => "subdomain",
        }
        .to_string()
    }
}

impl Shown for PreserveClientIp {
    fn shown(&self) -> String {
        self.as_str().to_string()
    }
}

impl Shown for LogFormat {
    fn shown(&self) -> String {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .to_string()
    }
}

/// `eth0` or `eth0:tc`.
impl Shown for (String, Option<AttachMode>) {
    fn shown(&self) -> String {
        match &self.1 {
            Some(mode) => format!("{}:{}", self.0, attach_mode_name(*mode)),
            None => self.0.clone(),
        }
    }
}

/// Items separated by commas.
impl<T: Shown> Shown for Vec<T> {
    fn shown(&self) -> String {
        self.iter().map(Shown::shown).collect::<Vec<_>>().join(",")
    }
}

/// Two numbers separated by a comma.
pub fn pair(a: impl Display, b: impl Display) -> String {
    format!("{a},{b}")
}

/// `***` with the length, so an operator can tell a secret is set without seeing it.
pub fn mask(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        format!("*** ({} chars)", secret.chars().count())
    }
}

/// `AUTH_BASE64_JWKS_KEY`: `***` with the length of each form tried (as written, and
/// base64url-decoded when it decodes), so an operator can tell what was configured without
/// seeing it.
pub fn masked_key_forms(key: &[u8]) -> String {
    if key.is_empty() {
        return String::new();
    }
    match super::parse::base64url_key(key) {
        Some(decoded) => format!(
            "*** ({} chars as written; also tried base64url-decoded: {} bytes)",
            key.len(),
            decoded.len()
        ),
        None => format!("*** ({} chars as written; not base64url)", key.len()),
    }
}
