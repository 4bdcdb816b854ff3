//! Unit tests of the plan: recipients and dedupe, Cc header edits, MAIL FROM rewriting,
//! sending domains and subaccounts (SPEC.md sections 4 and 5).

use msys_milter::api::plan::{Delivery, HeaderEdit, MessageFacts, plan};
use msys_milter::api::recipients::RcptType;
use msys_milter::config::Config;
use msys_milter::ids::IdError;
use std::path::Path;

fn config(toml: &str) -> Config {
    Config::parse(toml, Path::new("test.toml")).unwrap()
}

fn facts(api: &str) -> MessageFacts {
    MessageFacts {
        mail_from: "app@example.com".into(),
        rcpts: vec!["to@example.org".into()],
        api_values: if api.is_empty() {
            vec![]
        } else {
            vec![api.as_bytes().to_vec()]
        },
        from_header: Some("App <app@example.com>".into()),
        ..Default::default()
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
    assert!(p.header_edits.is_empty());
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
    f.cc_headers = 3;
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
    f.api_values = vec![b"{}".to_vec()];
    assert_eq!(
        outcome(&f, &Config::default()).unwrap().header_edits.len(),
        1
    );
}

#[test]
fn bcc_is_tempfailed_until_copies_exist() {
    assert_eq!(
        outcome(&facts(r#"{"bcc": ["b@example.com"]}"#), &Config::default()).unwrap_err(),
        "451 4.3.0 bcc copies are not available yet"
    );
    // A bcc address that is already a recipient needs no copy of its own.
    assert!(
        outcome(
            &facts(r#"{"cc": ["b@example.com"], "bcc": ["B@example.com"]}"#),
            &Config::default()
        )
        .is_ok()
    );
    // Validation errors come first.
    assert_eq!(
        outcome(
            &facts(r#"{"bcc": ["b@example.com"], "tags": 1}"#),
            &Config::default()
        )
        .unwrap_err(),
        "550 5.6.0 X-MSYS-API 'tags' must be of type 'json array'"
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
    f.from_header = Some("=?utf-8?q?App?= <news@EXAMPLE.com>".into());
    assert_eq!(
        outcome(&f, &c).unwrap().mail_from.as_deref(),
        Some("bnc+42@bounce.example.com")
    );
    // 3. a sending domain without its own bounce domain: the default.
    let mut f = facts("");
    f.mail_from = "app@plain.example".into();
    f.from_header = Some("app@plain.example".into());
    assert_eq!(
        outcome(&f, &c).unwrap().mail_from.as_deref(),
        Some("bnc+42@default-bounce.example.net")
    );
}

#[test]
fn null_sender_is_never_rewritten_nor_refused() {
    let mut f = facts("");
    f.mail_from = String::new();
    f.from_header = Some("MAILER-DAEMON@elsewhere.example".into());
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
    f.from_header = Some("\"Other\" <someone@Other.org>, second@example.com".into());
    assert_eq!(
        outcome(&f, &c).unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <other.org>"
    );
    // A subdomain is its own sending domain.
    f.from_header = Some("x@sub.example.com".into());
    assert_eq!(
        outcome(&f, &c).unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <sub.example.com>"
    );
    // Missing From: falls back to MAIL FROM.
    f.from_header = None;
    assert!(outcome(&f, &c).is_ok());
    f.mail_from = "x@nowhere.example".into();
    assert_eq!(
        outcome(&f, &c).unwrap_err(),
        "550 5.7.1 Unconfigured Sending Domain <nowhere.example>"
    );
    // The header's problems are reported before the sending domain.
    let mut f = facts("{");
    f.from_header = Some("x@other.org".into());
    assert!(
        outcome(&f, &c)
            .unwrap_err()
            .starts_with("550 5.6.0 JSON parsing error")
    );
    // With no sending domains configured any domain may send.
    assert!(outcome(&f, &Config::default()).is_err());
    f.api_values.clear();
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
        f.from_header = Some(from.into());
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
