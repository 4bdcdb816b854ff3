//! Who is calling: the key in `Authorization` (bare, or HTTP Basic with the key as the
//! user name, as SparkPost accepts), matched by its SHA-256 in constant time; the grant
//! the endpoint needs; the account it acts for; and a per-key rate limit.

use super::common::ApiError;
use crate::config::{ApiKey, Grant};
use crate::store::Account;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The accounts a caller acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A main-account key without `X-MSYS-SUBACCOUNT`: reads see every account, writes
    /// go to the main account.
    Everyone,
    /// One account only (a subaccount key, or a main key naming a subaccount).
    Only(Account),
}

impl Scope {
    /// The account a write goes to.
    pub fn account(self) -> Account {
        match self {
            Scope::Everyone => None,
            Scope::Only(a) => a,
        }
    }

    /// What a search is limited to (`None`: nothing).
    pub fn filter(self) -> Option<Account> {
        match self {
            Scope::Everyone => None,
            Scope::Only(a) => Some(a),
        }
    }
}

/// An authorised caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: String,
    pub scope: Scope,
}

/// The keys in force and what each has spent of its rate.
pub struct Keys {
    keys: Vec<ApiKey>,
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// SHA-256 of a key, as `[[api_key]] key_sha256` holds it.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equal without an early exit: the time taken does not tell how much matched.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized.")
}

/// The key a request carries: `Authorization: <key>` or `Basic base64(<key>:)`.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    if let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let key = text.split_once(':').map_or(text.as_str(), |(k, _)| k);
        return Some(key.to_owned()).filter(|k| !k.is_empty());
    }
    let key = value.strip_prefix("Bearer ").unwrap_or(value);
    Some(key.to_owned()).filter(|k| !k.is_empty())
}

impl Keys {
    pub fn new(keys: Vec<ApiKey>, per_minute: usize) -> Keys {
        Keys {
            keys,
            per_minute: u32::try_from(per_minute).unwrap_or(u32::MAX).max(1),
            buckets: Mutex::default(),
        }
    }

    /// The configured key a request carries, or 401.
    fn key_of(&self, headers: &HeaderMap) -> Result<&ApiKey, ApiError> {
        let key = presented(headers).ok_or_else(unauthorized)?;
        let hash = digest(&key);
        // Every configured key is compared, whichever matches.
        self.keys
            .iter()
            .fold(None, |hit, k| {
                if same(&k.key_sha256.0, &hash) {
                    Some(k)
                } else {
                    hit
                }
            })
            .ok_or_else(unauthorized)
    }

    /// 401 unless the request carries a configured key: checked before a body is read,
    /// so a caller without a key cannot make the daemon buffer one.
    pub fn known(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.key_of(headers).map(|_| ())
    }

    /// The caller of a request needing `grant`: 401 without a known key, 403 without the
    /// grant or for another subaccount, 429 over its rate.
    pub fn authorize(&self, headers: &HeaderMap, grant: Grant) -> Result<Caller, ApiError> {
        let found = self.key_of(headers)?;
        if !found.grants.iter().any(|g| g.covers(grant)) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden.").with(
                "1100",
                format!("this API key lacks the {} grant", grant.as_str()),
            ));
        }
        self.spend(&found.name)?;
        let asked = headers
            .get("x-msys-subaccount")
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::invalid("X-MSYS-SUBACCOUNT must be a subaccount id (a number)")
                    })
            })
            .transpose()?;
        let scope = match (found.subaccount, asked) {
            (None, None) => Scope::Everyone,
            // Subaccount 0 is the main account.
            (None, Some(0)) => Scope::Only(None),
            (None, Some(id)) => Scope::Only(Some(id)),
            (Some(own), None) => Scope::Only(Some(own)),
            (Some(own), Some(id)) if id == own => Scope::Only(Some(own)),
            (Some(_), Some(_)) => {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden.")
                    .with("1100", "a subaccount's key cannot act for another account"));
            }
        };
        Ok(Caller {
            key: found.name.clone(),
            scope,
        })
    }

    /// One request from `key`: a token bucket holding a minute's worth, refilled evenly.
    fn spend(&self, key: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let capacity = f64::from(self.per_minute);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        let refill = now.duration_since(*last).as_secs_f64() * capacity / 60.0;
        *tokens = (*tokens + refill).min(capacity);
        *last = now;
        if *tokens < 1.0 {
            crate::metrics::global().api_throttled(key);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

/// A new random key (40 hex digits, as SparkPost's) and its SHA-256 in hex.
pub fn new_key() -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash: String = digest(&key).iter().map(|b| format!("{b:02x}")).collect();
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyHash;

    fn keys(per_minute: usize) -> Keys {
        Keys::new(
            vec![
                ApiKey {
                    name: "main".into(),
                    key_sha256: KeyHash(digest("k1")),
                    grants: vec![Grant::SuppressionManage],
                    subaccount: None,
                },
                ApiKey {
                    name: "sub".into(),
                    key_sha256: KeyHash(digest("k2")),
                    grants: vec![Grant::EventsView],
                    subaccount: Some(7),
                },
            ],
            per_minute,
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_grants_and_accounts() {
        let k = keys(100);
        let status =
            |h: &[(&'static str, &str)], g| k.authorize(&headers(h), g).map_err(|e| e.status);
        assert_eq!(
            status(&[], Grant::SuppressionView).unwrap_err(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&[("authorization", "nope")], Grant::SuppressionView).unwrap_err(),
            StatusCode::UNAUTHORIZED
        );
        let main = status(&[("authorization", "k1")], Grant::SuppressionView).unwrap();
        assert_eq!(main.scope, Scope::Everyone);
        // Basic with the key as the user name.
        let basic = status(&[("authorization", "Basic azE6")], Grant::SuppressionManage).unwrap();
        assert_eq!(basic.key, "main");
        assert_eq!(
            status(&[("authorization", "k1")], Grant::EventsView).unwrap_err(),
            StatusCode::FORBIDDEN
        );
        let picked = status(
            &[("authorization", "k1"), ("x-msys-subaccount", "3")],
            Grant::SuppressionView,
        )
        .unwrap();
        assert_eq!(picked.scope, Scope::Only(Some(3)));
        let sub = status(&[("authorization", "k2")], Grant::EventsView).unwrap();
        assert_eq!(sub.scope, Scope::Only(Some(7)));
        assert_eq!(
            status(
                &[("authorization", "k2"), ("x-msys-subaccount", "3")],
                Grant::EventsView
            )
            .unwrap_err(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_key_over_its_rate_gets_429() {
        let k = keys(3);
        let h = headers(&[("authorization", "k1")]);
        for _ in 0..3 {
            k.authorize(&h, Grant::SuppressionView).unwrap();
        }
        let e = k.authorize(&h, Grant::SuppressionView).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.message, "Too many requests");
    }
}
