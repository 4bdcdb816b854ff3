//! The REST API end to end, called by SparkPost's own client libraries (node-sparkpost
//! and python-sparkpost, installed by `scripts/test.sh`) over HTTPS: mail goes through
//! the real Postfix, is opened, clicked and hard-bounces, and the clients find it in
//! the events and the metrics; a suppression added through the API refuses the next
//! message with SparkPost's 554.

mod support;

use serde_json::{Value, json};
use support::e2e::{E2e, http_get};
use support::message;
use support::postfix::free_port;
use support::rest::{ALL_GRANTS, Api, TestCa, api_section, key_table, node, python};

const KEY: &str = "e2e0api0key0e2e0api0key0e2e0api0key00000";
const DEAD: &str = "550 5.1.1 <dead@example.org>: Recipient address rejected: User unknown in local recipient table";

fn campaign(to: &str, api: &str) -> String {
    let html =
        "<html><body><p>Hi</p><a href=\"https://shop.example.com/offer\">Offer</a></body></html>";
    message(
        &format!(
            "From: News <news@example.com>\nTo: {to}\nSubject: Spring sale\nMIME-Version: 1.0\n\
             Content-Type: text/html; charset=utf-8\nX-MSYS-API: {api}\n"
        ),
        html,
    )
}

/// Poll `f` until it gives `Some`, for up to 60 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn ok(answer: Value) -> Value {
    assert!(answer.get("ok").is_some(), "the client failed: {answer}");
    answer["ok"].clone()
}

#[test]
fn sparkpost_clients_see_the_mail_postfix_carried_and_suppress_the_next() {
    let ca = TestCa::new();
    let api_port = free_port();
    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let e = E2e::start_feedback(
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [[sending_domain]]\nname = \"example.com\"\n\
             [tracking]\nbase_url = \"{base}\"\nsecrets = [\"e2e-secret-0123456789\"]\nopen = true\nclick = true\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n{}{}",
            api_section(api_port, Some(&ca), ""),
            key_table("ops", KEY, &ALL_GRANTS, None)
        ),
        &[("dead@", DEAD)],
        "",
    );
    let api = Api::new(&format!("https://127.0.0.1:{api_port}"), Some(&ca));
    api.wait();

    // A campaign to alice, with dead@ as a cc that the capture server refuses.
    e.send(
        "app@example.com",
        &["alice@example.org"],
        &campaign(
            "alice@example.org",
            r#"{"campaign_id": "spring", "cc": ["dead@example.org"]}"#,
        ),
    )
    .unwrap();
    let got = wait_for("alice's message", || {
        e.capture
            .all()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|r| r == "alice@example.org"))
    });
    let html = mail_parser::MessageParser::default()
        .parse(&got.data)
        .unwrap()
        .body_html(0)
        .unwrap()
        .into_owned();
    let urls: Vec<&str> = html
        .split('"')
        .filter_map(|s| s.strip_prefix(base.as_str()))
        .collect();
    // The initial-open pixel at the top, the open pixel at the end.
    for open in urls.iter().filter(|u| u.starts_with("/o/")) {
        assert_eq!(http_get(http_port, open).0, 200);
    }
    let click = urls.iter().find(|u| u.starts_with("/c/")).unwrap();
    assert_eq!(http_get(http_port, click).0, 302);

    // The hard bounce comes back through the MTA's DSN.
    wait_for("the bounce event", || {
        let a = api.call(
            "GET",
            "/api/v1/events/message?recipients=dead@example.org&events=bounce",
            Some(KEY),
            None,
        );
        (a.body["total_count"] == 1).then_some(())
    });

    // node-sparkpost finds alice's injection, open and click, and the campaign's bounce.
    let alice = ok(node(
        api_port,
        &ca,
        KEY,
        "events",
        Some(json!({"recipients": "alice@example.org"})),
    ));
    let types: Vec<&str> = alice["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for wanted in ["injection", "delivery", "initial_open", "open", "click"] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
    let bounce = ok(node(
        api_port,
        &ca,
        KEY,
        "events",
        Some(json!({"campaigns": "spring", "events": ["bounce"]})),
    ));
    assert_eq!(bounce["total_count"], 1, "{bounce}");
    let b = &bounce["results"][0];
    assert_eq!(b["rcpt_to"], "dead@example.org");
    assert_eq!(b["bounce_class"], "10");
    assert_eq!(b["campaign_id"], "spring");

    // The campaign's counts.
    let day_ago = msys_milter::rest::common::format_time(msys_milter::ids::unix_secs() - 86_400);
    let metrics = api.call(
        "GET",
        &format!(
            "/api/v1/metrics/deliverability/campaign?from={}&metrics=count_injected,count_bounce,count_hard_bounce,count_clicked,count_unique_clicked,count_unique_confirmed_opened,count_rendered,count_initial_rendered,count_unique_rendered",
            &day_ago[..16]
        ),
        Some(KEY),
        None,
    );
    assert_eq!(
        metrics.body["results"],
        json!([{"campaign_id": "spring", "count_injected": 2, "count_bounce": 1,
            "count_hard_bounce": 1, "count_clicked": 1, "count_unique_clicked": 1,
            "count_unique_confirmed_opened": 1, "count_rendered": 1,
            "count_initial_rendered": 1, "count_unique_rendered": 1}]),
        "{metrics:?}"
    );
    // python-sparkpost's metrics lists.
    let campaigns = ok(python(
        api_port,
        &ca,
        KEY,
        "campaigns",
        Some(&day_ago[..16]),
    ));
    assert_eq!(campaigns, json!(["spring"]));
    let domains = ok(python(api_port, &ca, KEY, "domains", Some(&day_ago[..16])));
    assert_eq!(domains, json!(["example.com"]));

    // python-sparkpost suppresses carol; the next campaign to her is refused at once.
    let created = ok(python(
        api_port,
        &ca,
        KEY,
        "create",
        Some("carol@example.org"),
    ));
    assert_eq!(
        created,
        json!({"message": "Suppression list successfully updated"})
    );
    let refused = e
        .send(
            "app@example.com",
            &["carol@example.org"],
            &campaign("carol@example.org", r#"{"campaign_id": "spring"}"#),
        )
        .unwrap_err();
    assert!(
        refused.contains("554")
            && refused.contains("recipient address was suppressed due to customer policy"),
        "{refused}"
    );
    let entry = ok(python(api_port, &ca, KEY, "get", Some("carol@example.org")));
    assert_eq!(entry[0]["type"], "non_transactional");
    assert_eq!(entry[0]["description"], "python-sparkpost");
    let listed = ok(python(api_port, &ca, KEY, "list", None));
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["recipient"].as_str().unwrap())
        .collect();
    // The bounce rule's entry for dead@ is there too.
    assert!(listed.contains(&"carol@example.org"), "{listed:?}");
    assert!(listed.contains(&"dead@example.org"), "{listed:?}");
    assert_eq!(
        ok(python(
            api_port,
            &ca,
            KEY,
            "delete",
            Some("carol@example.org")
        )),
        json!(true)
    );
    let gone = python(api_port, &ca, KEY, "get", Some("carol@example.org"));
    assert_eq!(gone["error"]["status"], 404, "{gone}");
    // And carol receives the campaign again.
    e.send(
        "app@example.com",
        &["carol@example.org"],
        &campaign("carol@example.org", r#"{"campaign_id": "spring"}"#),
    )
    .unwrap();
}

#[test]
fn node_sparkpost_manages_the_suppression_list_and_reports_a_wrong_key() {
    let ca = TestCa::new();
    let port = free_port();
    let toml = api_section(port, Some(&ca), "") + &key_table("ops", KEY, &ALL_GRANTS, None);
    let _milter = support::Milter::start(&toml);
    Api::new(&format!("https://127.0.0.1:{port}"), Some(&ca)).wait();
    let upserted = ok(node(
        port,
        &ca,
        KEY,
        "upsert",
        Some(json!([
            {"recipient": "a+b@example.org", "type": "transactional", "description": "node"},
            {"recipient": "c@example.org", "type": "non_transactional"}
        ])),
    ));
    assert_eq!(
        upserted,
        json!({"results": {"message": "Suppression List successfully updated"}})
    );
    let got = ok(node(port, &ca, KEY, "get", Some(json!("a+b@example.org"))));
    assert_eq!(got["results"][0]["recipient"], "a+b@example.org");
    assert_eq!(got["total_count"], 1);
    let listed = ok(node(
        port,
        &ca,
        KEY,
        "list",
        Some(json!({"types": ["transactional"], "cursor": "initial", "per_page": 1})),
    ));
    assert_eq!(listed["total_count"], 1, "{listed}");
    assert_eq!(listed["links"][0]["rel"], "first");
    assert_eq!(
        ok(node(port, &ca, KEY, "delete", Some(json!("c@example.org")))),
        json!("")
    );
    let missing = node(port, &ca, KEY, "get", Some(json!("c@example.org")));
    assert_eq!(missing["error"]["status"], 404);
    assert_eq!(
        missing["error"]["errors"][0]["message"],
        "Recipient could not be found"
    );
    let wrong = node(port, &ca, "not-a-key", "list", None);
    assert_eq!(wrong["error"]["status"], 401, "{wrong}");
    assert_eq!(wrong["error"]["errors"][0]["message"], "Unauthorized.");
}

#[test]
fn node_sparkpost_manages_webhooks_that_get_events_like_configured_ones() {
    let ca = TestCa::new();
    let api_port = free_port();
    let configured = support::webhook::Webhook::start(200);
    let hook = support::webhook::Webhook::start(200);
    let refusing = support::webhook::Webhook::start(503);
    let e = E2e::start(&format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [[webhook]]\nurl = \"{}\"\nbatch_wait_ms = 100\n{}{}",
        configured.url(),
        // The receivers are on this host: allowed here, as an administrator would.
        api_section(
            api_port,
            Some(&ca),
            "webhook_allow_networks = [\"127.0.0.0/8\"]"
        ),
        key_table("ops", KEY, &ALL_GRANTS, None)
    ));
    Api::new(&format!("https://127.0.0.1:{api_port}"), Some(&ca)).wait();
    let call = |command: &str, arg: Option<Value>| node(api_port, &ca, KEY, command, arg);

    let created = ok(call(
        "webhooks-create",
        Some(json!({
            "name": "events to the data team",
            "target": hook.url(),
            "events": ["injection", "delivery"],
            "auth_type": "basic",
            "auth_credentials": {"username": "u", "password": "p"},
            "custom_headers": {"X-Team": "data"},
        })),
    ));
    let id = created["results"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["results"]["links"][0]["href"],
        format!("/api/v1/webhooks/{id}")
    );
    // SparkPost's test POST came first.
    assert_eq!(hook.posts()[0].body, r#"[{"msys":{}}]"#);

    let listed = ok(call("webhooks-list", None));
    let listed = listed["results"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["source"], "config");
    assert_eq!(listed[1]["id"], id.as_str());
    assert_eq!(listed[1]["auth_credentials"], json!({"username": "u"}));
    let got = ok(call("webhooks-get", Some(json!(id))));
    assert_eq!(got["results"]["target"], hook.url());

    // Mail through Postfix: the API's webhook gets its events as a configured one does.
    e.send(
        "app@example.com",
        &["alice@example.org"],
        &message(
            "From: a@example.com\nTo: alice@example.org\nSubject: hi\n",
            "Hello\n",
        ),
    )
    .unwrap();
    let items = hook.wait_until(30, |items| {
        items
            .iter()
            .any(|i| i["msys"]["message_event"]["type"] == "injection")
    });
    assert!(!items.is_empty());
    let post = hook
        .posts()
        .into_iter()
        .find(|p| p.body.contains("injection"))
        .unwrap();
    assert_eq!(post.authorization.as_deref(), Some("Basic dTpw"));
    assert!(
        post.headers
            .contains(&("x-team".to_owned(), "data".to_owned())),
        "{:?}",
        post.headers
    );
    configured.wait_until(30, |items| !items.is_empty());

    let updated = ok(call(
        "webhooks-update",
        Some(json!({"id": id, "webhook": {"name": "renamed"}})),
    ));
    assert_eq!(updated["results"]["id"], id.as_str());
    assert_eq!(
        ok(call("webhooks-get", Some(json!(id))))["results"]["name"],
        "renamed"
    );

    let validated = ok(call(
        "webhooks-validate",
        Some(json!({"id": id, "message": {"msys": {}}})),
    ));
    assert_eq!(
        validated["results"]["msg"],
        "Test POST to endpoint succeeded"
    );
    assert_eq!(validated["results"]["response"]["status"], 200);
    let status = ok(call("webhooks-batch-status", Some(json!(id))));
    assert_eq!(status["results"][0]["response_code"], "200", "{status}");

    // A target that does not accept the test POST is refused.
    let refused = call(
        "webhooks-create",
        Some(json!({"name": "x", "target": refusing.url(), "events": ["delivery"]})),
    );
    assert_eq!(refused["error"]["status"], 400, "{refused}");
    // The configuration file's webhook is read-only here.
    let read_only = call(
        "webhooks-update",
        Some(json!({"id": "config-1", "webhook": {"name": "x"}})),
    );
    assert_eq!(read_only["error"]["status"], 403, "{read_only}");

    assert_eq!(ok(call("webhooks-delete", Some(json!(id)))), json!(""));
    let gone = call("webhooks-get", Some(json!(id)));
    assert_eq!(gone["error"]["status"], 404);
}
