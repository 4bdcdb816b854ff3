//! Writing a rewritten text part back: its charset, its transfer encoding, and lines
//! that never exceed what SMTP allows.

use base64::Engine as _;

/// Longest line SMTP carries, without its CRLF.
pub const MAX_LINE: usize = 998;

/// `text` in `charset`; characters the charset lacks become HTML character references
/// (encoding_rs's HTML mode), which is right for the HTML parts we rewrite.
pub fn to_charset(text: &str, charset: Option<&str>) -> Vec<u8> {
    let encoding = charset
        .and_then(|c| encoding_rs::Encoding::for_label(c.trim().as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    let (bytes, _, _) = encoding.encode(text);
    bytes.into_owned()
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
            let literal =
                (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
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
/// HTML part is broken at a space or after a `>` (white space to HTML), outside quoted
/// attribute values where possible.
pub fn crlf_short_lines(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for (n, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        while line.len() > MAX_LINE {
            let cut = break_point(line, MAX_LINE);
            out.extend_from_slice(&line[..cut]);
            out.extend_from_slice(b"\r\n");
            line = &line[cut..];
        }
        out.extend_from_slice(line);
    }
    out
}

/// Where to break `line` (longer than `max`) within its first `max` bytes: after a
/// space or `>` outside quotes, else after any space or `>`, else at a UTF-8 character
/// boundary.
fn break_point(line: &[u8], max: usize) -> usize {
    let mut quote: Option<u8> = None;
    let mut outside = None;
    let mut anywhere = None;
    for (i, &b) in line[..max].iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            _ => {}
        }
        if b == b' ' || b == b'>' {
            anywhere = Some(i + 1);
            if quote.is_none() {
                outside = Some(i + 1);
            }
        }
    }
    outside.or(anywhere).unwrap_or_else(|| {
        let mut cut = max;
        while cut > 1 && (line[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        cut
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
            "a".repeat(1200)
        );
        let out = crlf_short_lines(html.as_bytes());
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1);
        }
        assert_eq!(String::from_utf8(out).unwrap().replace("\r\n", ""), html);
    }

    #[test]
    fn charsets() {
        assert_eq!(to_charset("René Ω", Some("iso-8859-1")), b"Ren\xe9 &#937;");
        assert_eq!(to_charset("René", None), "René".as_bytes());
        assert_eq!(to_charset("€", Some("windows-1252")), b"\x80");
    }
}
