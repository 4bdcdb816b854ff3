//! Entry points of the fuzz targets (`fuzz/`) and of their corpus replay
//! (`tests/fuzz_corpus.rs`): each takes arbitrary bytes, runs one parser of input that
//! crosses a trust boundary, and asserts what must hold besides "no panic". Not used by
//! the daemon.

use crate::config::Config;

/// The input as text when it is UTF-8 (the parsers of text take `&str`).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A message with an X-MSYS-API header (or anything) through header parsing, validation
/// and the plan, as `msys-milter explain` runs them: the plan never holds a recipient
/// twice, and every reply is an SMTP reply line.
pub fn header(data: &[u8]) {
    let config = Config::default();
    let rcpts = vec!["to@example.org".to_owned()];
    match crate::explain::explain(data, Some("app@example.com"), &rcpts, None, &config) {
        Ok(plan) => {
            let mut seen = std::collections::HashSet::new();
            for r in &plan.recipients {
                assert!(
                    seen.insert(r.address.to_lowercase()),
                    "recipient {} planned twice",
                    r.address
                );
            }
            for c in &plan.copies {
                assert!(
                    plan.recipients
                        .iter()
                        .any(|r| r.address.eq_ignore_ascii_case(&c.address)),
                    "a copy for {} who is not a recipient",
                    c.address
                );
            }
        }
        Err(reply) => {
            let line = reply.to_string();
            assert!(
                line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                "not a reply: {line:?}"
            );
            assert!(
                !line.contains(['\r', '\n']) || line.lines().all(|l| l.len() >= 3),
                "a broken reply: {line:?}"
            );
        }
    }
}

/// A DSN, plain-text bounce or auto-reply, and an ARF report: parsed, and every
/// recipient's status classified.
pub fn feedback(data: &[u8]) {
    let report = crate::feedback::dsn::parse(data);
    for r in &report.recipients {
        let _ = crate::feedback::classify::classify(
            r.status.as_deref(),
            r.diagnostic.as_deref().unwrap_or_default(),
        );
        let _ = r.remote_ip();
    }
    let _ = crate::feedback::arf::parse(data);
}

/// The bounce classifier on arbitrary reply text: a class SparkPost knows.
pub fn classify(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let (status, rest) = text.split_once('\n').unwrap_or(("", text));
    let class = crate::feedback::classify::classify(Some(status).filter(|s| !s.is_empty()), rest);
    let name = crate::events::counted::bounce_class_name(u32::from(class.code()));
    assert!(!name.is_empty());
    if let Some(code) = crate::feedback::classify::reply_code(text) {
        assert!((200..600).contains(&code), "reply code {code}");
    }
}

/// The MTA log line parser: time stamps and delivery attempts.
pub fn maillog(data: &[u8]) {
    let Some(text) = text(data) else { return };
    for line in text.lines() {
        let _ = crate::feedback::maillog::line_time(line);
        for a in crate::feedback::maillog::attempts(line) {
            let _ = a.reply();
        }
    }
}

/// A tracking token as the endpoint receives it: refused, or decoded to data that
/// signs and verifies again to the same data.
pub fn token(data: &[u8]) {
    let Some(token) = text(data) else { return };
    let keys = crate::tracking::Keys::new(&["fuzz-secret-0123456789"]).expect("one secret");
    if let Ok(decoded) = crate::tracking::token::verify(&keys, token, 1_800_000_000) {
        let again = crate::tracking::token::sign(&keys, &decoded);
        assert_eq!(
            crate::tracking::token::verify(&keys, &again, 1_800_000_000).ok(),
            Some(decoded)
        );
    }
}

/// The configuration parser: a configuration, or an error naming the file and a line
/// within it.
pub fn config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Err(e) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        let shown = e.to_string();
        assert!(shown.starts_with("fuzz.toml"), "{shown}");
        if let crate::config::ConfigError::Invalid { line, .. } = e {
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {line}"
            );
        }
    }
}

/// The REST API's query strings and time stamps.
pub fn api_query(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(params) = crate::rest::common::Params::parse(Some(text)) {
        for name in ["types", "recipients", "cursor", "from", "per_page"] {
            let _ = params.list(name);
            let _ = params.time(name);
            let _ = params.number(name, 1..=10_000, 1000);
        }
    }
    if let Some(t) = crate::rest::common::parse_time(text) {
        let shown = crate::rest::common::format_time(t);
        assert_eq!(crate::rest::common::parse_time(&shown), Some(t), "{shown}");
    }
    for cursor in [
        crate::store::query::decode_cursor(text, 2),
        crate::store::query::decode_cursor(text, 4),
    ]
    .into_iter()
    .flatten()
    {
        let parts: Vec<&str> = cursor.iter().map(String::as_str).collect();
        assert_eq!(
            crate::store::query::decode_cursor(
                &crate::store::query::encode_cursor(&parts),
                parts.len()
            ),
            Some(cursor)
        );
    }
}

/// Tracked links that say which link they replace.
struct Links;

impl crate::mime::LinkMaker for Links {
    fn click(&self, index: u16, _: &str) -> String {
        format!("https://t.example/c/{index}")
    }
    fn open(&self) -> String {
        "https://t.example/o/pixel".into()
    }
}

fn longest_line(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

/// A message through the body rewrite (click and open tracking, CSS inlining) and the
/// AMP rule: the result still parses as a message with as many parts, and has no line
/// over 998 octets that the input did not have.
pub fn rewrite(data: &[u8]) {
    let (headers, body) = crate::explain::split_message(data);
    let _ = crate::mime::check_amp(&headers, body);
    let opts = crate::mime::BodyOptions {
        open_tracking: true,
        click_tracking: true,
        inline_css: true,
    };
    let Ok(Some(out)) = crate::mime::rewrite(&headers, body, &opts, &Links) else {
        return;
    };
    assert!(
        longest_line(&out) <= longest_line(body).max(998),
        "a line over 998 octets"
    );
    let whole = |b: &[u8]| {
        let mut raw = Vec::new();
        for h in &headers {
            raw.extend_from_slice(h.name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(&h.value);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(b);
        raw
    };
    let (before, after) = (whole(body), whole(&out));
    let parsed = crate::mime::parse_message(&after).expect("the rewritten message parses");
    // The structure is compared for messages as SMTP carries them (CRLF line ends
    // only, no NUL): with bare CRs or LFs a parser may see boundaries differently once
    // a rewritten part's lines end in CRLF (found by fuzzing).
    let transported = !before.contains(&0)
        && before.iter().enumerate().all(|(i, &b)| match b {
            b'\n' => i > 0 && before[i - 1] == b'\r',
            b'\r' => before.get(i + 1) == Some(&b'\n'),
            _ => true,
        });
    if transported && let Some(original) = crate::mime::parse_message(&before) {
        assert_eq!(
            parsed.parts.len(),
            original.parts.len(),
            "the rewrite changed the MIME structure"
        );
    }
}

/// Accepts recipients whose local part is not `bad`, and every message.
struct Accept;

impl crate::feedback::lmtp::Deliver for Accept {
    fn rcpt(&self, rcpt: &str) -> Result<(), String> {
        if rcpt.starts_with("bad") {
            Err("550 5.1.1 unknown".into())
        } else {
            Ok(())
        }
    }
    fn data<'a>(
        &'a self,
        _: &'a str,
        rcpts: &'a [String],
        _: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send + 'a>> {
        Box::pin(async move { rcpts.iter().map(|_| "250 2.0.0 Ok".to_owned()).collect() })
    }
}

/// An arbitrary byte stream to the LMTP server (the client then closes): every line it
/// answers is a reply line (three digits, then a space or a hyphen), ended by CRLF.
pub fn lmtp(data: &[u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    let answer = runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let serving = crate::feedback::lmtp::serve(
            server,
            "fuzz.test",
            64 * 1024,
            std::sync::Arc::new(Accept),
        );
        let talking = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        tokio::join!(serving, talking).1
    });
    assert!(
        answer.is_empty() || answer.ends_with(b"\r\n"),
        "a reply without CRLF"
    );
    for line in answer.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").expect("every line ends with CRLF");
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-'),
            "not a reply line: {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every entry point, by the name of its fuzz target.
pub const TARGETS: [(&str, Target); 9] = [
    ("rewrite", rewrite),
    ("lmtp", lmtp),
    ("header", header),
    ("feedback", feedback),
    ("classify", classify),
    ("maillog", maillog),
    ("token", token),
    ("config", config),
    ("api_query", api_query),
];
