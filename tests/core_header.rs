//! Unit tests of the pure core's header handling: every reply text of docs/behaviour.md section 2,
//! unfolding, RFC 2047, the reference documents' own examples, hostile input.

use msys_milter::api::header::{Known, parse, parse_header_values, unfold};
use msys_milter::api::recipients::Recipient;

fn reply(value: &str) -> String {
    reply_bytes(value.as_bytes())
}

fn reply_bytes(value: &[u8]) -> String {
    match parse(value, known()) {
        Ok(api) => panic!("accepted: {api:?}"),
        Err(r) => r.reply().to_string(),
    }
}

fn known() -> Known<'static> {
    static POOLS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["my_ip_pool".into()]);
    static KEYS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["marketing".into()]);
    Known {
        ip_pools: &POOLS,
        dkim_keys: &KEYS,
    }
}

const JSON_ERROR: &str = "550 5.6.0 JSON parsing error in X-MSYS-API";

fn assert_json_error(value: &[u8]) {
    let r = reply_bytes(value);
    assert!(r.starts_with(JSON_ERROR), "{r}");
}

#[test]
fn every_rejection_text() {
    let cases: &[(&str, &str)] = &[
        ("{", JSON_ERROR),
        (
            "[1,2]",
            "550 5.6.0 X-MSYS-API must be of type 'json object'",
        ),
        (
            "\"x\"",
            "550 5.6.0 X-MSYS-API must be of type 'json object'",
        ),
        (
            r#"{"metadata": []}"#,
            "550 5.6.0 X-MSYS-API 'metadata' must be of type 'json object'",
        ),
        (
            r#"{"campaign_id": 5}"#,
            "550 5.6.0 X-MSYS-API 'campaign_id' must be of type 'string'",
        ),
        (
            r#"{"tags": "a"}"#,
            "550 5.6.0 X-MSYS-API 'tags' must be of type 'json array'",
        ),
        (
            r#"{"tags": ["a", 1]}"#,
            "550 5.6.0 X-MSYS-API 'tags' entries must be of type 'string'",
        ),
        (
            r#"{"cc": "a@b.c"}"#,
            "550 5.6.0 X-MSYS-API 'cc' must be of type 'json array'",
        ),
        (
            r#"{"bcc": {}}"#,
            "550 5.6.0 X-MSYS-API 'bcc' must be of type 'json array'",
        ),
        (
            r#"{"archive": true}"#,
            "550 5.6.0 X-MSYS-API 'archive' must be of type 'json array'",
        ),
        (
            r#"{"options": []}"#,
            "550 5.6.0 X-MSYS-API 'options' must be of type 'json object'",
        ),
        (
            r#"{"options": {"open_tracking": "yes"}}"#,
            "550 5.6.0 X-MSYS-API 'options.open_tracking' must be of type 'boolean'",
        ),
        (
            r#"{"options": {"click_tracking": 1}}"#,
            "550 5.6.0 X-MSYS-API 'options.click_tracking' must be of type 'boolean'",
        ),
        (
            r#"{"options": {"transactional": "false"}}"#,
            "550 5.6.0 X-MSYS-API 'options.transactional' must be of type 'boolean'",
        ),
        (
            r#"{"options": {"sandbox": 0}}"#,
            "550 5.6.0 X-MSYS-API 'options.sandbox' must be of type 'boolean'",
        ),
        (
            r#"{"options": {"skip_suppression": []}}"#,
            "550 5.6.0 X-MSYS-API 'options.skip_suppression' must be of type 'boolean'",
        ),
        (
            r#"{"options": {"inline_css": {}}}"#,
            "550 5.6.0 X-MSYS-API 'options.inline_css' must be of type 'boolean'",
        ),
        (
            r#"{"options": {"ip_pool": 3}}"#,
            "550 5.6.0 X-MSYS-API 'options.ip_pool' must be of type 'string'",
        ),
        (
            r#"{"options": {"dkim_key": false}}"#,
            "550 5.6.0 X-MSYS-API 'options.dkim_key' must be of type 'string'",
        ),
        (
            r#"{"options": {"ip_pool": "nope"}}"#,
            "550 5.6.0 X-MSYS-API 'ip_pool' value 'nope' is not configured",
        ),
        (
            r#"{"options": {"dkim_key": "other"}}"#,
            "550 5.6.0 X-MSYS-API 'dkim_key' value 'other' is not configured",
        ),
        (
            r#"{"cc": ["ok@example.com", "not-an-address"]}"#,
            "550 5.6.0 X-MSYS-API 'cc' entry 2 is not a valid recipient",
        ),
        (
            r#"{"bcc": [{"name": "no email"}]}"#,
            "550 5.6.0 X-MSYS-API 'bcc' entry 1 is not a valid recipient",
        ),
        (
            r#"{"archive": [5]}"#,
            "550 5.6.0 X-MSYS-API 'archive' entry 1 is not a valid recipient",
        ),
        (
            r#"{"cc": [{"email": "a@b.c", "name": 7}]}"#,
            "550 5.6.0 X-MSYS-API 'cc' entry 1 is not a valid recipient",
        ),
    ];
    for (value, expected) in cases {
        let got = reply(value);
        if *expected == JSON_ERROR {
            assert!(got.starts_with(JSON_ERROR), "{value}: {got}");
        } else {
            assert_eq!(&got, expected, "{value}");
        }
    }
}

#[test]
fn campaign_id_is_limited_to_64_bytes() {
    let ok = format!(r#"{{"campaign_id": "{}"}}"#, "a".repeat(64));
    assert_eq!(
        parse(ok.as_bytes(), known())
            .unwrap()
            .campaign_id
            .unwrap()
            .len(),
        64
    );
    // 33 two-byte characters: 33 characters but 66 bytes.
    let long = format!(r#"{{"campaign_id": "{}"}}"#, "é".repeat(33));
    assert_eq!(
        reply(&long),
        "550 5.6.0 smtpapi_campaign_id context is limited to 64 bytes"
    );
}

#[test]
fn tags_and_recipient_limits() {
    let tags = |n: usize| format!(r#"{{"tags": [{}]}}"#, vec!["\"t\""; n].join(","));
    assert_eq!(parse(tags(10).as_bytes(), known()).unwrap().tags.len(), 10);
    assert_eq!(
        reply(&tags(11)),
        "550 5.6.0 X-MSYS-API 'tags' is limited to 10 entries"
    );

    let list = |n: usize| {
        (0..n)
            .map(|i| format!("\"r{i}@example.com\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    // 1000 in all, duplicates included, is the limit.
    let ok = format!(
        r#"{{"cc": [{}], "bcc": [{}], "archive": [{}]}}"#,
        list(400),
        list(400),
        list(200)
    );
    assert!(parse(ok.as_bytes(), known()).is_ok());
    let over = format!(
        r#"{{"cc": [{}], "bcc": [{}], "archive": [{}]}}"#,
        list(400),
        list(400),
        list(201)
    );
    assert_eq!(
        reply(&over),
        "550 5.6.0 X-MSYS-API recipient lists are limited to 1000 recipients"
    );
}

#[test]
fn the_first_problem_in_spec_order_is_reported() {
    // campaign_id before metadata, metadata before tags, cc before options, options
    // before the recipient total.
    assert_eq!(
        reply(&format!(
            r#"{{"tags": 1, "metadata": 1, "campaign_id": "{}"}}"#,
            "x".repeat(65)
        )),
        "550 5.6.0 smtpapi_campaign_id context is limited to 64 bytes"
    );
    assert_eq!(
        reply(r#"{"tags": 1, "metadata": 1}"#),
        "550 5.6.0 X-MSYS-API 'metadata' must be of type 'json object'"
    );
    assert_eq!(
        reply(r#"{"options": 1, "archive": ["x"], "cc": ["bad"]}"#),
        "550 5.6.0 X-MSYS-API 'cc' entry 1 is not a valid recipient"
    );
    let many = (0..1001)
        .map(|i| format!("\"r{i}@x.org\""))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        reply(&format!(
            r#"{{"cc": [{many}], "options": {{"sandbox": 1}}}}"#
        )),
        "550 5.6.0 X-MSYS-API 'options.sandbox' must be of type 'boolean'"
    );
    // Header count comes before JSON syntax.
    let two: [&[u8]; 2] = [b"{", b"{}"];
    assert_eq!(
        parse_header_values(&two, known())
            .unwrap_err()
            .reply()
            .to_string(),
        "550 5.6.0 X-MSYS-API header may appear only once"
    );
    assert_eq!(parse_header_values(&[], known()), Ok(None));
}

#[test]
fn null_counts_as_absent_and_unknown_fields_are_ignored() {
    let api = parse(
        br#"{"campaign_id": null, "metadata": null, "cc": null, "options": {"open_tracking": null, "future": 1}, "substitution_data": {"a": 1}, "whatever": []}"#,
        known(),
    )
    .unwrap();
    assert_eq!(api.campaign_id, None);
    assert!(api.cc.is_empty());
    assert_eq!(api.options.open_tracking, None);
}

#[test]
fn recipients_accept_strings_and_objects() {
    let api = parse(
        br#"{"cc": ["a@example.com", {"email": " b@example.com ", "name": "B"}, {"email": "c@example.com", "name": null}]}"#,
        known(),
    )
    .unwrap();
    assert_eq!(
        api.cc,
        [
            Recipient {
                email: "a@example.com".into(),
                name: None
            },
            Recipient {
                email: "b@example.com".into(),
                name: Some("B".into())
            },
            Recipient {
                email: "c@example.com".into(),
                name: None
            },
        ]
    );
}

#[test]
fn header_injection_through_names_or_addresses_is_refused() {
    for entry in [
        r#"{"email": "a@b.c", "name": "x\r\nBcc: victim@example.com"}"#,
        r#"{"email": "a@b.c", "name": "x\nBcc: victim@example.com"}"#,
        r#"{"email": "a@b.c", "name": "nul\u0000"}"#,
        r#""a@b.c\r\nBcc: victim@example.com""#,
        r#"{"email": "a@b.c\u0000"}"#,
    ] {
        assert_eq!(
            reply(&format!(r#"{{"cc": [{entry}]}}"#)),
            "550 5.6.0 X-MSYS-API 'cc' entry 1 is not a valid recipient",
            "{entry}"
        );
    }
}

#[test]
fn folded_values_unfold_to_one_space() {
    // SparkPost's own example: the fold inside a string leaves one space there.
    let raw = b"{\"options\" : {\"open_tracking\" : false }, \"campaign_id\" : \"my_awes\n   ome_campaign\" }";
    let api = parse(raw, known()).unwrap();
    assert_eq!(api.campaign_id.as_deref(), Some("my_awes ome_campaign"));
    assert_eq!(api.options.open_tracking, Some(false));
    // CRLF and tabs too.
    assert_eq!(unfold(b"a\r\n \t b\n\tc"), b"a b c");
    // The folded example from the reference parses.
    let folded = b"{\"options\" : {\"open_tracking\" : false, \"click_tracking\" : true},\n   \"metadata\" : {\"has_pets\" : true, \"pet_name\": \"Spot\" }, \"tags\" : [\"cat\",\n   \"dog\"], \"campaign_id\" : \"my_campaign\"}";
    let api = parse(folded, known()).unwrap();
    assert_eq!(api.tags, ["cat", "dog"]);
    assert_eq!(api.metadata.unwrap()["pet_name"], "Spot");
}

#[test]
fn rfc2047_encoded_values_are_decoded() {
    // UTF-8, B encoding: {"campaign_id":"café"}
    let b = b"=?UTF-8?B?eyJjYW1wYWlnbl9pZCI6ImNhZsOpIn0=?=";
    assert_eq!(
        parse(b, known()).unwrap().campaign_id.as_deref(),
        Some("café")
    );
    // UTF-8, Q encoding, split over two folded encoded-words.
    let q =
        b"=?utf-8?Q?{\"campaign=5Fid\":\"caf=C3=A9\",?=\n =?utf-8?Q?_\"tags\":[\"=E2=9C=93\"]}?=";
    let api = parse(q, known()).unwrap();
    assert_eq!(api.campaign_id.as_deref(), Some("café"));
    assert_eq!(api.tags, ["✓"]);
    // ISO-8859-1: é is 0xE9.
    let latin1 = b"=?ISO-8859-1?Q?{\"metadata\":{\"name\":\"Ren=E9\"}}?=";
    let api = parse(latin1, known()).unwrap();
    assert_eq!(api.metadata.unwrap()["name"], "René");
    // Windows-1252: the euro sign is 0x80.
    // In Q encoding `_` is a space, so the key's underscore is written `=5F`.
    let cp1252 = b"=?windows-1252?Q?{\"campaign=5Fid\":\"=80\"}?=";
    assert_eq!(
        parse(cp1252, known()).unwrap().campaign_id.as_deref(),
        Some("€")
    );
}

#[test]
fn raw_utf8_is_accepted_invalid_utf8_is_a_parse_error() {
    let api = parse("{\"campaign_id\":\"naïve\"}".as_bytes(), known()).unwrap();
    assert_eq!(api.campaign_id.as_deref(), Some("naïve"));
    assert_json_error(b"{\"campaign_id\":\"na\xefve\"}");
    assert_json_error(b"{\"campaign_id\":\"\xff\xfe\"}");
}

/// The reference pages' examples, as printed. Several are not valid JSON (missing commas
/// between array entries, a trailing comma, a missing comma between fields).
#[test]
fn reference_examples() {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference-examples.txt"
    ))
    .unwrap();
    let mut checked = 0;
    for block in reference.split("\n=====\n") {
        let (expect, value) = block.split_once('\n').unwrap();
        let value = value.trim().strip_prefix("X-MSYS-API:").unwrap().trim();
        let result = parse(value.as_bytes(), known());
        match expect.trim() {
            "valid" => assert!(result.is_ok(), "{value}: {result:?}"),
            "json-error" => {
                let r = result.unwrap_err().reply().to_string();
                assert!(r.starts_with(JSON_ERROR), "{value}: {r}");
            }
            other => panic!("unknown expectation {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn hostile_input_gets_a_clean_reply() {
    // 1 MB value.
    let big = format!(r#"{{"metadata": {{"blob": "{}"}}}}"#, "x".repeat(1 << 20));
    assert!(parse(big.as_bytes(), known()).is_ok());
    let big_bad = format!(r#"{{"metadata": {{"blob": "{}"}}"#, "x".repeat(1 << 20));
    assert_json_error(big_bad.as_bytes());
    // 100k-deep nesting: refused by the parser's depth limit, no stack overflow.
    let deep = format!(
        r#"{{"metadata": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_json_error(deep.as_bytes());
    let deep_obj = "{\"a\":".repeat(100_000) + &"}".repeat(100_000);
    assert_json_error(deep_obj.as_bytes());
    // NUL bytes, control characters, empty values.
    assert_json_error(b"{\"campaign_id\":\"a\0b\"}");
    assert_json_error(b"\0");
    assert_json_error(b"");
    assert_json_error(b"   ");
    // Broken encoded-words fall back to the raw text, which is then not JSON.
    assert_json_error(b"=?utf-8?B?!!!?=");
    // The reply never carries the raw bytes' line breaks.
    let r = reply_bytes(b"{\"options\":{\"ip_pool\":\"a\\r\\nb\"}}");
    assert!(!r.contains(['\r', '\n']), "{r}");
}

/// The JSON error names the position in the unfolded value and quotes the text there,
/// so the sender finds it in a folded header.
#[test]
fn json_errors_quote_the_text_at_the_position() {
    let r = reply(
        "{\"campaign_id\": \"spring\",\n \"metadata\": {\"user\": \"42\"} \"tags\": [\"x\"]}",
    );
    assert!(r.starts_with(JSON_ERROR), "{r}");
    assert!(r.contains("line 1 column"), "{r}");
    assert!(
        r.contains("near '...") && r.contains("\"42\"} \"tags\""),
        "{r}"
    );
    assert!(!r.contains('\n'), "{r}");
}
