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
use std::net::IpAddr;
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
    buckets: Buckets<String>,
}

/// Token buckets, one per `K`, each holding a minute's worth and refilled evenly.
struct Buckets<K> {
    per_minute: f64,
    held: Mutex<HashMap<K, (f64, Instant)>>,
}

/// Most clients whose failures are remembered: a flood from more addresses forgets the
/// ones that have earned their full allowance back first.
const MAX_TRACKED: usize = 10_000;

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(per_minute: usize) -> Buckets<K> {
        Buckets {
            per_minute: f64::from(u32::try_from(per_minute).unwrap_or(u32::MAX).max(1)),
            held: Mutex::default(),
        }
    }

    /// `key`'s tokens now, refilled.
    fn level(&self, held: &HashMap<K, (f64, Instant)>, key: &K, now: Instant) -> f64 {
        held.get(key).map_or(self.per_minute, |(tokens, last)| {
            (tokens + now.duration_since(*last).as_secs_f64() * self.per_minute / 60.0)
                .min(self.per_minute)
        })
    }

    /// Whether `key` has a token left (none is spent).
    fn has(&self, key: &K) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        self.level(&held, key, Instant::now()) >= 1.0
    }

    /// Spend one of `key`'s tokens: false when it had none.
    fn spend(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.level(&held, key, now);
        if held.len() >= MAX_TRACKED && !held.contains_key(key) {
            let full = self.per_minute;
            held.retain(|_, (t, last)| {
                *t + now.duration_since(*last).as_secs_f64() * full / 60.0 < full
            });
        }
        let left = if tokens >= 1.0 { tokens - 1.0 } else { tokens };
        if held.len() < MAX_TRACKED || held.contains_key(key) {
            held.insert(key.clone(), (left, now));
        }
        tokens >= 1.0
    }
}

/// Requests without a good key, per client: past its allowance a client gets 429 before
/// its key is even hashed. IPv6 clients count by /64 (one host holds a whole one).
pub struct Failures(Buckets<IpAddr>);

impl Failures {
    pub fn new(per_minute: usize) -> Failures {
        Failures(Buckets::new(per_minute))
    }

    fn client(ip: IpAddr) -> IpAddr {
        let IpAddr::V6(v6) = ip else { return ip };
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpAddr::V4(v4);
        }
        let mut segments = v6.segments();
        segments[4..].fill(0);
        IpAddr::from(segments)
    }

    /// 429 when `ip` has used up its failures.
    pub fn admit(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.0.has(&Failures::client(ip)) {
            Ok(())
        } else {
            crate::metrics::global().api_throttled("(no key)");
            Err(too_many())
        }
    }

    /// `ip` sent a wrong or missing key.
    pub fn failed(&self, ip: IpAddr) {
        self.0.spend(&Failures::client(ip));
    }
}

fn too_many() -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
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
            buckets: Buckets::new(per_minute),
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

    /// One request from `key`, 429 over its rate.
    fn spend(&self, key: &str) -> Result<(), ApiError> {
        if self.buckets.spend(&key.to_owned()) {
            return Ok(());
        }
        crate::metrics::global().api_throttled(key);
        Err(too_many())
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

    #[test]
    fn a_client_that_keeps_failing_gets_429_before_its_key_is_checked() {
        let f = Failures::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            f.admit(a).unwrap();
            f.failed(a);
        }
        assert_eq!(
            f.admit(a).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Others are not held back; one IPv6 /64 is one client.
        f.admit(b).unwrap();
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for _ in 0..3 {
            f.failed(v6("2001:db8:1:2::1"));
        }
        assert!(f.admit(v6("2001:db8:1:2:ffff::9")).is_err());
        assert!(f.admit(v6("2001:db8:1:3::1")).is_ok());
        // Memory stays bounded whatever the number of clients.
        let many = Failures::new(1);
        for n in 0..(MAX_TRACKED as u32 + 500) {
            many.failed(IpAddr::from(n.to_be_bytes()));
        }
        assert!(many.0.held.lock().unwrap().len() <= MAX_TRACKED);
    }
}
