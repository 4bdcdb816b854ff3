//! Body work on parsed MIME: rewriting HTML parts (tracking, CSS inlining) and the
//! AMPHTML placement rule. mail-parser reads the structure; the output is the original
//! bytes with only the rewritten parts' bodies replaced, so every other part, boundary,
//! preamble and epilogue stays byte for byte.

mod encode;
pub mod html;

use crate::api::copies::HeaderField;
pub use html::{BodyOptions, LinkMaker};
use mail_parser::{MessageParser, MimeHeaders, PartType};

#[derive(Debug, thiserror::Error)]
pub enum MimeError {
    #[error("the message cannot be parsed as MIME")]
    Unparseable,
    #[error("rewriting would change the message's MIME structure")]
    StructureChanged,
    #[error(transparent)]
    Html(#[from] html::HtmlError),
}

/// The AMPHTML rule (docs/behaviour.md section 2) is broken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("text/x-amp-html must be inside multipart/alternative")]
pub struct AmpError;

/// The message as one byte string (headers as the MTA passed them, then the body), and
/// where its body starts in it.
fn whole_message(headers: &[HeaderField], body: &[u8]) -> (Vec<u8>, usize) {
    let mut raw = Vec::with_capacity(body.len() + 2048);
    for h in headers {
        raw.extend_from_slice(h.name.as_bytes());
        raw.extend_from_slice(b": ");
        for (i, line) in h.value.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        }
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let body_start = raw.len();
    raw.extend_from_slice(body);
    (raw, body_start)
}

fn is_type(part: &mail_parser::MessagePart<'_>, ctype: &str, subtype: &str) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

fn is_attachment(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"))
}

/// A message parsed once, ready to be rewritten for each recipient: parsing and
/// decoding are the same for every copy, only the links differ.
pub struct Prepared {
    raw: Vec<u8>,
    body_start: usize,
    parts: Vec<HtmlPart>,
    /// MIME parts of the message as received.
    part_count: usize,
    /// The first rewrite was parsed again and kept the MIME structure: every rewrite
    /// differs from it only in its links, so one check serves them all.
    structure_kept: std::sync::OnceLock<bool>,
}

/// A `text/html` part to rewrite: its decoded text, how to encode it back, where it is.
struct HtmlPart {
    html: String,
    encoding: &'static encoding_rs::Encoding,
    cte: Cte,
    /// The decoded text was pure ASCII (a 7bit part must stay so).
    ascii: bool,
    /// Where the part's own header starts, when it lies in the body (a part of a
    /// multipart, whose Content-Transfer-Encoding the body may change).
    header_start: Option<usize>,
    start: usize,
    end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cte {
    SevenBit,
    EightBit,
    QuotedPrintable,
    Base64,
}

impl Cte {
    fn parse(value: Option<&str>) -> Option<Cte> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "7bit") => Some(Cte::SevenBit),
            Some("8bit" | "binary") => Some(Cte::EightBit),
            Some("quoted-printable") => Some(Cte::QuotedPrintable),
            Some("base64") => Some(Cte::Base64),
            // x-uuencode and friends: not ours to rewrite.
            Some(_) => None,
        }
    }
}

/// Decode a part's body the way it will be encoded back: the transfer encoding, then the
/// charset with encoding_rs (mail-parser lacks the multi-byte charsets in this build, and
/// decoding and encoding must agree). `None` leaves the part byte for byte: an unknown or
/// write-only charset (UTF-16, UTF-7), bytes invalid in the charset, a broken encoding.
fn decode_part(
    raw: &[u8],
    cte: Cte,
    charset: Option<&str>,
) -> Option<(String, &'static encoding_rs::Encoding)> {
    use mail_parser::decoders::{base64::base64_decode, quoted_printable::quoted_printable_decode};
    let bytes = match cte {
        Cte::SevenBit | Cte::EightBit => std::borrow::Cow::Borrowed(raw),
        Cte::QuotedPrintable => quoted_printable_decode(raw)?.into(),
        Cte::Base64 => base64_decode(raw)?.into(),
    };
    let encoding = match charset {
        Some(label) => encoding_rs::Encoding::for_label(label.trim().as_bytes())?,
        // No charset (RFC 2045 says US-ASCII): UTF-8 when it is, else a byte-for-byte one.
        None if std::str::from_utf8(&bytes).is_ok() => encoding_rs::UTF_8,
        None => encoding_rs::WINDOWS_1252,
    };
    if encoding.output_encoding() != encoding {
        return None;
    }
    let text = encoding.decode_without_bom_handling_and_without_replacement(&bytes)?;
    Some((text.into_owned(), encoding))
}

/// mail-parser's `parse`, with a panic inside it (its internal assertions fire on some
/// hostile input in debug builds; found by fuzzing) answered as "not a message": no input
/// may take the daemon down.
pub fn parse_message(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .ok()
        .flatten()
}

impl Prepared {
    /// Parse `headers` + `body`; find the `text/html` parts (never `text/x-amp-html`,
    /// never attachments, at any depth) that can be decoded and encoded back faithfully.
    pub fn new(headers: &[HeaderField], body: &[u8]) -> Result<Prepared, MimeError> {
        let (raw, body_start) = whole_message(headers, body);
        let message = parse_message(&raw).ok_or(MimeError::Unparseable)?;
        let mut parts = Vec::new();
        for part in &message.parts {
            if !matches!(part.body, PartType::Html(_)) {
                continue;
            }
            if !is_type(part, "text", "html") && part.content_type().is_some()
                || is_attachment(part)
            {
                continue;
            }
            let (start, end) = (part.offset_body as usize, part.offset_end as usize);
            if start < body_start || end > raw.len() || start > end {
                return Err(MimeError::Unparseable);
            }
            let Some(cte) = Cte::parse(part.content_transfer_encoding()) else {
                continue;
            };
            let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
            let Some((html, encoding)) = decode_part(&raw[start..end], cte, charset) else {
                continue;
            };
            let header_start = part.offset_header as usize;
            parts.push(HtmlPart {
                ascii: html.is_ascii(),
                html,
                encoding,
                cte,
                header_start: (body_start..=start)
                    .contains(&header_start)
                    .then_some(header_start),
                start,
                end,
            });
        }
        parts.sort_by_key(|p| p.start);
        let part_count = message.parts.len();
        drop(message);
        Ok(Prepared {
            raw,
            body_start,
            parts,
            part_count,
            structure_kept: std::sync::OnceLock::new(),
        })
    }

    /// The body for one recipient, or `None` when nothing changes. Each part is
    /// re-encoded in its own charset and transfer encoding, with one exception: a 7bit or
    /// 8bit part of a multipart whose lines cannot be folded safely under 998 octets
    /// becomes quoted-printable, and its Content-Transfer-Encoding header says so.
    pub fn rewrite(
        &self,
        opts: &BodyOptions,
        links: &dyn LinkMaker,
    ) -> Result<Option<Vec<u8>>, MimeError> {
        if self.parts.is_empty() || !(opts.open_tracking || opts.click_tracking || opts.inline_css)
        {
            return Ok(None);
        }
        let raw = &self.raw;
        let mut out = Vec::with_capacity(raw.len() - self.body_start + 8192);
        let mut pos = self.body_start;
        for part in &self.parts {
            if part.start < pos || part.header_start.is_some_and(|h| h < pos) {
                return Err(MimeError::Unparseable);
            }
            // A part that does not end with a line break, with text after it on the same
            // line (a lenient parser's boundary): its new last line would join that text
            // and could pass 998 octets. Such a part is left as it came.
            let old = &raw[part.start..part.end];
            if part.end < raw.len()
                && !old.ends_with(b"\n")
                && raw[part.end] != b'\r'
                && raw[part.end] != b'\n'
            {
                continue;
            }
            let mut rewritten = html::rewrite_html(&part.html, opts, links)?;
            if part.cte == Cte::SevenBit && part.ascii && !rewritten.is_ascii() {
                // CSS inlining may turn `&eacute;` into a raw `é`; a 7bit part stays ASCII.
                rewritten = encode::ascii_html(&rewritten);
            }
            let bytes = encode::to_charset(&rewritten, part.encoding);
            let mut header = None;
            let mut encoded = match part.cte {
                Cte::Base64 => encode::base64_lines(&bytes),
                Cte::QuotedPrintable => encode::quoted_printable(&bytes),
                Cte::SevenBit | Cte::EightBit => match encode::crlf_short_lines(&bytes) {
                    Some(lines) => lines,
                    None => {
                        let new_header = part
                            .header_start
                            .and_then(|h| Some((h, set_qp_header(&raw[h..part.start])?)));
                        match new_header {
                            Some(new_header) => {
                                header = Some(new_header);
                                encode::quoted_printable(&bytes)
                            }
                            // The top-level header is the milter's, not ours to change.
                            None => encode::fold_lines(&bytes),
                        }
                    }
                },
            };
            // Keep the line break(s) that separated the old body from what follows.
            let tail = &old[old.trim_ascii_end().len()..];
            while encoded.last().is_some_and(|b| b.is_ascii_whitespace()) {
                encoded.pop();
            }
            encoded.extend(tail.iter().filter(|b| **b == b'\r' || **b == b'\n'));
            match header {
                Some((h, new_header)) => {
                    out.extend_from_slice(&raw[pos..h]);
                    out.extend_from_slice(&new_header);
                }
                None => out.extend_from_slice(&raw[pos..part.start]),
            }
            out.extend_from_slice(&encoded);
            pos = part.end;
        }
        out.extend_from_slice(&raw[pos..]);
        // Hostile input (boundary-like text hidden in an encoding, found by fuzzing) must
        // never make the rewrite split or merge parts: then the body goes out unchanged.
        let kept = *self.structure_kept.get_or_init(|| {
            let mut whole = raw[..self.body_start].to_vec();
            whole.extend_from_slice(&out);
            parse_message(&whole).is_some_and(|m| m.parts.len() == self.part_count)
        });
        if !kept {
            return Err(MimeError::StructureChanged);
        }
        Ok(Some(out))
    }
}

/// A part's header block (up to and including the empty line) with its
/// Content-Transfer-Encoding field, folded lines included, replaced by quoted-printable;
/// `None` when the block has no empty line to end it.
fn set_qp_header(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 48);
    let mut skipping = false;
    for line in block.split_inclusive(|&b| b == b'\n') {
        if line.trim_ascii_end().is_empty() {
            out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n");
            out.extend_from_slice(line);
            return Some(out);
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            skipping = line.split(|&b| b == b':').next().is_some_and(|name| {
                name.trim_ascii()
                    .eq_ignore_ascii_case(b"content-transfer-encoding")
            });
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    None
}

/// Rewrite the message's `text/html` parts for one recipient: [`Prepared::new`] then
/// [`Prepared::rewrite`].
pub fn rewrite(
    headers: &[HeaderField],
    body: &[u8],
    opts: &BodyOptions,
    links: &dyn LinkMaker,
) -> Result<Option<Vec<u8>>, MimeError> {
    if !(opts.open_tracking || opts.click_tracking || opts.inline_css) {
        return Ok(None);
    }
    Prepared::new(headers, body)?.rewrite(opts, links)
}

/// docs/behaviour.md section 2: a `text/x-amp-html` part must be a child of a `multipart/alternative`
/// that also holds a `text/html` or `text/plain` part. `Ok(true)` when the message has
/// such a part (events' `amp_enabled`).
pub fn check_amp(headers: &[HeaderField], body: &[u8]) -> Result<bool, AmpError> {
    let (raw, _) = whole_message(headers, body);
    let Some(message) = parse_message(&raw) else {
        return Ok(false);
    };
    let parts = &message.parts;
    let mut found = false;
    for (id, part) in parts.iter().enumerate() {
        if !is_type(part, "text", "x-amp-html") {
            continue;
        }
        let parent = parts.iter().find(|p| {
            p.sub_parts()
                .is_some_and(|subs| subs.contains(&(id as u32)))
        });
        let ok = parent.is_some_and(|p| {
            is_type(p, "multipart", "alternative")
                && p.sub_parts().unwrap_or_default().iter().any(|&sib| {
                    parts
                        .get(sib as usize)
                        .is_some_and(|s| is_type(s, "text", "html") || is_type(s, "text", "plain"))
                })
        });
        if !ok {
            return Err(AmpError);
        }
        found = true;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_header() {
        assert_eq!(
            set_qp_header(b"Content-Type: text/html\r\nContent-Transfer-Encoding:\r\n  7bit\r\nX-A: b\r\n\r\n").unwrap(),
            b"Content-Type: text/html\r\nX-A: b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        );
        assert_eq!(
            set_qp_header(b"\r\n").unwrap(),
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        );
        assert_eq!(set_qp_header(b"Content-Type: text/html\r\n"), None);
    }

    #[test]
    fn decoding_agrees_with_encoding() {
        let (text, enc) = decode_part(b"\x82\xa0", Cte::EightBit, Some("Shift_JIS")).unwrap();
        assert_eq!((text.as_str(), enc), ("\u{3042}", encoding_rs::SHIFT_JIS));
        assert_eq!(decode_part(b"abc", Cte::SevenBit, Some("utf-16")), None);
        assert_eq!(decode_part(b"abc", Cte::SevenBit, Some("x-unknown")), None);
        assert_eq!(decode_part(b"\xff", Cte::EightBit, Some("utf-8")), None);
        assert_eq!(decode_part(b"=ZZ", Cte::QuotedPrintable, None), None);
        let (text, enc) = decode_part(b"caf\xe9", Cte::EightBit, None).unwrap();
        assert_eq!(
            (text.as_str(), enc),
            ("caf\u{e9}", encoding_rs::WINDOWS_1252)
        );
        assert_eq!(Cte::parse(Some(" Base64 ")), Some(Cte::Base64));
        assert_eq!(Cte::parse(Some("x-uuencode")), None);
    }
}
