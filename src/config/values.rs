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

/// A size in bytes: a number of bytes, or a string with a unit (`"50MB"`, `"512KiB"`,
/// `"1 GiB"`). Less than 1 KiB is refused: `max_message_size = 50` meant 50 MB.
pub fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let bytes = match Raw::deserialize(d)? {
        Raw::Bytes(n) => n,
        Raw::Text(t) => parse_size(&t).map_err(serde::de::Error::custom)?,
    };
    if bytes < 1024 {
        return Err(serde::de::Error::custom(format!(
            "{bytes} bytes is too small for a message: give a unit, e.g. \"50MB\""
        )));
    }
    usize::try_from(bytes).map_err(|_| serde::de::Error::custom("too large"))
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: use e.g. \"50MB\" or \"512KiB\""))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use B, KB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn sizes_with_units() {
        assert_eq!(super::parse_size("50MB"), Ok(50_000_000));
        assert_eq!(super::parse_size("512 KiB"), Ok(524_288));
        assert_eq!(super::parse_size("1GiB"), Ok(1 << 30));
        assert!(super::parse_size("50 parsecs").is_err());
        assert!(super::parse_size("MB").is_err());
    }
}

/// A limit that must be at least 1 (connections, seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct AtLeastOne(pub usize);

impl TryFrom<i64> for AtLeastOne {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n >= 1)
            .map(AtLeastOne)
            .ok_or_else(|| format!("{n} is not a usable limit: give a number of 1 or more"))
    }
}

/// A size limit in bytes of at least 1 KiB (request headers and bodies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct ByteLimit(pub usize);

impl TryFrom<i64> for ByteLimit {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n >= 1024)
            .map(ByteLimit)
            .ok_or_else(|| format!("{n} bytes is too small a limit: give 1024 or more"))
    }
}
