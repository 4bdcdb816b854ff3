//! Signed tracking tokens: compact, URL-safe, HMAC-SHA256. A token carries everything
//! needed to answer a request (transmission, recipient, link index and target URL,
//! expiry), so no database is consulted on an open or a click.
//!
//! Layout before base64url (no padding): version (1), kind (1), expiry (u32, Unix
//! seconds), link index (u16), transmission id (u64), recipient length (u8), recipient,
//! [version 2 only: link name length (u8), link name,] URL (the rest; clicks only), then
//! the first 16 bytes of the HMAC over all of that. Links without a name keep version 1,
//! so only named links grow, by their name.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};

const VERSION: u8 = 1;
/// Version 1 with the link's `data-msys-linkname` after the recipient.
const VERSION_NAMED: u8 = 2;
const MAC_LEN: usize = 16;
/// Header bytes before the recipient.
const FIXED: usize = 1 + 1 + 4 + 2 + 8 + 1;
/// Tokens longer than this are refused before any work (URLs are at most 2 KB here).
const MAX_TOKEN_CHARS: usize = 4096;
/// The longest target URL a token carries; longer links are left untracked, since a
/// cut URL would redirect somewhere else.
pub const MAX_URL_LEN: usize = 2048;
/// The longest recipient a token carries (an address has at most 254 octets).
pub const MAX_RECIPIENT_LEN: usize = 255;
/// The longest link name a token carries (longer names are cut at a character
/// boundary): enough for a name, short enough to keep links short.
pub const MAX_LINK_NAME_LEN: usize = 63;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    /// The pixel at the top of the body.
    InitialOpen,
    Click,
    /// A link marked `data-msys-unsubscribe="1"`: a click that also unsubscribes.
    UnsubscribeClick,
    /// The List-Unsubscribe URL (RFC 8058 one-click).
    Unsubscribe,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Open => b'o',
            Kind::InitialOpen => b'i',
            Kind::Click => b'c',
            Kind::UnsubscribeClick => b'l',
            Kind::Unsubscribe => b'u',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            b'o' => Some(Kind::Open),
            b'i' => Some(Kind::InitialOpen),
            b'c' => Some(Kind::Click),
            b'l' => Some(Kind::UnsubscribeClick),
            b'u' => Some(Kind::Unsubscribe),
            _ => None,
        }
    }
}

/// The content of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenData {
    pub kind: Kind,
    pub transmission_id: u64,
    pub recipient: String,
    /// The link's position in the message (clicks; 0 otherwise).
    pub link_index: u16,
    /// The target (clicks; empty otherwise).
    pub url: String,
    /// The link's `data-msys-linkname` (clicks; empty when it has none).
    pub link_name: String,
    /// Unix seconds after which the token is refused.
    pub expires: u32,
}

/// Why a token is refused. The HTTP endpoint answers 404 for all of them alike.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token")]
    Malformed,
    #[error("signature does not match any key")]
    BadSignature,
    #[error("expired")]
    Expired,
}

/// The signing keys: the first signs, every one verifies (key rotation).
#[derive(Clone)]
pub struct Keys(Vec<Vec<u8>>);

impl Keys {
    /// `None` without any secret.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Option<Keys> {
        (!secrets.is_empty()).then(|| Keys(secrets.iter().map(|s| s.as_ref().to_vec()).collect()))
    }

    fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(payload);
        mac
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} secrets)", self.0.len())
    }
}

/// Sign `data` with the first key. Recipients and URLs longer than the format holds are
/// cut ([`MAX_RECIPIENT_LEN`], [`MAX_URL_LEN`]); callers do not track such links.
pub fn sign(keys: &Keys, data: &TokenData) -> String {
    let rcpt = truncate(&data.recipient, MAX_RECIPIENT_LEN);
    let url = truncate(&data.url, MAX_URL_LEN);
    let name = truncate(&data.link_name, MAX_LINK_NAME_LEN);
    let mut payload = Vec::with_capacity(FIXED + rcpt.len() + 1 + name.len() + url.len() + MAC_LEN);
    payload.push(if name.is_empty() {
        VERSION
    } else {
        VERSION_NAMED
    });
    payload.push(data.kind.byte());
    payload.extend_from_slice(&data.expires.to_be_bytes());
    payload.extend_from_slice(&data.link_index.to_be_bytes());
    payload.extend_from_slice(&data.transmission_id.to_be_bytes());
    payload.push(rcpt.len() as u8);
    payload.extend_from_slice(rcpt.as_bytes());
    if !name.is_empty() {
        payload.push(name.len() as u8);
        payload.extend_from_slice(name.as_bytes());
    }
    payload.extend_from_slice(url.as_bytes());
    let tag = Keys::mac(&keys.0[0], &payload).finalize().into_bytes();
    payload.extend_from_slice(&tag[..MAC_LEN]);
    URL_SAFE_NO_PAD.encode(payload)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Check a token's signature (against every key) and expiry at `now` (Unix seconds).
pub fn verify(keys: &Keys, token: &str, now: u64) -> Result<TokenData, TokenError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    if raw.len() < FIXED + MAC_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
    if !keys
        .0
        .iter()
        .any(|key| Keys::mac(key, payload).verify_truncated_left(tag).is_ok())
    {
        return Err(TokenError::BadSignature);
    }
    // Signed by us: the layout is ours, but still parse without trusting lengths.
    let named = match payload[0] {
        VERSION => false,
        VERSION_NAMED => true,
        _ => return Err(TokenError::Malformed),
    };
    let kind = Kind::from_byte(payload[1]).ok_or(TokenError::Malformed)?;
    let expires = u32::from_be_bytes(
        payload[2..6]
            .try_into()
            .map_err(|_| TokenError::Malformed)?,
    );
    let link_index = u16::from_be_bytes(
        payload[6..8]
            .try_into()
            .map_err(|_| TokenError::Malformed)?,
    );
    let transmission_id = u64::from_be_bytes(
        payload[8..16]
            .try_into()
            .map_err(|_| TokenError::Malformed)?,
    );
    let rcpt_len = usize::from(payload[16]);
    let rest = &payload[FIXED..];
    if rest.len() < rcpt_len {
        return Err(TokenError::Malformed);
    }
    let (rcpt, rest) = rest.split_at(rcpt_len);
    let (name, url) = if named {
        let (&len, rest) = rest.split_first().ok_or(TokenError::Malformed)?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err(TokenError::Malformed);
        }
        rest.split_at(len)
    } else {
        (&[][..], rest)
    };
    if u64::from(expires) < now {
        return Err(TokenError::Expired);
    }
    Ok(TokenData {
        kind,
        transmission_id,
        recipient: String::from_utf8(rcpt.to_vec()).map_err(|_| TokenError::Malformed)?,
        link_index,
        url: String::from_utf8(url.to_vec()).map_err(|_| TokenError::Malformed)?,
        link_name: String::from_utf8(name.to_vec()).map_err(|_| TokenError::Malformed)?,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> TokenData {
        TokenData {
            kind: Kind::Click,
            transmission_id: 383614221864140800,
            recipient: "jöran@example.com".into(),
            link_index: 7,
            url: "https://shop.example.com/item?id=42&utm=mail#top".into(),
            link_name: String::new(),
            expires: 2_000_000_000,
        }
    }

    #[test]
    fn named_links_carry_their_name_and_unnamed_ones_stay_as_they_were() {
        let keys = Keys::new(&["k1-0123456789abcdef"]).unwrap();
        let plain = sign(&keys, &data());
        let named = TokenData {
            link_name: "Spring sale – hero".into(),
            ..data()
        };
        let t = sign(&keys, &named);
        assert_eq!(verify(&keys, &t, 0), Ok(named.clone()));
        // Only the name (and its length byte) is added.
        let grown = URL_SAFE_NO_PAD.decode(&t).unwrap().len()
            - URL_SAFE_NO_PAD.decode(&plain).unwrap().len();
        assert_eq!(grown, 1 + named.link_name.len());
        assert_eq!(URL_SAFE_NO_PAD.decode(&plain).unwrap()[0], VERSION);
        // A long name is cut at a character boundary.
        let long = TokenData {
            link_name: "é".repeat(100),
            ..data()
        };
        let back = verify(&keys, &sign(&keys, &long), 0).unwrap();
        assert_eq!(back.link_name, "é".repeat(MAX_LINK_NAME_LEN / 2));
    }

    #[test]
    fn round_trip_and_url_safe() {
        let keys = Keys::new(&["k1-0123456789abcdef"]).unwrap();
        let t = sign(&keys, &data());
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{t}"
        );
        assert_eq!(verify(&keys, &t, 1_900_000_000), Ok(data()));
        for kind in [Kind::Open, Kind::Unsubscribe] {
            let d = TokenData {
                kind,
                url: String::new(),
                link_index: 0,
                ..data()
            };
            assert_eq!(verify(&keys, &sign(&keys, &d), 0), Ok(d));
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let keys = Keys::new(&["k1-0123456789abcdef"]).unwrap();
        let t = sign(&keys, &data());
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            for bit in [0x01, 0x80] {
                let mut forged = raw.clone();
                forged[i] ^= bit;
                assert!(
                    verify(&keys, &URL_SAFE_NO_PAD.encode(&forged), 0).is_err(),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn expiry_and_rotation() {
        let old = Keys::new(&["old-0123456789abcdef"]).unwrap();
        let rotated = Keys::new(&["new-0123456789abcdef", "old-0123456789abcdef"]).unwrap();
        let t = sign(&old, &data());
        assert_eq!(
            verify(&rotated, &t, 0),
            Ok(data()),
            "old key still accepted"
        );
        assert_eq!(
            verify(&Keys::new(&["new-0123456789abcdef"]).unwrap(), &t, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify(&old, &t, 2_000_000_001), Err(TokenError::Expired));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let keys = Keys::new(&["k"]).unwrap();
        for t in [
            "",
            "a",
            "!!!!",
            "====",
            &"A".repeat(5000),
            &"A".repeat(40),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(verify(&keys, t, 0).is_err(), "{t}");
        }
        assert!(Keys::new::<&str>(&[]).is_none());
    }
}
