//! HTML part rewriting on real MIME: tracked links, the open pixel, CSS inlining,
//! transfer encodings and charsets kept, other parts byte for byte, the AMPHTML rule.

use msys_milter::api::copies::HeaderField;
use msys_milter::mime::{BodyOptions, LinkMaker, check_amp, rewrite};
use std::cell::RefCell;

/// Tracked URLs that say which link they replace; remembers the targets.
#[derive(Default)]
struct Recorder(RefCell<Vec<String>>);

impl LinkMaker for Recorder {
    fn click(&self, index: u16, target: &str) -> String {
        self.0.borrow_mut().push(target.to_owned());
        format!("https://t.example/c/{index}")
    }
    fn open(&self) -> String {
        "https://t.example/o/pixel".into()
    }
}

const CLICK: BodyOptions = BodyOptions {
    open_tracking: false,
    click_tracking: true,
    inline_css: false,
};
const ALL: BodyOptions = BodyOptions {
    open_tracking: true,
    click_tracking: true,
    inline_css: false,
};

/// Split a test message into the MTA's view: headers (LF-folded values) and CRLF body.
fn split(message: &str) -> (Vec<HeaderField>, Vec<u8>) {
    let message = message.replace("\r\n", "\n");
    let (head, body) = message.split_once("\n\n").unwrap();
    let mut headers: Vec<HeaderField> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().unwrap();
            last.value.push(b'\n');
            last.value.extend_from_slice(line.as_bytes());
        } else {
            let (name, value) = line.split_once(':').unwrap();
            headers.push(HeaderField::new(name, value.trim_start()));
        }
    }
    (headers, body.replace('\n', "\r\n").into_bytes())
}

fn parse(headers: &[HeaderField], body: &[u8]) -> mail_parser::Message<'static> {
    let mut raw = Vec::new();
    for h in headers {
        raw.extend_from_slice(
            format!(
                "{}: {}\r\n",
                h.name,
                String::from_utf8_lossy(&h.value).replace('\n', "\r\n")
            )
            .as_bytes(),
        );
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    mail_parser::MessageParser::default()
        .parse(&raw)
        .unwrap()
        .into_owned()
}

fn max_line(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

const HTML: &str = r##"<!DOCTYPE html><HTML><head><style>p { color: red }</style></head><BODY>
<table><tr><td><table><tr><td><A HREF="https://shop.example.com/a?x=1&amp;y=2">nested</A></td></tr></table></td></tr></table>
<a href="http://plain.example/">plain</a> <a href="mailto:me@example.com">mail</a> <a href="tel:+4100">tel</a>
<a href="#top">anchor</a> <a href="/relative/path">relative</a>
<a href="https://no-track.example/" data-msys-clicktrack="0">opted out</a>
<map><area shape="rect" coords="0,0,1,1" href="https://area.example/"></map>
<!-- <a href="https://in-comment.example/">x</a> -->
<script>var s = '<a href="https://in-script.example/">x</a>';</script>
<p>Grüße</p>
</BODY></HTML>"##;

#[test]
fn links_in_a_quoted_printable_alternative() {
    let qp_html = String::from_utf8(
        // The test's own QP encoding of HTML: soft-wrapped, `=` escaped, UTF-8.
        HTML.replace('=', "=3D")
            .replace("ü", "=C3=BC")
            .replace("ß", "=C3=9F")
            .into_bytes(),
    )
    .unwrap();
    let message = format!(
        "Content-Type: multipart/alternative; boundary=\"b1\"\nMIME-Version: 1.0\n\npreamble\n--b1\nContent-Type: text/plain; charset=utf-8\n\nplain text, untouched\n--b1\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n{qp_html}\n--b1--\nepilogue\n"
    );
    let (headers, body) = split(&message);
    let links = Recorder::default();
    let out = rewrite(&headers, &body, &ALL, &links).unwrap().unwrap();
    assert_eq!(
        *links.0.borrow(),
        [
            "https://shop.example.com/a?x=1&y=2",
            "http://plain.example/",
            "https://area.example/"
        ]
    );
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with("preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text, untouched\r\n--b1\r\n"), "{text}");
    assert!(text.ends_with("\r\n--b1--\r\nepilogue\r\n"), "{text}");
    let parsed = parse(&headers, &out);
    let html = parsed.body_html(0).unwrap();
    for kept in [
        "mailto:me@example.com",
        "tel:+4100",
        "href=\"#top\"",
        "/relative/path",
        "https://no-track.example/",
        "in-comment.example",
        "in-script.example",
        "<p>Grüße</p>",
    ] {
        assert!(html.contains(kept), "{kept} missing:\n{html}");
    }
    assert!(!html.contains("data-msys-clicktrack"));
    assert!(
        html.contains("<A HREF=\"https://t.example/c/0\">")
            && html.contains("href=\"https://t.example/c/2\""),
        "{html}"
    );
    assert!(
        html.contains("<img src=\"https://t.example/o/pixel\"")
            && html.find("t.example/o/pixel").unwrap() < html.find("</BODY>").unwrap()
    );
    assert!(max_line(&out) <= 76, "quoted-printable lines");
}

#[test]
fn base64_part_at_depth_three_and_other_parts_byte_for_byte() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode("<html><body><a href=\"https://deep.example/\">x</a></body></html>");
    let attachment = "Content-Type: text/html\nContent-Disposition: attachment; filename=\"page.html\"\n\n<a href=\"https://attached.example/\">keep</a>";
    let amp = "Content-Type: text/x-amp-html; charset=utf-8\n\n<html amp4email><body><a href=\"https://amp.example/\">amp</a></body></html>";
    let message = format!(
        "Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: multipart/related; boundary=r\n\n--r\nContent-Type: multipart/alternative; boundary=a\n\n--a\nContent-Type: text/plain\n\ntext\n--a\n{amp}\n--a\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{b64}\n--a--\n\n--r--\n\n--m\n{attachment}\n--m--\n"
    );
    let (headers, body) = split(&message);
    let links = Recorder::default();
    let out = rewrite(&headers, &body, &CLICK, &links).unwrap().unwrap();
    assert_eq!(*links.0.borrow(), ["https://deep.example/"]);
    let text = String::from_utf8(out.clone()).unwrap();
    let body_text = String::from_utf8(body.clone()).unwrap();
    // Everything around the rewritten part is unchanged.
    let (before, _) = body_text
        .split_once("Content-Transfer-Encoding: base64\r\n\r\n")
        .unwrap();
    assert!(text.starts_with(before));
    let (_, after) = body_text.split_once(&format!("{b64}\r\n")).unwrap();
    assert!(text.ends_with(after), "{text}");
    assert!(
        text.contains(&amp.replace('\n', "\r\n"))
            && text.contains(&attachment.replace('\n', "\r\n"))
    );
    let parsed = parse(&headers, &out);
    assert!(
        parsed
            .body_html(0)
            .unwrap()
            .contains("https://t.example/c/0")
    );
    assert!(max_line(&out) <= 76);
    assert_eq!(check_amp(&headers, &out), Ok(true));
}

#[test]
fn single_part_8bit_latin1_with_long_lines() {
    let long = format!(
        "<html><body><p>{}</p><a href=\"https://x.example/\">Ré</a></body></html>",
        "mot ".repeat(400)
    );
    let mut body: Vec<u8> = long
        .chars()
        .map(|c| if c == 'é' { 0xE9 } else { c as u8 })
        .collect();
    body.extend_from_slice(b"\r\n");
    let headers = vec![
        HeaderField::new("Content-Type", "text/html; charset=ISO-8859-1"),
        HeaderField::new("Content-Transfer-Encoding", "8bit"),
    ];
    let out = rewrite(&headers, &body, &ALL, &Recorder::default())
        .unwrap()
        .unwrap();
    assert!(max_line(&out) <= 998);
    assert!(
        out.windows(3).any(|w| w == b"R\xe9<"),
        "the charset is kept"
    );
    let parsed = parse(&headers, &out);
    let html = parsed.body_html(0).unwrap();
    assert!(
        html.contains(">Ré</a>")
            && html.contains("t.example/c/0")
            && html.contains("t.example/o/pixel")
    );
}

#[test]
fn pixel_appended_without_body_and_inline_css() {
    let headers = vec![HeaderField::new("Content-Type", "text/html")];
    let out = rewrite(
        &headers,
        b"<p>no body tag</p>\r\n",
        &ALL,
        &Recorder::default(),
    )
    .unwrap()
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("<p>no body tag</p>\r\n<img src=\"https://t.example/o/pixel\""),
        "{out}"
    );

    let css = b"<html><head><style>p { color: red }</style></head><body><p>x</p></body></html>\r\n";
    let inline = BodyOptions {
        inline_css: true,
        ..Default::default()
    };
    let out = String::from_utf8(
        rewrite(&headers, css, &inline, &Recorder::default())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(out.contains("<p style=\"color: red"), "{out}");
    assert_eq!(
        rewrite(&headers, css, &BodyOptions::default(), &Recorder::default()).unwrap(),
        None
    );
    // Plain text messages are left alone.
    let plain = vec![HeaderField::new("Content-Type", "text/plain")];
    assert_eq!(
        rewrite(
            &plain,
            b"https://x.example/\r\n",
            &ALL,
            &Recorder::default()
        )
        .unwrap(),
        None
    );
}

#[test]
fn amp_rule_both_ways() {
    let amp = "Content-Type: text/x-amp-html\n\n<html amp4email></html>";
    let good = format!(
        "Content-Type: multipart/alternative; boundary=a\n\n--a\nContent-Type: text/plain\n\nx\n--a\n{amp}\n--a--\n"
    );
    let (h, b) = split(&good);
    assert_eq!(check_amp(&h, &b), Ok(true));
    let no_sibling =
        format!("Content-Type: multipart/alternative; boundary=a\n\n--a\n{amp}\n--a--\n");
    let in_mixed = format!(
        "Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: text/html\n\nx\n--a\n{amp}\n--a--\n"
    );
    for bad in [no_sibling, in_mixed, amp.to_owned()] {
        let (h, b) = split(&bad);
        assert!(check_amp(&h, &b).is_err(), "{bad}");
    }
}

#[test]
fn malformed_mime_never_panics() {
    for message in [
        "Content-Type: multipart/alternative\n\n--x\nContent-Type: text/html\n\n<a href=\"https://a.example/\">",
        "Content-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n!!!notbase64",
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/mixed; boundary=b\n\n--b\n",
        "Content-Type: text/html; charset=x-unknown\nContent-Transfer-Encoding: quoted-printable\n\n=ZZ<a href=https://a.example/>x</a>",
        "Content-Type: text/html\n\n\0\u{1}<a href='https://a.example/\0'>",
    ] {
        let (h, b) = split(message);
        let _ = rewrite(&h, &b, &ALL, &Recorder::default());
        let _ = check_amp(&h, &b);
    }
}

#[test]
fn base_href_does_not_make_relative_links_tracked() {
    let headers = vec![HeaderField::new("Content-Type", "text/html")];
    let html = b"<html><head><base href=\"https://base.example/\"></head><body><a href=\"page\">rel</a><a href=\"https://abs.example/\">abs</a></body></html>\r\n";
    let links = Recorder::default();
    let out = String::from_utf8(rewrite(&headers, html, &CLICK, &links).unwrap().unwrap()).unwrap();
    assert_eq!(*links.0.borrow(), ["https://abs.example/"]);
    assert!(
        out.contains("<a href=\"page\">rel</a>")
            && out.contains("<base href=\"https://base.example/\">"),
        "{out}"
    );
}
