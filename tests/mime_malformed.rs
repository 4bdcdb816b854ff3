//! Broken MIME never panics: every truncation and many byte mutations of a realistic
//! nested message go through `rewrite` and `check_amp`, which answer an error, `None`,
//! or a body; a body they answer still parses.

use msys_milter::api::copies::HeaderField;
use msys_milter::mime::{BodyOptions, LinkMaker, check_amp, rewrite};

struct Short;

impl LinkMaker for Short {
    fn click(&self, index: u16, _target: &str) -> String {
        format!("https://t.example/c/{index}")
    }
    fn open(&self) -> String {
        "https://t.example/o".into()
    }
}

const OPTS: BodyOptions = BodyOptions {
    open_tracking: true,
    click_tracking: true,
    inline_css: true,
};

const BODY: &str = "preamble\r\n--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nplain\r\n--a\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<html><head><style>p{color:red}</style></head><body><p>Caf=E9</p><a href=3D\"https://a.example/?x=3D1&amp;y=3D2\">a</a></body></html>\r\n--a\r\nContent-Type: text/x-amp-html\r\n\r\n<html amp4email></html>\r\n--a\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGEgaHJlZj0iaHR0cHM6Ly9iLmV4YW1wbGUvIj5iPC9hPg==\r\n--a--\r\n--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=x.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--m--\r\nepilogue\r\n";

fn headers() -> Vec<HeaderField> {
    vec![
        HeaderField::new("MIME-Version", "1.0"),
        HeaderField::new("Content-Type", "multipart/mixed;\n\tboundary=\"m\""),
    ]
}

fn exercise(headers: &[HeaderField], body: &[u8]) {
    let _ = check_amp(headers, body);
    if let Ok(Some(out)) = rewrite(headers, body, &OPTS, &Short) {
        let _ = check_amp(headers, &out);
        assert!(!out.is_empty() || body.is_empty());
    }
}

#[test]
fn the_intact_message_is_rewritten() {
    let out = rewrite(&headers(), BODY.as_bytes(), &OPTS, &Short)
        .unwrap()
        .unwrap();
    let mut raw = b"Content-Type: multipart/mixed; boundary=m\r\n\r\n".to_vec();
    raw.extend_from_slice(&out);
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let html: Vec<String> = parsed
        .parts
        .iter()
        .filter_map(|p| match &p.body {
            mail_parser::PartType::Html(h) => Some(h.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        html[0].contains("<p style=\"color: red;\">Café</p><a href=\"https://t.example/c/0\">"),
        "{html:?}"
    );
    // Links are counted per HTML part.
    assert!(
        html[1].contains("<a href=\"https://t.example/c/0\">b</a>"),
        "{html:?}"
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("<html amp4email></html>") && text.contains("JVBERi0xLjQK"));
    assert!(text.starts_with("preamble\r\n--m\r\n") && text.ends_with("--m--\r\nepilogue\r\n"));
    assert_eq!(check_amp(&headers(), text.as_bytes()), Ok(true));
}

#[test]
fn every_truncation() {
    let h = headers();
    for len in 0..BODY.len() {
        exercise(&h, &BODY.as_bytes()[..len]);
    }
}

#[test]
fn byte_mutations() {
    let h = headers();
    // A small deterministic generator: the same mutations on every run.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specials = [
        b'\r', b'\n', b'-', b'=', b'"', b'<', b'>', b';', 0, 0xFF, 0xE9,
    ];
    for _ in 0..3000 {
        let mut body = BODY.as_bytes().to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % body.len();
            match next() % 3 {
                0 => body[at] = specials[(next() as usize) % specials.len()],
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, specials[(next() as usize) % specials.len()]),
            }
        }
        exercise(&h, &body);
    }
}

#[test]
fn broken_top_level_headers() {
    for ct in [
        "multipart/mixed",
        "multipart/mixed; boundary=",
        "multipart/mixed; boundary=\"",
        "text/html; charset=\"",
        "multipart/alternative; boundary=m",
        "",
    ] {
        let h = vec![HeaderField::new("Content-Type", ct)];
        exercise(&h, BODY.as_bytes());
    }
    exercise(&[], BODY.as_bytes());
    exercise(&[], b"");
    exercise(&[HeaderField::new("Content-Type", "text/html")], b"");
}
