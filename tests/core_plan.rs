//! Unit tests of the plan: recipients and dedupe, Cc header edits, MAIL FROM rewriting,
//! sending domains and subaccounts (docs/behaviour.md, sections 3 and 4).

use msys_milter::api::copies::HeaderField;
use msys_milter::api::copies::render_copy;
use msys_milter::api::plan::{Delivery, HeaderEdit, MessageFacts, Plan, plan};
use msys_milter::api::recipients::RcptType;
use msys_milter::config::Config;
use msys_milter::ids::IdError;
use std::path::Path;

fn config(toml: &str) -> Config {
    Config::parse(toml, Path::new("test.toml")).unwrap()
}

fn facts(api: &str) -> MessageFacts {
    let mut f = MessageFacts {
        mail_from: "app@example.com".into(),
        rcpts: vec!["to@example.org".into()],
        ..Default::default()
    };
    set(&mut f, "From", Some("App <app@example.com>"));
    if !api.is_empty() {
        set(&mut f, "X-MSYS-API", Some(api));
    }
    f
}

/// Replace every `name` header with one of `value` (none for `None`).
fn set(f: &mut MessageFacts, name: &str, value: Option<&str>) {
    f.headers.retain(|h| !h.is(name));
    if let Some(value) = value {
        f.headers.push(HeaderField::new(name, value));
    }
}

fn id() -> Result<u64, IdError> {
    Ok(42)
}

fn outcome(facts: &MessageFacts, config: &Config) -> Result<msys_milter::api::Plan, String> {
    plan(facts, config, id).map_err(|r| r.reply().to_string())
}

#[test]
fn message_without_header_gets_defaults_only() {
    let p = outcome(
        &facts(""),
        &config("[envelope]\nbounce_domain = \"b.example.net\""),
    )
    .unwrap();
    // Only the signed feedback header, for complaints.
    assert_eq!(p.header_edits.len(), 1, "{:?}", p.header_edits);
    assert!(matches!(&p.header_edits[0], HeaderEdit::Add { name, .. } if name == "X-MSFBL"));
    assert_eq!(p.added_recipients().count(), 0);
    assert_eq!(p.mail_from.as_deref(), Some("bounces+42@b.example.net"));
    assert_eq!(p.transmission_id, "42");
}

#[test]
fn header_is_always_deleted() {
    let p = outcome(&facts("{}"), &Config::default()).unwrap();
    assert_eq!(
        p.header_edits,
        [HeaderEdit::Delete {
            name: "X-MSYS-API".into(),
            index: 1
        }]
    );
    assert_eq!(p.mail_from, None, "no bounce domain configured");
}

#[test]
fn cc_and_archive_are_added_once_with_precedence() {
    let api = r#"{"cc": [{"email": "CC1@example.com", "name": "CC 1"}, "TO@example.org", "cc2@example.com"],
                  "archive": ["cc1@EXAMPLE.com", "arch@example.com", "Arch@example.com"]}"#;
    let p = outcome(&facts(api), &Config::default()).unwrap();
    let rcpts: Vec<_> = p
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.rcpt_type, r.delivery))
        .collect();
    assert_eq!(
        rcpts,
        [
            ("to@example.org", RcptType::To, Delivery::Original),
            ("CC1@example.com", RcptType::Cc, Delivery::AddRecipient),
            ("cc2@example.com", RcptType::Cc, Delivery::AddRecipient),
            (
                "arch@example.com",
                RcptType::Archive,
                Delivery::AddRecipient
            ),
        ]
    );
    // The Cc header lists ALL cc entries, the duplicate of a primary recipient included.
    assert_eq!(
        p.header_edits[1],
        HeaderEdit::Add {
            name: "Cc".into(),
            value: "CC 1 <CC1@example.com>, TO@example.org, cc2@example.com".into()
        }
    );
}

#[test]
fn existing_cc_headers_are_replaced() {
    let mut f = facts(r#"{"cc": ["a@example.com"]}"#);
    for i in 0..3 {
        f.headers
            .push(HeaderField::new("Cc", format!("old{i}@example.com")));
    }
    let p = outcome(&f, &Config::default()).unwrap();
    assert_eq!(
        p.header_edits[1..],
        [
            HeaderEdit::Change {
                name: "Cc".into(),
                index: 1,
                value: "a@example.com".into()
            },
            HeaderEdit::Delete {
                name: "Cc".into(),
                index: 3
            },
            HeaderEdit::Delete {
                name: "Cc".into(),
                index: 2
            },
        ]
    );
    // Without a cc list an existing Cc header is left alone.
    set(&mut f, "X-MSYS-API", Some("{}"));
    assert_eq!(
        outcome(&f, &Config::default()).unwrap().header_edits.len(),
        1
    );
}

const SECRET: &str = "[reinject]\nsecret = \"0123456789abcdef0123\"\n";

fn summary(p: &Plan) -> Vec<(String, RcptType, Delivery)> {
    p.recipients
        .iter()
        .map(|r| (r.address.clone(), r.rcpt_type, r.delivery))
        .collect()
}

#[test]
fn every_mix_of_lists_with_duplicates() {
    use Delivery::*;
    use RcptType::*;
    let c = config(SECRET);
    let mut f = facts(
        r#"{"cc": ["cc@example.com", "TO@example.org"],
            "bcc": [{"email": "bcc1@example.com", "name": "Bé Cé"}, "CC@example.com", "bcc2@example.com", "bcc1@example.com"],
            "archive": ["arch@example.com", "BCC2@example.com", "to2@example.org"]}"#,
    );
    f.rcpts.push("to2@example.org".into());
    let p = outcome(&f, &c).unwrap();
    let s = |a: &str, t, d| (a.to_owned(), t, d);
    assert_eq!(
        summary(&p),
        [
            s("to@example.org", To, Original),
            s("to2@example.org", To, Original),
            s("cc@example.com", Cc, AddRecipient),
            s("bcc1@example.com", Bcc, Copy),
            s("bcc2@example.com", Bcc, Copy),
            s("arch@example.com", Archive, AddRecipient),
        ]
    );
    // Each bcc copy carries only its own Bcc header, with its display name.
    assert_eq!(p.copies.len(), 2);
    assert_eq!(
        p.copies[0].extra_headers[0],
        (
            "Bcc".into(),
            "=?utf-8?b?QsOpIEPDqQ==?= <bcc1@example.com>".into()
        )
    );
    assert_eq!(
        p.copies[1].extra_headers[0],
        ("Bcc".into(), "bcc2@example.com".into())
    );
    for copy in &p.copies {
        assert_eq!(copy.extra_headers[1].0, "X-MSYS-Reinjected");
        assert!(copy.extra_headers[1].1.starts_with("42; "));
    }
    // Lists with only some kinds.
    for (api, expected) in [
        (
            r#"{"bcc": ["b@example.com"]}"#,
            vec![
                s("to@example.org", To, Original),
                s("b@example.com", Bcc, Copy),
            ],
        ),
        (
            r#"{"archive": ["a@example.com"], "bcc": ["A@example.com"]}"#,
            vec![
                s("to@example.org", To, Original),
                s("A@example.com", Bcc, Copy),
            ],
        ),
        (
            r#"{"cc": ["c@example.com"], "archive": ["C@example.com"]}"#,
            vec![
                s("to@example.org", To, Original),
                s("c@example.com", Cc, AddRecipient),
            ],
        ),
        (
            r#"{"bcc": ["to@EXAMPLE.org"]}"#,
            vec![s("to@example.org", To, Original)],
        ),
        (r#"{}"#, vec![s("to@example.org", To, Original)]),
    ] {
        assert_eq!(
            summary(&outcome(&facts(api), &c).unwrap()),
            expected,
            "{api}"
        );
    }
}

#[test]
fn copies_share_one_message_id_with_the_original() {
    let c = config(SECRET);
    let p = outcome(&facts(r#"{"bcc": ["b@example.com"]}"#), &c).unwrap();
    assert!(p.header_edits.contains(&HeaderEdit::Add {
        name: "Message-ID".into(),
        value: "<msys.42@example.com>".into()
    }));
    // An existing Message-ID is kept, and with no copies none is added.
    let mut f = facts(r#"{"bcc": ["b@example.com"]}"#);
    set(&mut f, "Message-Id", Some("<orig@example.com>"));
    assert!(
        !outcome(&f, &c)
            .unwrap()
            .header_edits
            .iter()
            .any(|e| matches!(e, HeaderEdit::Add { .. }))
    );
    let p = outcome(&facts(r#"{"cc": ["c@example.com"]}"#), &c).unwrap();
    assert!(
        !p.header_edits
            .iter()
            .any(|e| matches!(e, HeaderEdit::Add { name, .. } if name == "Message-ID"))
    );
}

#[test]
fn copy_bytes_show_to_cc_and_only_their_own_bcc() {
    let c = config(SECRET);
    let mut f = facts(
        r#"{"cc": [{"email": "cc@example.com", "name": "The CC"}], "bcc": ["b1@example.com", "b2@example.com"]}"#,
    );
    set(&mut f, "To", Some("Primary <to@example.org>"));
    set(&mut f, "Message-ID", Some("<m@example.com>"));
    let p = outcome(&f, &c).unwrap();
    let body = b"Hello\r\n.leading dot\r\n";
    let texts: Vec<String> = p
        .copies
        .iter()
        .map(|copy| {
            String::from_utf8(render_copy(&f.headers, &p.header_edits, copy, body)).unwrap()
        })
        .collect();
    for (text, own) in texts.iter().zip(["b1@example.com", "b2@example.com"]) {
        assert!(
            text.contains("\r\nTo: Primary <to@example.org>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nCc: The CC <cc@example.com>\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("Bcc:").count(), 1, "{text}");
        assert!(text.contains(&format!("\r\nBcc: {own}\r\n")), "{text}");
        assert!(!text.contains("X-MSYS-API"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nHello\r\n.leading dot\r\n"),
            "{text}"
        );
    }
}

#[test]
fn a_returning_copy_passes_once_unchanged_and_forgeries_do_not() {
    let c = config(&format!(
        "{SECRET}[envelope]\nbounce_domain = \"b.example.net\"\n"
    ));
    let first = outcome(&facts(r#"{"bcc": ["b@example.com"]}"#), &c).unwrap();
    let (name, marker) = first.copies[0].extra_headers[1].clone();
    // The copy as it would come back: no X-MSYS-API, the marker, its own Bcc.
    let mut back = facts("");
    back.rcpts = vec!["b@example.com".into()];
    set(&mut back, &name, Some(&marker));
    set(&mut back, "Bcc", Some("b@example.com"));
    let p = outcome(&back, &c).unwrap();
    assert!(p.returning_copy);
    assert_eq!(p.transmission_id, "42");
    assert_eq!(p.mail_from, None);
    assert!(p.copies.is_empty());
    assert_eq!(
        p.header_edits,
        [HeaderEdit::Delete {
            name: name.clone(),
            index: 1
        }]
    );

    // Signed with another secret, or tampered: treated as absent (and removed).
    let other = config("[reinject]\nsecret = \"another-secret-0123456\"\n");
    let p = outcome(&back, &other).unwrap();
    assert!(!p.returning_copy);
    assert_eq!(
        p.header_edits,
        [HeaderEdit::Delete {
            name: name.clone(),
            index: 1
        }]
    );
    let mut forged = facts(r#"{"bcc": ["x@example.com"]}"#);
    set(&mut forged, &name, Some(&marker.replace("42;", "43;")));
    let p = outcome(&forged, &c).unwrap();
    assert!(!p.returning_copy);
    assert_eq!(
        p.copies.len(),
        1,
        "a forged marker does not stop processing"
    );
}

#[test]
fn transmission_id_failure_is_421() {
    let r = plan(&facts("{}"), &Config::default(), || Err(IdError::Exhausted));
    assert_eq!(
        r.unwrap_err().reply().to_string(),
        "421 4.3.3 [internal] smtpapi unable to generate unique transmission id"
    );
}

const DOMAINS: &str = r#"
[envelope]
bounce_domain = "default-bounce.example.net"
bounce_local_part = "bnc"
[[sending_domain]]
name = "example.com"
bounce_domain = "bounce.example.com"
[[sending_domain]]
name = "plain.example"
"#;

#[test]
fn bounce_domain_order() {
    let c = config(DOMAINS);
    // 2. the sending domain of MAIL FROM has its own bounce domain.
    assert_eq!(
        outcome(&facts(""), &c).unwrap().mail_from.as_deref(),
        Some("bnc+42@bounce.example.com")
    );
    // 1. MAIL FROM already in a configured bounce domain keeps that domain.
    let mut f = facts("");
    f.mail_from = "someone@default-bounce.example.net".into();
    assert_eq!(
        outcome(&f, &c).unwrap().mail_from.as_deref(),
        Some("bnc+42@default-bounce.example.net")
    );
    // 2b. MAIL FROM elsewhere, From: header in a sending domain with a bounce domain.
    let mut f = facts("");
    f.mail_from = "app@unrelated.example".into();
    set(&mut f, "From", Some("=?utf-8?q?App?= <news@EXAMPLE.com>"));
    assert_eq!(
        outcome(&f, &c).unwrap().mail_from.as_deref(),
        Some("bnc+42@bounce.example.com")
    );
    // 3. a sending domain without its own bounce domain: the default.
    let mut f = facts("");
    f.mail_from = "app@plain.example".into();
    set(&mut f, "From", Some("app@plain.example"));
    assert_eq!(
        outcome(&f, &c).unwrap().mail_from.as_deref(),
        Some("bnc+42@default-bounce.example.net")
    );
}

#[test]
fn null_sender_is_never_rewritten_nor_refused() {
    let mut f = facts("");
    f.mail_from = String::new();
    set(&mut f, "From", Some("MAILER-DAEMON@elsewhere.example"));
    let p = outcome(&f, &config(DOMAINS)).unwrap();
    assert_eq!(p.mail_from, None);
}

#[test]
fn rewrite_can_be_switched_off() {
    let c = config("[envelope]\nbounce_domain = \"b.example.net\"\nrewrite = false");
    assert_eq!(outcome(&facts(""), &c).unwrap().mail_from, None);
}

#[test]
fn unconfigured_sending_domain_is_refused() {
    let c = config(DOMAINS);
    let mut f = facts("");
    set(
        &mut f,
        "From",
        Some("\"Other\" <someone@Other.org>, second@example.com"),
    );
    assert_eq!(
        outcome(&f, &c).unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <other.org>"
    );
    // A subdomain is its own sending domain.
    set(&mut f, "From", Some("x@sub.example.com"));
    assert_eq!(
        outcome(&f, &c).unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <sub.example.com>"
    );
    // Missing From: falls back to MAIL FROM.
    set(&mut f, "From", None);
    assert!(outcome(&f, &c).is_ok());
    f.mail_from = "x@nowhere.example".into();
    assert_eq!(
        outcome(&f, &c).unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <nowhere.example>"
    );
    // The header's problems are reported before the sending domain.
    let mut f = facts("{");
    set(&mut f, "From", Some("x@other.org"));
    assert!(
        outcome(&f, &c)
            .unwrap_err()
            .starts_with("550 5.6.0 JSON parsing error")
    );
    // With no sending domains configured any domain may send.
    assert!(outcome(&f, &Config::default()).is_err());
    set(&mut f, "X-MSYS-API", None);
    assert!(outcome(&f, &Config::default()).is_ok());
}

#[test]
fn subaccounts_use_their_assigned_domains() {
    let c = config(
        r#"
[[sending_domain]]
name = "main.example"
[[sending_domain]]
name = "sub.example"
subaccounts = [123]
"#,
    );
    let send = |auth: Option<&str>, from: &str| {
        let mut f = facts("");
        f.auth_authen = auth.map(Into::into);
        set(&mut f, "From", Some(from));
        outcome(&f, &c).map(|p| p.subaccount_id)
    };
    let sub = Some("SMTP_Injection:X-MSYS-SUBACCOUNT=123");
    assert_eq!(send(sub, "a@sub.example"), Ok(Some(123)));
    assert_eq!(
        send(sub, "a@main.example").unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <main.example>"
    );
    assert_eq!(
        send(Some("SMTP_Injection:X-MSYS-SUBACCOUNT=7"), "a@sub.example").unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <sub.example>"
    );
    // The main account (no subaccount) may use every configured domain.
    assert_eq!(send(None, "a@sub.example"), Ok(None));
    assert_eq!(send(Some("SMTP_Injection"), "a@main.example"), Ok(None));
}

const TRACKING: &str =
    "[tracking]\nbase_url = \"https://t.example.com\"\nsecrets = [\"0123456789abcdef0123\"]\n";

#[test]
fn engagement_defaults_and_header_overrides() {
    use msys_milter::api::plan::Engagement;
    // Without an endpoint nothing is tracked and no List-Unsubscribe is added.
    let p = outcome(
        &facts(r#"{"options": {"open_tracking": true, "click_tracking": true}}"#),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(p.engagement, Engagement::default());
    let c = config(&format!("{TRACKING}open = true\n"));
    let p = outcome(&facts(""), &c).unwrap();
    assert_eq!(
        p.engagement,
        Engagement {
            open_tracking: true,
            click_tracking: false,
            inline_css: false,
            list_unsubscribe: true
        }
    );
    let p = outcome(
        &facts(r#"{"options": {"open_tracking": false, "click_tracking": true, "transactional": true, "inline_css": true}}"#),
        &c,
    )
    .unwrap();
    assert_eq!(
        p.engagement,
        Engagement {
            open_tracking: false,
            click_tracking: true,
            inline_css: true,
            list_unsubscribe: false
        }
    );
}

#[test]
fn per_recipient_content_makes_copies_of_cc_and_extra_primaries() {
    use Delivery::*;
    use RcptType::*;
    let c = config(&format!("{SECRET}{TRACKING}"));
    let mut f = facts(
        r#"{"cc": ["cc@example.com"], "bcc": ["b@example.com"], "archive": ["a@example.com"]}"#,
    );
    f.rcpts.push("to2@example.org".into());
    let p = outcome(&f, &c).unwrap();
    let s = |a: &str, t, d| (a.to_owned(), t, d);
    assert_eq!(
        summary(&p),
        [
            s("to@example.org", To, Original),
            s("to2@example.org", To, Copy),
            s("cc@example.com", Cc, Copy),
            s("b@example.com", Bcc, Copy),
            s("a@example.com", Archive, AddRecipient),
        ]
    );
    assert_eq!(
        p.deleted_recipients()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>(),
        ["to2@example.org"]
    );
    // Transactional mail without tracking: every copy is the same again.
    let f = facts(r#"{"cc": ["cc@example.com"], "options": {"transactional": true}}"#);
    assert_eq!(
        summary(&outcome(&f, &c).unwrap())[1],
        s("cc@example.com", Cc, AddRecipient)
    );
}

#[test]
fn without_the_loop_marker_copies_carry_only_their_bcc() {
    let c = config(&format!(
        "{SECRET}[envelope]\nbounce_domain = \"b.example.net\"\n"
    ));
    let off = config(
        &format!("{SECRET}[envelope]\nbounce_domain = \"b.example.net\"\n")
            .replace("[reinject]\n", "[reinject]\nloop_marker = false\n"),
    );
    let marked = outcome(&facts(r#"{"bcc": ["b@example.com"]}"#), &c).unwrap();
    let unmarked = outcome(&facts(r#"{"bcc": ["b@example.com"]}"#), &off).unwrap();
    let names = |p: &Plan| -> Vec<String> {
        p.copies[0]
            .extra_headers
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    };
    assert_eq!(names(&marked), ["Bcc", "X-MSYS-Reinjected", "X-MSFBL"]);
    assert_eq!(names(&unmarked), ["Bcc", "X-MSFBL"]);
}

/// A client cannot put its own message in the sandbox (the hold queue) or pick a
/// route: the X-MSYS-Sandbox and X-MSYS-Route headers it sends are deleted, every one.
#[test]
fn a_clients_own_sandbox_and_route_headers_are_deleted() {
    let mut f = facts(r#"{"campaign_id": "c"}"#);
    f.headers.push(HeaderField::new("X-MSYS-Sandbox", "yes"));
    f.headers.push(HeaderField::new("x-msys-sandbox", "again"));
    f.headers
        .push(HeaderField::new("X-MSYS-Route", "smtp:[evil.example]"));
    let p = outcome(&f, &config("")).unwrap();
    assert!(!p.sandbox);
    let deleted: Vec<(String, i32)> = p
        .header_edits
        .iter()
        .filter_map(|e| match e {
            HeaderEdit::Delete { name, index } => Some((name.to_ascii_lowercase(), *index)),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted
            .iter()
            .filter(|(n, _)| n == "x-msys-sandbox")
            .count(),
        2,
        "{deleted:?}"
    );
    assert!(
        deleted.iter().any(|(n, _)| n == "x-msys-route"),
        "{deleted:?}"
    );
    assert!(!p.header_edits.iter().any(|e| matches!(e, HeaderEdit::Add { name, .. } if name.eq_ignore_ascii_case("X-MSYS-Sandbox") || name.eq_ignore_ascii_case("X-MSYS-Route"))));
}
