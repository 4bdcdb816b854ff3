//! Writing a rewritten text part back: its charset, its transfer encoding, and lines
//! that never exceed what SMTP allows.

use base64::Engine as _;

/// Longest line SMTP carries, without its CRLF.
pub const MAX_LINE: usize = 998;

/// `text` in `encoding`; characters it lacks become HTML character references
/// (encoding_rs's HTML mode), which is right for the HTML parts we rewrite.
pub fn to_charset(text: &str, encoding: &'static encoding_rs::Encoding) -> Vec<u8> {
    let (bytes, _, _) = encoding.encode(text);
    bytes.into_owned()
}

/// `html` with every non-ASCII character as a character reference (`&#xE9;`), for a 7bit
/// part.
pub fn ascii_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() + 16);
    for c in html.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("&#x{:X};", u32::from(c)));
        }
    }
    out
}

/// Base64 with CRLF line breaks every 76 characters.
pub fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Quoted-printable (RFC 2045): lines of at most 76 characters, soft breaks `=`, CRLF
/// line ends kept as hard breaks.
pub fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 11 / 10);
    let mut line_len = 0;
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (n, raw_line) in lines.iter().enumerate() {
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            // A `-` that starts a line is encoded: the line could otherwise read as a
            // MIME boundary (`--b`) once decoded text such as `=2D=2Db` is re-encoded.
            let literal = (b == b' ' || b == b'\t') && !last
                || (33..=126).contains(&b) && b != b'=' && !(b == b'-' && line_len == 0);
            let width = if literal { 1 } else { 3 };
            // Leave room for the soft break's `=`.
            if line_len + width > 75 {
                out.extend_from_slice(b"=\r\n");
                line_len = 0;
            }
            if literal {
                out.push(b);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            line_len += width;
        }
        if n + 1 < lines.len() {
            out.extend_from_slice(b"\r\n");
            line_len = 0;
        }
    }
    out
}

/// CRLF line ends, and no line over [`MAX_LINE`] octets: a longer line of a 7bit/8bit
/// HTML part is broken at a space or after a `>` outside quoted attribute values (white
/// space to HTML). `None` when some line has no such place: the part then needs
/// quoted-printable, or [`fold_lines`].
pub fn crlf_short_lines(bytes: &[u8]) -> Option<Vec<u8>> {
    fold(bytes, true)
}

/// Like [`crlf_short_lines`], but where no safe place exists a line is broken inside a
/// quoted attribute value (browsers drop line breaks from URLs, so `href` and `src`
/// survive), else at any character boundary. For a top-level part, whose
/// Content-Transfer-Encoding header is not the body's to change.
pub fn fold_lines(bytes: &[u8]) -> Vec<u8> {
    fold(bytes, false).unwrap_or_default()
}

/// In strict mode (a part of a multipart) a line that starts with `--` gives `None`: it
/// could read as a boundary, so the part needs quoted-printable.
fn fold(bytes: &[u8], strict: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for (n, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        loop {
            if strict && line.starts_with(b"--") {
                return None;
            }
            if line.len() <= MAX_LINE {
                break;
            }
            let cut = break_point(line, MAX_LINE, strict)?;
            out.extend_from_slice(&line[..cut]);
            out.extend_from_slice(b"\r\n");
            line = &line[cut..];
        }
        out.extend_from_slice(line);
    }
    Some(out)
}

/// Where to break `line` (longer than `max`) within its first `max` bytes: after a space
/// or `>` outside quotes; unless `strict`, else after any space or `>`, else inside a
/// quoted value, else at a UTF-8 character boundary.
fn break_point(line: &[u8], max: usize, strict: bool) -> Option<usize> {
    let mut quote: Option<u8> = None;
    let mut outside = None;
    let mut anywhere = None;
    let mut in_quotes = None;
    for (i, &b) in line[..max].iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) if b & 0xC0 != 0x80 && i > 0 => in_quotes = Some(i),
            _ => {}
        }
        if b == b' ' || b == b'>' {
            anywhere = Some(i + 1);
            if quote.is_none() {
                outside = Some(i + 1);
            }
        }
    }
    if strict || outside.is_some() {
        return outside;
    }
    anywhere.or(in_quotes).or_else(|| {
        let mut cut = max;
        while cut > 1 && (line[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        Some(cut)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_lines_and_round_trip() {
        let text = format!("{}\r\n=é tab\t\r\nend ", "x".repeat(200));
        let qp = quoted_printable(text.as_bytes());
        for line in qp.split(|&b| b == b'\n') {
            assert!(line.len() <= 77, "{}", String::from_utf8_lossy(line));
        }
        let msg = [b"Content-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".as_slice(), &qp].concat();
        let parsed = mail_parser::MessageParser::default().parse(&msg).unwrap();
        assert_eq!(parsed.body_text(0).unwrap(), text);
    }

    #[test]
    fn long_lines_are_broken_outside_quotes() {
        let html = format!(
            "<p>{}</p><a href=\"https://x.example/{}\">y</a>",
            "word ".repeat(300),
            "a".repeat(900)
        );
        let out = crlf_short_lines(html.as_bytes()).unwrap();
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1);
        }
        assert_eq!(String::from_utf8(out).unwrap().replace("\r\n", ""), html);
    }

    #[test]
    fn unsafe_lines_need_qp_or_a_cut_in_the_url() {
        let html = format!("<a href=\"https://x.example/{}\">y</a>", "a".repeat(1200));
        assert_eq!(crlf_short_lines(html.as_bytes()), None);
        let out = fold_lines(html.as_bytes());
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE + 1));
        // After the tag name's space, then inside the URL, where browsers drop it.
        assert!(
            lines.len() == 3
                && lines[0] == b"<a \r"
                && lines[1].starts_with(b"href=\"https://x.example/aaa")
        );
        assert_eq!(String::from_utf8(out).unwrap().replace("\r\n", ""), html);
        // Text without any break point is cut at a character boundary.
        let text = "é".repeat(1000);
        let out = fold_lines(text.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap().replace("\r\n", ""), text);
    }

    #[test]
    fn ascii_only() {
        assert_eq!(ascii_html("a é €"), "a &#xE9; &#x20AC;");
    }

    #[test]
    fn charsets() {
        use encoding_rs::{ISO_2022_JP, UTF_8, WINDOWS_1252};
        assert_eq!(to_charset("René Ω", WINDOWS_1252), b"Ren\xe9 &#937;");
        assert_eq!(to_charset("René", UTF_8), "René".as_bytes());
        assert_eq!(to_charset("€", WINDOWS_1252), b"\x80");
        assert_eq!(to_charset("あ", ISO_2022_JP), b"\x1b$B$\"\x1b(B");
    }
}
