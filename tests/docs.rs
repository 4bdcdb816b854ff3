//! docs/behaviour.md promises exact replies: every reply the code can give appears there,
//! as the code gives it, so the page cannot drift from the code.

use msys_milter::Config;
use msys_milter::api::Rejection;
use msys_milter::api::reply::{JsonType, copies_failed, internal_error, store_failed};
use msys_milter::explain::explain;

fn behaviour_page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/behaviour.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One example of every rejection, with the values the page's table shows.
fn every_rejection() -> Vec<Rejection> {
    vec![
        Rejection::HeaderRepeated,
        Rejection::JsonSyntax(String::new()),
        Rejection::NotAnObject,
        Rejection::WrongType {
            field: "metadata".into(),
            expected: JsonType::Object,
        },
        Rejection::WrongType {
            field: "options.open_tracking".into(),
            expected: JsonType::Boolean,
        },
        Rejection::CampaignIdTooLong,
        Rejection::TagNotString,
        Rejection::TooManyTags,
        Rejection::InvalidRecipient {
            list: "bcc",
            entry: 2,
        },
        Rejection::TooManyRecipients,
        Rejection::NotConfigured {
            option: "ip_pool",
            value: "my_ip_pool".into(),
        },
        Rejection::UnconfiguredSendingDomain("example.com".into()),
        Rejection::TransmissionId,
        Rejection::TooLarge,
        Rejection::CopiesTooLarge {
            limit: 4 * 1024 * 1024 * 1024,
        },
        Rejection::AmpPlacement,
        Rejection::Suppressed,
        Rejection::Signing,
    ]
}

/// Names every variant: a new rejection fails to compile here until it is added to
/// [`every_rejection`] (and so to the page).
const _: fn(&Rejection) = |r| match r {
    Rejection::HeaderRepeated
    | Rejection::JsonSyntax(_)
    | Rejection::NotAnObject
    | Rejection::WrongType { .. }
    | Rejection::CampaignIdTooLong
    | Rejection::TagNotString
    | Rejection::TooManyTags
    | Rejection::InvalidRecipient { .. }
    | Rejection::TooManyRecipients
    | Rejection::NotConfigured { .. }
    | Rejection::UnconfiguredSendingDomain(_)
    | Rejection::TransmissionId
    | Rejection::TooLarge
    | Rejection::CopiesTooLarge { .. }
    | Rejection::AmpPlacement
    | Rejection::Suppressed
    | Rejection::Signing => {}
};

#[test]
fn every_reply_of_the_code_is_in_the_behaviour_page_word_for_word() {
    let page = behaviour_page();
    let mut replies: Vec<String> = every_rejection()
        .iter()
        .map(|r| r.reply().to_string())
        .collect();
    replies.extend([internal_error(), store_failed(), copies_failed()].map(|r| r.to_string()));
    let missing: Vec<&String> = replies
        .iter()
        .filter(|reply| !page.contains(&format!("`{reply}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "replies the code gives that docs/behaviour.md does not show: {missing:#?}"
    );
}

#[test]
fn the_pages_json_error_example_is_what_explain_says() {
    let message = b"From: a@example.com\nX-MSYS-API: {\"campaign_id\": \"x\",\n  \"tags\": [\"a\",]}\nSubject: x\n\nhi\n";
    let reply = explain(message, None, &[], None, &Config::default())
        .expect_err("a trailing comma is refused")
        .to_string();
    assert!(reply.starts_with("550 5.6.0 JSON parsing error"), "{reply}");
    assert!(
        behaviour_page().contains(&format!("`{reply}`")),
        "docs/behaviour.md's example is not what the code says: {reply}"
    );
}
