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
    #[error(transparent)]
    Html(#[from] html::HtmlError),
}

/// The AMPHTML rule (SPEC section 3) is broken.
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
}

/// A `text/html` part to rewrite: its decoded text, how to encode it back, where it is.
struct HtmlPart {
    html: String,
    charset: Option<String>,
    cte: String,
    start: usize,
    end: usize,
}

impl Prepared {
    /// Parse `headers` + `body`; find the `text/html` parts (never `text/x-amp-html`,
    /// never attachments, at any depth).
    pub fn new(headers: &[HeaderField], body: &[u8]) -> Result<Prepared, MimeError> {
        let (raw, body_start) = whole_message(headers, body);
        let message = MessageParser::default()
            .parse(&raw)
            .ok_or(MimeError::Unparseable)?;
        let mut parts = Vec::new();
        for part in &message.parts {
            let PartType::Html(html) = &part.body else {
                continue;
            };
            if !is_type(part, "text", "html") && part.content_type().is_some()
                || is_attachment(part)
            {
                continue;
            }
            let (start, end) = (part.offset_body as usize, part.offset_end as usize);
            if start < body_start || end > raw.len() || start > end {
                return Err(MimeError::Unparseable);
            }
            parts.push(HtmlPart {
                html: html.to_string(),
                charset: part
                    .content_type()
                    .and_then(|ct| ct.attribute("charset"))
                    .map(str::to_owned),
                cte: part
                    .content_transfer_encoding()
                    .unwrap_or("7bit")
                    .trim()
                    .to_ascii_lowercase(),
                start,
                end,
            });
        }
        parts.sort_by_key(|p| p.start);
        drop(message);
        Ok(Prepared {
            raw,
            body_start,
            parts,
        })
    }

    /// The body for one recipient, or `None` when nothing changes. Headers stay as they
    /// are: each part is re-encoded in its own charset and transfer encoding.
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
            if part.start < pos {
                return Err(MimeError::Unparseable);
            }
            let rewritten = html::rewrite_html(&part.html, opts, links)?;
            let bytes = encode::to_charset(&rewritten, part.charset.as_deref());
            let mut encoded = match part.cte.as_str() {
                "base64" => encode::base64_lines(&bytes),
                "quoted-printable" => encode::quoted_printable(&bytes),
                _ => encode::crlf_short_lines(&bytes),
            };
            // Keep the line break(s) that separated the old body from what follows.
            let old = &raw[part.start..part.end];
            let tail = &old[old.trim_ascii_end().len()..];
            while encoded.last().is_some_and(|b| b.is_ascii_whitespace()) {
                encoded.pop();
            }
            encoded.extend(tail.iter().filter(|b| **b == b'\r' || **b == b'\n'));
            out.extend_from_slice(&raw[pos..part.start]);
            out.extend_from_slice(&encoded);
            pos = part.end;
        }
        out.extend_from_slice(&raw[pos..]);
        Ok(Some(out))
    }
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

/// SPEC section 3: a `text/x-amp-html` part must be a child of a `multipart/alternative`
/// that also holds a `text/html` or `text/plain` part.
pub fn check_amp(headers: &[HeaderField], body: &[u8]) -> Result<(), AmpError> {
    let (raw, _) = whole_message(headers, body);
    let Some(message) = MessageParser::default().parse(&raw) else {
        return Ok(());
    };
    let parts = &message.parts;
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
    }
    Ok(())
}
