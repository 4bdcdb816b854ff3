//! `[api]` and `[[api_key]]`: the REST API listener (SparkPost's API v1 subset) and the
//! keys that may call it.

use super::values::{AtLeastOne, ByteLimit};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// `HOST:PORT`; no API when unset. Never the tracking listener's port.
    pub listen: Option<String>,
    /// HTTPS (the default: SparkPost's clients speak https); `false` only for loopback
    /// behind a proxy.
    pub tls: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Requests a key may make per minute (429 `Too many requests` beyond).
    pub rate_limit: AtLeastOne,
    pub max_connections: AtLeastOne,
    /// Largest request body (a bulk PUT of 10,000 recipients is about 1 MB).
    pub max_body_bytes: ByteLimit,
    /// Days the deliverability counters are kept (they outlive the events).
    pub metrics_retention_days: AtLeastOne,
    /// Requests with a wrong or missing key one client address may make per minute (429
    /// beyond, before any key is hashed).
    pub auth_failures_per_minute: AtLeastOne,
    /// Networks that webhooks made through the API may post to besides public
    /// addresses (by default none: not this host, nor a private or link-local network).
    pub webhook_allow_networks: crate::netguard::Networks,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: None,
            tls: true,
            tls_cert: None,
            tls_key: None,
            rate_limit: AtLeastOne(1200),
            max_connections: AtLeastOne(64),
            max_body_bytes: ByteLimit(16 * 1024 * 1024),
            metrics_retention_days: AtLeastOne(400),
            auth_failures_per_minute: AtLeastOne(30),
            webhook_allow_networks: crate::netguard::Networks::default(),
        }
    }
}

/// What a key may do, in SparkPost's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Grant {
    SuppressionManage,
    SuppressionView,
    EventsView,
    MetricsView,
    WebhooksView,
    WebhooksModify,
}

impl Grant {
    pub const ALL: [Grant; 6] = [
        Grant::SuppressionManage,
        Grant::SuppressionView,
        Grant::EventsView,
        Grant::MetricsView,
        Grant::WebhooksView,
        Grant::WebhooksModify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Grant::SuppressionManage => "suppression_lists/manage",
            Grant::SuppressionView => "suppression_lists/view",
            Grant::EventsView => "message_events/view",
            Grant::MetricsView => "metrics/view",
            Grant::WebhooksView => "webhooks/view",
            Grant::WebhooksModify => "webhooks/modify",
        }
    }

    /// Does holding `self` give `wanted`? A manage or modify grant includes viewing.
    pub fn covers(self, wanted: Grant) -> bool {
        self == wanted
            || matches!(
                (self, wanted),
                (Grant::SuppressionManage, Grant::SuppressionView)
                    | (Grant::WebhooksModify, Grant::WebhooksView)
            )
    }
}

impl TryFrom<String> for Grant {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Grant::ALL
            .into_iter()
            .find(|g| g.as_str() == name.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Grant::ALL.iter().map(|g| g.as_str()).collect();
                format!("`{name}` is not a grant: use {}", names.join(", "))
            })
    }
}

/// The SHA-256 of a key, from 64 hex digits (the key itself is never written down).
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct KeyHash(pub [u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

impl TryFrom<String> for KeyHash {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            "not a SHA-256 in hex (64 digits): make a key with `msys-milter api-key new`, \
             which prints the line to add"
                .to_owned()
        };
        // Hex digits only before slicing by byte: a multi-byte character would split.
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(KeyHash(out))
    }
}

/// `[[api_key]]`: one caller of the REST API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    pub key_sha256: KeyHash,
    pub grants: Vec<Grant>,
    /// A subaccount's key sees only that subaccount; unset: the main account, which may
    /// pick a subaccount with `X-MSYS-SUBACCOUNT`.
    #[serde(default)]
    pub subaccount: Option<u64>,
}
