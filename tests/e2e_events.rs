//! Events and suppression end to end: mail through the real Postfix, opens, clicks and a
//! one-click unsubscribe through the real endpoint, and the events read by a real
//! consumer: django-anymail's SparkPost tracking webhook (installed by
//! `scripts/test.sh` into a throwaway virtualenv). Then the same campaign to the
//! unsubscribed recipient is not delivered, while transactional mail and
//! `skip_suppression` still are.

mod support;

use std::io::{Read, Write};
use support::anymail::{Anymail, SECRET};
use support::e2e::{E2e, http_get};
use support::message;
use support::mta::MtaKind;
use support::postfix::free_port;

under_each_mta!(a_click_on_a_bcc_copy_names_that_copy);

fn http_post(port: u16, path: &str, body: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

fn html_message(api: &str) -> String {
    let html =
        "<html><body><p>Hi</p><a href=\"https://shop.example.com/offer\">Offer</a></body></html>";
    message(
        &format!("MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nX-MSYS-API: {api}\n"),
        html,
    )
}

#[test]
fn anymail_reads_injections_opens_clicks_unsubscribes_and_suppression_bounces() {
    let anymail = Anymail::start();
    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let e = E2e::start(&format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [tracking]\nbase_url = \"{base}\"\nsecrets = [\"e2e-secret-0123456789\"]\nopen = true\nclick = true\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [[webhook]]\nurl = \"http://127.0.0.1:{}/anymail/sparkpost/tracking/\"\nbasic = \"{SECRET}\"\nbatch_wait_ms = 100\n",
        anymail.port
    ));
    let campaign = r#"{"campaign_id": "spring", "metadata": {"user": "42"}, "tags": ["news"]}"#;
    e.send(
        "app@example.com",
        &["alice@example.org"],
        &html_message(campaign),
    )
    .unwrap();
    e.wait_for_exactly(1);
    let got = e.capture.message_for("alice@example.org");
    let parsed = mail_parser::MessageParser::default()
        .parse(&got.data)
        .unwrap();
    let html = parsed.body_html(0).unwrap().into_owned();
    let urls: Vec<String> = html
        .split('"')
        .filter(|s| s.starts_with(&base))
        .map(|s| s.strip_prefix(&base).unwrap().to_owned())
        .collect();
    let opens: Vec<&String> = urls.iter().filter(|u| u.starts_with("/o/")).collect();
    assert_eq!(
        opens.len(),
        2,
        "initial_open at the top, open before </body>: {html}"
    );
    assert!(html.find(opens[0].as_str()) < html.find("<p>Hi</p>"));
    let click = urls.iter().find(|u| u.starts_with("/c/")).unwrap();
    // `<mailto:unsub+...>, <https://...>`: the one-click URL is the second.
    let list_unsubscribe = &got.header("List-Unsubscribe")[0];
    let (mailto, https) = list_unsubscribe.split_once(", ").unwrap();
    assert!(mailto.starts_with("<mailto:unsub+"), "{list_unsubscribe}");
    let unsubscribe = https
        .trim_matches(['<', '>'])
        .strip_prefix(&base)
        .unwrap()
        .to_owned();

    for open in &opens {
        assert_eq!(http_get(http_port, open).0, 200);
    }
    assert_eq!(
        http_get(http_port, click),
        (302, Some("https://shop.example.com/offer".into()))
    );
    assert_eq!(
        http_post(http_port, &unsubscribe, "List-Unsubscribe=One-Click"),
        200
    );

    let queued = anymail.wait_for("queued", "alice@example.org", |_| true);
    assert_eq!(queued["metadata"]["user"], "42");
    assert_eq!(queued["tags"], serde_json::json!(["spring"]));
    let opened = anymail.wait_for("opened", "alice@example.org", |_| true);
    assert!(opened["user_agent"].as_str().unwrap().contains("Firefox"));
    assert_eq!(opened["metadata"]["user"], "42");
    let clicked = anymail.wait_for("clicked", "alice@example.org", |_| true);
    assert_eq!(clicked["click_url"], "https://shop.example.com/offer");
    anymail.wait_for("unsubscribed", "alice@example.org", |_| true);
    // Both pixels were recorded. anymail reports SparkPost's initial_open as "unknown"
    // unless its SPARKPOST_TRACK_INITIAL_OPEN_AS_OPENED setting is on (by design: an
    // initial_open and an open of the same view would count twice).
    anymail.wait_for("unknown", "alice@example.org", |e| {
        e["esp_event_type"] == "initial_open"
    });

    // The same campaign to the unsubscribed recipient: refused with SparkPost's reply,
    // and anymail hears of the suppressed recipient as a blocked bounce.
    let refused = e
        .send(
            "app@example.com",
            &["alice@example.org"],
            &html_message(campaign),
        )
        .unwrap_err();
    assert!(
        refused.contains("554")
            && refused.contains("recipient address was suppressed due to customer policy"),
        "{refused}"
    );
    let bounced = anymail.wait_for("bounced", "alice@example.org", |_| true);
    assert_eq!(bounced["reject_reason"], "blocked");

    // Another recipient in the same message still gets it; alice does not.
    e.send(
        "app@example.com",
        &["alice@example.org", "bob@example.org"],
        &html_message(campaign),
    )
    .unwrap();
    // Transactional mail and skip_suppression are delivered to her.
    e.send(
        "app@example.com",
        &["alice@example.org"],
        &html_message(r#"{"options": {"transactional": true}}"#),
    )
    .unwrap();
    e.send(
        "app@example.com",
        &["alice@example.org"],
        &html_message(r#"{"options": {"skip_suppression": true}}"#),
    )
    .unwrap();
    e.capture.wait_for_deliveries(4);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let all = e.capture.all();
    let count = |who: &str| {
        all.iter()
            .filter(|r| r.rcpts.iter().any(|x| x == who))
            .count()
    };
    assert_eq!(
        (
            all.len(),
            count("alice@example.org"),
            count("bob@example.org")
        ),
        (4, 3, 1),
        "{all:#?}"
    );
    anymail.wait_for("queued", "bob@example.org", |_| true);
}

/// The bcc recipient's copy is a message of its own: its click says so (`rcpt_type`
/// "bcc", the copy's `message_id`), and names the link as `data-msys-linkname` did.
fn a_click_on_a_bcc_copy_names_that_copy(kind: MtaKind) {
    let anymail = Anymail::start();
    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let e = E2e::start_under(
        kind,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [tracking]\nbase_url = \"{base}\"\nsecrets = [\"e2e-secret-0123456789\"]\nclick = true\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [[webhook]]\nurl = \"http://127.0.0.1:{}/anymail/sparkpost/tracking/\"\nbasic = \"{SECRET}\"\nbatch_wait_ms = 100\n",
            anymail.port
        ),
    );
    let html = "<html><body><a href=\"https://shop.example.com/offer\" data-msys-linkname=\"hero offer\">Offer</a></body></html>";
    let msg = message(
        "MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nX-MSYS-API: {\"campaign_id\": \"spring\", \"bcc\": [\"carol@example.org\"]}\n",
        html,
    );
    e.send("app@example.com", &["alice@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(2);
    let got = e.capture.message_for("carol@example.org");
    let parsed = mail_parser::MessageParser::default()
        .parse(&got.data)
        .unwrap();
    let body = parsed.body_html(0).unwrap().into_owned();
    assert!(!body.contains("data-msys-linkname"), "{body}");
    let click = body
        .split('"')
        .find_map(|s| s.strip_prefix(&base).filter(|p| p.starts_with("/c/")))
        .unwrap_or_else(|| panic!("no tracked link: {body}"))
        .to_owned();
    assert_eq!(
        http_get(http_port, &click),
        (302, Some("https://shop.example.com/offer".into()))
    );

    let raw = |e: &serde_json::Value| -> serde_json::Value {
        let msys = &e["esp_event"]["msys"];
        msys.as_object().unwrap().values().next().unwrap().clone()
    };
    let injected = raw(&anymail.wait_for("queued", "carol@example.org", |_| true));
    let original = raw(&anymail.wait_for("queued", "alice@example.org", |_| true));
    let clicked = anymail.wait_for("clicked", "carol@example.org", |_| true);
    assert_eq!(clicked["click_url"], "https://shop.example.com/offer");
    let event = raw(&clicked);
    assert_eq!(event["rcpt_type"], "bcc", "{event:#}");
    assert_eq!(event["message_id"], injected["message_id"], "{event:#}");
    assert_ne!(
        event["message_id"], original["message_id"],
        "the copy is its own message"
    );
    assert_eq!(event["target_link_name"], "hero offer", "{event:#}");
    assert_eq!(event["campaign_id"], "spring");
    assert_eq!(event["click_tracking"], true);
}
