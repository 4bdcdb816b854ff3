//! Charsets, transfer encodings and line lengths of rewritten HTML parts, with the real
//! tracking links: what comes out decodes to the same document, with every tracked link
//! leading (through its signed token) to the original target.

use msys_milter::api::copies::HeaderField;
use msys_milter::mime::{BodyOptions, LinkMaker, rewrite};
use msys_milter::tracking::token::{MAX_URL_LEN, verify};
use msys_milter::tracking::{Keys, Kind, Links};

const ALL: BodyOptions = BodyOptions {
    open_tracking: true,
    click_tracking: true,
    inline_css: false,
};

fn headers(content_type: &str, cte: Option<&str>) -> Vec<HeaderField> {
    let mut h = vec![
        HeaderField::new("MIME-Version", "1.0"),
        HeaderField::new("Content-Type", content_type),
    ];
    if let Some(cte) = cte {
        h.push(HeaderField::new("Content-Transfer-Encoding", cte));
    }
    h
}

fn parse(headers: &[HeaderField], body: &[u8]) -> mail_parser::Message<'static> {
    let mut raw = Vec::new();
    for h in headers {
        raw.extend_from_slice(h.name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(&h.value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    mail_parser::MessageParser::default()
        .parse(&raw)
        .unwrap()
        .into_owned()
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Every `href="..."` value of `html` (the attribute name in any case).
fn hrefs(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    lower
        .match_indices("href=\"")
        .map(|(at, m)| {
            let rest = &html[at + m.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// A LinkMaker whose tracked URLs are as long as `len`, to test line folding.
struct Long(usize);

impl LinkMaker for Long {
    fn click(&self, index: u16, _target: &str) -> String {
        format!("https://t.example/c/{index}/{}", "x".repeat(self.0))
    }
    fn open(&self) -> String {
        "https://t.example/o".into()
    }
}

#[test]
fn real_tokens_lead_to_the_decoded_targets() {
    let keys = Keys::new(&["secret-0123456789abcdef"]).unwrap();
    let links = Links {
        base_url: "https://track.example.com/",
        keys: &keys,
        transmission_id: 7,
        recipient: "r@example.org",
        expires: 2_000_000_000,
    };
    let html = "<html><body><A HREF=\"HTTPS://Shop.Example/a?x=1&amp;y=&quot;2&quot;\">a</A>\r\n<a href=\"https://wrapped.example/a\r\n  /b\">w</a><a href=\"https://long.example/?q=LONG\">too long</a></body></html>\r\n"
        .replace("LONG", &"q".repeat(MAX_URL_LEN));
    let h = headers("text/html; charset=utf-8", None);
    let out = rewrite(&h, html.as_bytes(), &ALL, &links).unwrap().unwrap();
    let out = String::from_utf8(out).unwrap();
    let tracked: Vec<_> = hrefs(&out)
        .into_iter()
        .filter_map(|href| {
            href.strip_prefix("https://track.example.com/c/")
                .map(|t| verify(&keys, t, 1_000_000_000).unwrap())
        })
        .collect();
    assert_eq!(tracked.len(), 2, "{out}");
    assert_eq!(
        (
            tracked[0].kind,
            tracked[0].url.as_str(),
            tracked[0].link_index
        ),
        (Kind::Click, "HTTPS://Shop.Example/a?x=1&y=\"2\"", 0)
    );
    assert_eq!(tracked[1].url, "https://wrapped.example/a  /b");
    assert!(
        hrefs(&out).iter().any(|h| h.replace("\r\n", "")
            == format!("https://long.example/?q={}", "q".repeat(MAX_URL_LEN))),
        "a link too long for a token stays as it is"
    );
    // The initial_open pixel at the top of the body, the open pixel at its end.
    let pixels: Vec<_> = out
        .split("<img src=\"")
        .skip(1)
        .map(|p| {
            let url = &p[..p.find('"').unwrap()];
            verify(
                &keys,
                url.strip_prefix("https://track.example.com/o/").unwrap(),
                0,
            )
            .unwrap()
        })
        .map(|t| (t.kind, t.transmission_id, t.recipient))
        .collect();
    assert_eq!(
        pixels,
        [
            (Kind::InitialOpen, 7, "r@example.org".to_owned()),
            (Kind::Open, 7, "r@example.org".to_owned())
        ]
    );
}

#[test]
fn shift_jis_and_iso_2022_jp_survive() {
    let text = "<html><body><p>こんにちは、世界</p><a href=\"https://jp.example/\">リンク</a></body></html>\r\n";
    for (charset, cte) in [("Shift_JIS", "8bit"), ("ISO-2022-JP", "7bit")] {
        let encoding = encoding_rs::Encoding::for_label(charset.as_bytes()).unwrap();
        let (body, _, _) = encoding.encode(text);
        let h = headers(&format!("text/html; charset={charset}"), Some(cte));
        let out = rewrite(&h, &body, &ALL, &Long(0)).unwrap().unwrap();
        let (decoded, _, errors) = encoding.decode(&out);
        assert!(!errors, "{charset}");
        assert!(
            decoded
                .contains("<p>こんにちは、世界</p><a href=\"https://t.example/c/0/\">リンク</a>")
                && decoded.contains("<img src=\"https://t.example/o\""),
            "{charset}: {decoded}"
        );
        if cte == "7bit" {
            assert!(out.is_ascii());
        }
    }
}

#[test]
fn parts_that_cannot_be_written_back_are_left_alone() {
    // UTF-16 (encoding_rs writes it as UTF-8), an unknown charset, bytes invalid in
    // the declared charset, a broken quoted-printable, an unknown transfer encoding.
    for (ct, cte, body) in [
        ("text/html; charset=utf-16le", None, b"<\0a\0>\0".as_slice()),
        (
            "text/html; charset=x-martian",
            None,
            b"<a href=\"https://a.example/\">",
        ),
        (
            "text/html; charset=utf-8",
            Some("8bit"),
            b"<a href=\"https://a.example/\">\xff</a>",
        ),
        (
            "text/html",
            Some("quoted-printable"),
            b"<a href=3D\"https://a.example/\">=ZZ</a>",
        ),
        (
            "text/html",
            Some("x-uuencode"),
            b"<a href=\"https://a.example/\">x</a>",
        ),
    ] {
        let h = headers(ct, cte);
        assert_eq!(rewrite(&h, body, &ALL, &Long(0)).unwrap(), None, "{ct}");
    }
}

#[test]
fn a_7bit_part_with_an_overlong_line_becomes_quoted_printable() {
    let html = "<html><body><a href=\"https://a.example/\">one</a></body></html>";
    let body = format!(
        "--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\nContent-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\nX-Keep: yes\r\n\r\n{html}\r\n--b--\r\n"
    );
    let h = headers("multipart/alternative; boundary=b", None);
    let out = rewrite(&h, body.as_bytes(), &ALL, &Long(1500))
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.starts_with("--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\nContent-Type: text/html; charset=us-ascii\r\nX-Keep: yes\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n--b--\r\n"));
    assert!(lines(&out).all(|l| l.len() <= 76), "{text}");
    let parsed = parse(&h, &out);
    let decoded = parsed.body_html(0).unwrap();
    assert_eq!(
        hrefs(&decoded),
        [format!("https://t.example/c/0/{}", "x".repeat(1500))]
    );

    // Lines that fold at tags stay 7bit.
    let out = rewrite(&h, body.as_bytes(), &ALL, &Long(500))
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.contains("Content-Transfer-Encoding: 7bit\r\n") && !text.contains("quoted-printable")
    );
    assert!(lines(&out).all(|l| l.len() <= 998));
}

#[test]
fn a_single_part_folds_inside_the_url_where_it_must() {
    let h = headers("text/html; charset=utf-8", Some("8bit"));
    let body = "<html><body><p>Grüße</p><a href=\"https://a.example/\">one</a></body></html>\r\n";
    let out = rewrite(&h, body.as_bytes(), &ALL, &Long(3000))
        .unwrap()
        .unwrap();
    assert!(lines(&out).all(|l| l.len() <= 998));
    let text = String::from_utf8(out).unwrap();
    // Browsers remove line breaks from URLs, so the link still leads to the same place.
    let joined: Vec<String> = hrefs(&text).iter().map(|h| h.replace("\r\n", "")).collect();
    assert_eq!(
        joined,
        [format!("https://t.example/c/0/{}", "x".repeat(3000))]
    );
    assert!(text.contains("<p>Grüße</p>"));
}

#[test]
fn css_inlining_keeps_media_queries_and_7bit_stays_ascii() {
    let h = headers("text/html; charset=us-ascii", Some("7bit"));
    let body = b"<html><head><style>p { color: red } a:hover { color: blue } @media (max-width: 600px) { p { font-size: 20px } }</style></head><body><p>Caf&eacute;</p><a href=\"https://a.example/\">a</a></body></html>\r\n";
    let opts = BodyOptions {
        inline_css: true,
        ..ALL
    };
    let out = rewrite(&h, body, &opts, &Long(0)).unwrap().unwrap();
    assert!(out.is_ascii() && lines(&out).all(|l| l.len() <= 998));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("<p style=\"color: red"), "{text}");
    assert!(
        text.contains("@media") && text.contains("a:hover"),
        "{text}"
    );
    assert!(
        text.contains("Caf&#xE9;") || text.contains("Caf&eacute;"),
        "{text}"
    );
    assert!(text.contains("href=\"https://t.example/c/0/\""));

    // Off: the style element is untouched.
    let out = rewrite(&h, body, &ALL, &Long(0)).unwrap().unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("<style>p { color: red }") && text.contains("<p>Caf&eacute;</p>"));
}
