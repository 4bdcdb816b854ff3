//! Personalised copies: the bytes of a copy are the original message with the plan's
//! header edits applied, plus the copy's own headers (its `Bcc:`, the loop marker).
//! Pure: headers and body in, message bytes out.

use super::plan::HeaderEdit;
use hmac::{KeyInit, Mac};
use serde::Serialize;

/// A header field as the MTA passed it: the raw value keeps its folding (LF or CRLF plus
/// white space) and has no leading space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    pub name: String,
    pub value: Vec<u8>,
}

impl HeaderField {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// One personalised copy to re-inject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyPlan {
    pub address: String,
    pub rcpt_type: super::recipients::RcptType,
    /// Headers only this copy has, appended after the edited original headers.
    pub extra_headers: Vec<(String, String)>,
}

/// The marker header a re-injected copy carries, so the milter recognises a copy that
/// comes back to it (a misconfigured listener) and passes it once, unchanged.
pub const MARKER_HEADER: &str = "X-MSYS-Reinjected";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How long after it was made a marker is honoured: a copy loops back at once, and a
/// marker must not be replayable later (it exempts a message from the milter's checks).
pub const MARKER_LIFETIME_SECS: u64 = 3600;

fn mac(secret: &[u8], transmission_id: &str, rcpt: &str, made_at: u64) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(b"msys-milter copy marker v2\0");
    mac.update(transmission_id.as_bytes());
    mac.update(b"\0");
    mac.update(rcpt.to_lowercase().as_bytes());
    mac.update(b"\0");
    mac.update(made_at.to_string().as_bytes());
    mac
}

/// The marker of the copy for `rcpt`: `<transmission id>; <unix time>; <hex HMAC>`, the
/// HMAC binding the id, the recipient and the time.
pub fn marker_value(secret: &[u8], transmission_id: &str, rcpt: &str, now: u64) -> String {
    let tag = mac(secret, transmission_id, rcpt, now)
        .finalize()
        .into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{transmission_id}; {now}; {hex}")
}

/// The transmission id of a marker signed with `secret` for the message's only
/// recipient `rcpt`, made at most [`MARKER_LIFETIME_SECS`] before `now`; `None` for an
/// unsigned, forged, foreign or stale marker (the MAC is compared in constant time).
pub fn verify_marker(secret: &[u8], value: &[u8], rcpt: &str, now: u64) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let mut parts = value.split(';').map(str::trim);
    let (id, made_at, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let made_at: u64 = made_at.parse().ok()?;
    if made_at > now.saturating_add(300) || now.saturating_sub(made_at) > MARKER_LIFETIME_SECS {
        return None;
    }
    if hex.len() != 64 {
        return None;
    }
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    mac(secret, id, rcpt, made_at).verify_slice(&tag).ok()?;
    Some(id.to_owned())
}

/// The header that ties a spam complaint back to its transmission and recipient when
/// the report strips the envelope (SparkPost's name for it).
pub const FBL_HEADER: &str = "X-MSFBL";

fn fbl_mac(secret: &[u8], transmission_id: &str, rcpt: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(b"msys-milter feedback v1\0");
    mac.update(transmission_id.as_bytes());
    mac.update(b"\0");
    mac.update(rcpt.to_lowercase().as_bytes());
    mac
}

/// `<transmission id>; <recipient, base64url>; <hex HMAC>` (the recipient is empty for
/// a message that goes to several).
pub fn fbl_value(secret: &[u8], transmission_id: &str, rcpt: Option<&str>) -> String {
    use base64::Engine as _;
    let rcpt = rcpt.unwrap_or("");
    let tag = fbl_mac(secret, transmission_id, rcpt)
        .finalize()
        .into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rcpt.to_lowercase());
    format!("{transmission_id}; {encoded}; {hex}")
}

/// The transmission id and recipient of an `X-MSFBL` value signed with `secret`; `None`
/// when unsigned or forged.
pub fn verify_fbl(secret: &[u8], value: &str) -> Option<(String, Option<String>)> {
    use base64::Engine as _;
    let compact: String = value.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut parts = compact.split(';').map(str::trim);
    let (id, encoded, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || id.is_empty()
        || !id.bytes().all(|b| b.is_ascii_digit())
        || hex.len() != 64
    {
        return None;
    }
    let rcpt = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    fbl_mac(secret, id, &rcpt).verify_slice(&tag).ok()?;
    Some((id.to_owned(), (!rcpt.is_empty()).then_some(rcpt)))
}

/// Apply milter header edits to a header list, in order, the way the MTA does.
pub fn apply_edits(headers: &mut Vec<HeaderField>, edits: &[HeaderEdit]) {
    let position = |headers: &[HeaderField], name: &str, index: i32| {
        let n = usize::try_from(index).ok()?.checked_sub(1)?;
        headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is(name))
            .nth(n)
            .map(|(i, _)| i)
    };
    for edit in edits {
        match edit {
            HeaderEdit::Delete { name, index } => {
                if let Some(i) = position(headers, name, *index) {
                    headers.remove(i);
                }
            }
            HeaderEdit::Change { name, index, value } => {
                if let Some(i) = position(headers, name, *index) {
                    headers[i].value = value.clone().into_bytes();
                }
            }
            HeaderEdit::Add { name, value } => {
                headers.push(HeaderField::new(name.clone(), value.clone()));
            }
        }
    }
}

/// The bytes of one copy: CRLF line ends throughout, headers folded as received (our
/// own values fold before 78 octets), then the body as the MTA passed it.
pub fn render_copy(
    headers: &[HeaderField],
    edits: &[HeaderEdit],
    copy: &CopyPlan,
    body: &[u8],
) -> Vec<u8> {
    let mut headers = headers.to_vec();
    apply_edits(&mut headers, edits);
    // A copy's own headers replace the original's of the same name (X-MSFBL names the
    // copy's recipient, not the original's).
    let own_fbl = copy
        .extra_headers
        .iter()
        .any(|(name, _)| name == FBL_HEADER);
    headers.retain(|h| !(own_fbl && h.is(FBL_HEADER)));
    let mut out = Vec::with_capacity(body.len() + 4096);
    for field in &headers {
        push_header(&mut out, &field.name, &field.value);
    }
    for (name, value) in &copy.extra_headers {
        push_header(&mut out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    push_crlf(&mut out, body);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A message's bytes from its header fields and body (CRLF line ends).
pub fn serialize(headers: &[HeaderField], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4096);
    for field in headers {
        push_header(&mut out, &field.name, &field.value);
    }
    out.extend_from_slice(b"\r\n");
    push_crlf(&mut out, body);
    out
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    push_crlf(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Append `text` with every bare LF (or bare CR) turned into CRLF.
fn push_crlf(out: &mut Vec<u8>, text: &[u8]) {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::recipients::RcptType;

    #[test]
    fn fbl_round_trip_and_forgery() {
        let v = fbl_value(b"secret", "1234", Some("B@example.com"));
        assert_eq!(
            verify_fbl(b"secret", &v),
            Some(("1234".into(), Some("b@example.com".into())))
        );
        assert_eq!(verify_fbl(b"other", &v), None);
        assert_eq!(verify_fbl(b"secret", &v.replace("1234", "1235")), None);
        let several = fbl_value(b"secret", "9", None);
        assert_eq!(verify_fbl(b"secret", &several), Some(("9".into(), None)));
        assert_eq!(verify_fbl(b"secret", "placeholder"), None);
    }

    #[test]
    fn marker_round_trip_and_forgery() {
        let now = 1_800_000_000;
        let m = marker_value(b"secret", "1234", "B@example.com", now);
        let ok = |m: &[u8], rcpt: &str, at: u64| verify_marker(b"secret", m, rcpt, at);
        assert_eq!(
            ok(m.as_bytes(), "b@example.com", now + 60),
            Some("1234".into())
        );
        assert_eq!(
            verify_marker(b"other", m.as_bytes(), "b@example.com", now),
            None
        );
        assert_eq!(
            ok(m.as_bytes(), "c@example.com", now),
            None,
            "bound to its recipient"
        );
        assert_eq!(ok(m.as_bytes(), "b@example.com", now + 3601), None, "stale");
        assert_eq!(
            ok(m.as_bytes(), "b@example.com", now - 3600),
            None,
            "from the future"
        );
        assert_eq!(
            ok(m.replace("1234", "1235").as_bytes(), "b@example.com", now),
            None
        );
        assert_eq!(ok(b"1234", "b@example.com", now), None);
        assert_eq!(ok(b"1234; 5; zz", "b@example.com", now), None);
        for i in 0..m.len() {
            let mut forged = m.clone().into_bytes();
            forged[i] ^= 0x01;
            assert_eq!(ok(&forged, "b@example.com", now), None, "byte {i}");
        }
    }

    #[test]
    fn copy_bytes() {
        let headers = vec![
            HeaderField::new("From", "a@example.com"),
            HeaderField::new("X-MSYS-API", "{\"bcc\":\n [\"b@example.com\"]}"),
            HeaderField::new("Subject", "folded\n\tsubject"),
            HeaderField::new("Cc", "old@example.com"),
        ];
        let edits = vec![
            HeaderEdit::Delete {
                name: "x-msys-api".into(),
                index: 1,
            },
            HeaderEdit::Change {
                name: "Cc".into(),
                index: 1,
                value: "c@example.com".into(),
            },
            HeaderEdit::Add {
                name: "Message-ID".into(),
                value: "<1@example.com>".into(),
            },
        ];
        let copy = CopyPlan {
            address: "b@example.com".into(),
            rcpt_type: RcptType::Bcc,
            extra_headers: vec![("Bcc".into(), "b@example.com".into())],
        };
        let bytes = render_copy(&headers, &edits, &copy, b"line 1\r\n.dot\nlast");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "From: a@example.com\r\nSubject: folded\r\n\tsubject\r\nCc: c@example.com\r\n\
             Message-ID: <1@example.com>\r\nBcc: b@example.com\r\n\r\nline 1\r\n.dot\r\nlast\r\n"
        );
    }
}
