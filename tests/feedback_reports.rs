//! Feedback parsing on real formats: DSNs and plain-text bounces from Postfix, Gmail,
//! Exchange Online, Sendmail, Exim, qmail and Yahoo (tests/data/dsn), and the bounce
//! classifier against the corpus of real-world replies (tests/data/bounce-corpus.json).

use msys_milter::events::EventType;
use msys_milter::feedback::classify::{BounceClass, classify};
use msys_milter::feedback::dsn::{self, Action, ReportKind};
use msys_milter::feedback::findings;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/dsn/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// (file, kind, recipient, action, status, class, event when our MTA is `mta.e2e.test`)
type Case = (
    &'static str,
    ReportKind,
    &'static str,
    Action,
    Option<&'static str>,
    u8,
    EventType,
);

const CASES: &[Case] = &[
    (
        "postfix-dsn-5.1.1.eml",
        ReportKind::Dsn,
        "dead@example.org",
        Action::Failed,
        Some("5.1.1"),
        10,
        EventType::Bounce,
    ),
    (
        "postfix-dsn-delayed.eml",
        ReportKind::Dsn,
        "full@example.org",
        Action::Delayed,
        Some("4.2.2"),
        22,
        EventType::Delay,
    ),
    (
        "gmail-dsn-5.1.1.eml",
        ReportKind::Dsn,
        "nosuchuser@gmail.com",
        Action::Failed,
        Some("5.1.1"),
        10,
        EventType::OutOfBand,
    ),
    (
        "exchange-dsn-5.2.2.eml",
        ReportKind::Dsn,
        "full@contoso.com",
        Action::Failed,
        Some("5.2.2"),
        22,
        EventType::OutOfBand,
    ),
    (
        "sendmail-dsn-5.7.1.eml",
        ReportKind::Dsn,
        "blocked@example.edu",
        Action::Failed,
        Some("5.7.1"),
        51,
        EventType::OutOfBand,
    ),
    (
        "exim-plain-5.1.1.eml",
        ReportKind::PlainText,
        "gone@example.net",
        Action::Failed,
        Some("5.1.1"),
        10,
        EventType::OutOfBand,
    ),
    (
        "qmail-plain-5.2.2.eml",
        ReportKind::PlainText,
        "quota@example.com",
        Action::Failed,
        Some("5.2.2"),
        22,
        EventType::OutOfBand,
    ),
    (
        "yahoo-out-of-band-5.1.1.eml",
        ReportKind::PlainText,
        "nobody@yahoo.com",
        Action::Failed,
        None,
        10,
        EventType::OutOfBand,
    ),
];

#[test]
fn reports_from_real_servers() {
    let ours = vec!["mta.e2e.test".to_owned()];
    for &(file, kind, rcpt, action, status, class, event) in CASES {
        let report = dsn::parse(&fixture(file));
        assert_eq!(report.kind, kind, "{file}: {report:?}");
        assert_eq!(report.recipients.len(), 1, "{file}: {report:?}");
        let r = &report.recipients[0];
        assert_eq!(r.recipient.to_lowercase(), rcpt, "{file}");
        assert_eq!(r.action, action, "{file}");
        assert_eq!(r.status.as_deref(), status, "{file}");
        assert!(
            r.diagnostic.as_deref().is_some_and(|d| !d.is_empty()),
            "{file}: {r:?}"
        );
        let found = findings(&report, &ours);
        assert_eq!(found.len(), 1, "{file}");
        assert_eq!(found[0].class.code(), class, "{file}: {:?}", r.diagnostic);
        assert_eq!(found[0].kind, event, "{file}");
    }
}

#[test]
fn returned_original_ties_the_report_to_the_transmission() {
    for file in [
        "postfix-dsn-5.1.1.eml",
        "gmail-dsn-5.1.1.eml",
        "exim-plain-5.1.1.eml",
        "sendmail-dsn-5.7.1.eml",
    ] {
        let report = dsn::parse(&fixture(file));
        assert_eq!(
            report.original.message_id.as_deref(),
            Some("orig-1@mail.example.com"),
            "{file}"
        );
    }
    let postfix = dsn::parse(&fixture("postfix-dsn-5.1.1.eml"));
    assert_eq!(postfix.reporting_mta.as_deref(), Some("mta.e2e.test"));
    assert_eq!(
        postfix.original.mail_from.as_deref(),
        Some("bounces+1234567890123@bounces.example.net")
    );
}

#[test]
fn auto_replies_are_class_60_and_never_hard() {
    let report = dsn::parse(&fixture("auto-reply.eml"));
    assert_eq!(report.kind, ReportKind::AutoReply);
    let found = findings(&report, &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].class, BounceClass::AutoReply);
    assert_eq!(found[0].kind, EventType::OutOfBand);
    assert!(!found[0].class.is_hard());
}

#[test]
fn a_complaint_is_not_read_as_a_bounce() {
    let report = dsn::parse(&fixture("arf-abuse.eml"));
    assert!(
        findings(&report, &[])
            .iter()
            .all(|f| f.kind != EventType::Bounce),
        "{report:?}"
    );
}

#[derive(serde::Deserialize)]
struct Sample {
    server: String,
    status: String,
    class: u8,
    text: String,
}

/// The corpus accuracy (also reported in BENCHMARKS.md): at least 95%.
#[test]
fn classifier_accuracy_on_the_corpus() {
    let text = std::fs::read_to_string(format!(
        "{}/tests/data/bounce-corpus.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let samples: Vec<Sample> = serde_json::from_str(&text).unwrap();
    let mut wrong = Vec::new();
    for s in &samples {
        let status = (!s.status.is_empty()).then_some(s.status.as_str());
        let got = classify(status, &s.text).code();
        if got != s.class {
            wrong.push(format!(
                "{} expected {} got {got}: {}",
                s.server, s.class, s.text
            ));
        }
    }
    let accuracy = 1.0 - wrong.len() as f64 / samples.len() as f64;
    println!(
        "classifier: {}/{} right ({:.1}%)",
        samples.len() - wrong.len(),
        samples.len(),
        accuracy * 100.0
    );
    for w in &wrong {
        println!("  {w}");
    }
    assert!(samples.len() >= 70);
    assert!(accuracy >= 0.95, "{wrong:#?}");
}

#[test]
fn arf_complaints_name_the_complainer_and_the_transmission() {
    use msys_milter::feedback::arf;
    let c = arf::parse(&fixture("arf-abuse.eml")).expect("an ARF report");
    assert_eq!(c.fbtype, "abuse");
    assert_eq!(
        c.original_rcpt_to.as_deref(),
        Some("complainer@example.org")
    );
    assert_eq!(
        c.original_mail_from.as_deref(),
        Some("bounces+1234567890123@bounces.example.net")
    );
    assert_eq!(c.msfbl.as_deref(), Some("placeholder"));
    assert_eq!(c.original_to.as_deref(), Some("complainer@example.org"));
    assert_eq!(c.report_by.as_deref(), Some("mx.example.org"));
    for other in [
        "postfix-dsn-5.1.1.eml",
        "exim-plain-5.1.1.eml",
        "auto-reply.eml",
    ] {
        assert_eq!(arf::parse(&fixture(other)), None, "{other}");
    }
}

#[test]
fn a_signed_msfbl_header_outranks_what_the_report_says() {
    use msys_milter::api::copies::fbl_value;
    use msys_milter::feedback::{FeedbackAddress, arf, complaint_target};
    let config = msys_milter::config::Config::parse(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n[reinject]\nsecret = \"s3cret-s3cret-s3cret\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let signed = fbl_value(b"s3cret-s3cret-s3cret", "42", Some("real@example.org"));
    let text = String::from_utf8(fixture("arf-abuse.eml"))
        .unwrap()
        .replace("X-MSFBL: placeholder", &format!("X-MSFBL: {signed}"));
    let c = arf::parse(text.as_bytes()).unwrap();
    assert_eq!(
        complaint_target(&c, &FeedbackAddress::Other, &config),
        Some(("42".into(), "real@example.org".into()))
    );
    // A forged header is ignored: the envelope facts of the report are used.
    let forged = text.replace(&signed, &fbl_value(b"wrong", "42", Some("x@example.org")));
    let c = arf::parse(forged.as_bytes()).unwrap();
    assert_eq!(
        complaint_target(&c, &FeedbackAddress::Other, &config),
        Some(("1234567890123".into(), "complainer@example.org".into()))
    );
}
