//! Configuration values checked as they are read, so a bad one is reported by the TOML
//! parser with its line and key.

use crate::api::recipients::is_valid_domain;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// Where the milter listens: `inet:HOST:PORT` (also Sendmail's `inet:PORT@HOST`) or
/// `unix:/path` (also `local:/path`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SocketSpec {
    Inet(String),
    Unix(PathBuf),
}

impl TryFrom<String> for SocketSpec {
    type Error = String;
    fn try_from(spec: String) -> Result<Self, String> {
        spec.parse()
    }
}

impl std::str::FromStr for SocketSpec {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid socket `{spec}`: use `inet:HOST:PORT` (e.g. `inet:127.0.0.1:8895`) \
                 or `unix:/path/to/socket`"
            )
        };
        if let Some(path) = spec
            .strip_prefix("unix:")
            .or_else(|| spec.strip_prefix("local:"))
        {
            if path.is_empty() {
                return Err(usage());
            }
            return Ok(SocketSpec::Unix(PathBuf::from(path)));
        }
        let rest = spec
            .strip_prefix("inet:")
            .or_else(|| spec.strip_prefix("inet6:"))
            .ok_or_else(usage)?;
        // Sendmail writes `PORT@HOST`; Postfix and OpenDKIM `HOST:PORT`.
        let addr = match rest.split_once('@') {
            Some((port, host)) => format!("{}:{port}", bracket_v6(host)),
            None => rest.to_owned(),
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(usage)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(usage());
        }
        Ok(SocketSpec::Inet(addr))
    }
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Inet(addr) => write!(f, "inet:{addr}"),
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A domain name, lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Domain(pub String);

impl TryFrom<String> for Domain {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let lower = name.trim().to_ascii_lowercase();
        if lower.starts_with('[') || !is_valid_domain(&lower) {
            return Err(format!("`{name}` is not a domain name"));
        }
        Ok(Domain(lower))
    }
}

/// The node id that makes transmission ids unique across hosts (0 to 1023).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct NodeId(pub u16);

impl TryFrom<i64> for NodeId {
    type Error = String;
    fn try_from(id: i64) -> Result<Self, String> {
        u16::try_from(id)
            .ok()
            .filter(|&id| id <= crate::ids::MAX_NODE_ID)
            .map(NodeId)
            .ok_or_else(|| {
                format!(
                    "node_id {id} is out of range: give each milter host its own number from 0 to {}",
                    crate::ids::MAX_NODE_ID
                )
            })
    }
}

/// The local part of bounce addresses (before `+<transmission id>`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LocalPart(pub String);

impl TryFrom<String> for LocalPart {
    type Error = String;
    fn try_from(part: String) -> Result<Self, String> {
        let ok = !part.is_empty()
            && part.len() <= 40
            && part.split('.').all(|a| {
                !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c))
            });
        if ok {
            Ok(LocalPart(part))
        } else {
            Err(format!(
                "`{part}` is not a usable local part: use letters, digits, `-`, `_`, `=` and dots (e.g. `bounces`)"
            ))
        }
    }
}

impl Default for LocalPart {
    fn default() -> Self {
        LocalPart("bounces".into())
    }
}
