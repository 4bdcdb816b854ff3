//! The REST API of the real daemon: SparkPost's answers for the suppression list, the
//! message events and the metrics, and everything a hostile or careless caller can
//! send answered with a clear 4xx (never a 5xx, never a crash), the data untouched.

mod support;

use serde_json::{Map, Value, json};
use std::io::{Read as _, Write as _};
use support::rest::{ALL_GRANTS, Api, TestCa, api_section, key_table};
use support::{Milter, postfix::free_port};

const KEY: &str = "0123456789abcdef0123456789abcdef01234567";
const VIEWER: &str = "viewer-key-viewer-key-viewer-key-000000";
const SUB: &str = "sub7-key-sub7-key-sub7-key-sub7-key-0000";

fn keys() -> String {
    key_table("ops", KEY, &ALL_GRANTS, None)
        + &key_table("viewer", VIEWER, &["metrics/view"], None)
        + &key_table(
            "sub7",
            SUB,
            &["suppression_lists/manage", "message_events/view"],
            Some(7),
        )
}

/// The daemon with a plain-HTTP API (loopback, as behind a proxy) and its client.
fn start(extra: &str) -> (Milter, Api, u16) {
    let port = free_port();
    let http = free_port();
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n{}{}",
        api_section(port, None, extra),
        keys()
    );
    let milter = Milter::start(&toml);
    let api = Api::new(&format!("http://127.0.0.1:{port}"), None);
    api.wait();
    (milter, api, http)
}

/// A raw HTTP/1.1 exchange (the path exactly as written, no client normalising it).
fn raw(port: u16, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn suppression_list_as_sparkpost_answers() {
    let (milter, api, _) = start("");
    let k = Some(KEY);
    // One recipient, the old boolean form python-sparkpost sends; a literal `+` kept.
    let a = api.call(
        "PUT",
        "/api/v1/suppression-list/Ann+tag@example.com",
        k,
        Some(r#"{"transactional": true, "description": "asked by phone"}"#),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        json!({"results": {"message": "Suppression list successfully updated"}})
    );
    let got = api.call(
        "GET",
        "/api/v1/suppression-list/ann+tag%40example.com",
        k,
        None,
    );
    assert_eq!(got.status, 200, "{got:?}");
    let entry = &got.body["results"][0];
    assert_eq!(entry["recipient"], "ann+tag@example.com");
    assert_eq!(entry["type"], "transactional");
    assert_eq!(entry["transactional"], true);
    assert_eq!(entry["source"], "Manually Added");
    assert_eq!(entry["description"], "asked by phone");
    assert_eq!(entry["subaccount_id"], "0");
    let created = entry["created"].as_str().unwrap();
    assert!(
        created.len() == 25 && created.ends_with("+00:00"),
        "{created}"
    );
    assert_eq!(got.body["total_count"], 1);
    assert_eq!(got.body["links"], json!([]));

    // No type: SparkPost's 400.
    let e = api.call(
        "PUT",
        "/api/v1/suppression-list/x@example.com",
        k,
        Some("{}"),
    );
    assert_eq!(
        (e.status, e.message()),
        (400, "Must supply a suppression type")
    );

    // Bulk: 25 recipients (the old `email` name among them), one malformed -> nothing.
    let mut items: Vec<Value> = (0..25)
        .map(|i| json!({"recipient": format!("r{i:02}@bulk.example"), "type": "non_transactional"}))
        .collect();
    items[3] = json!({"email": "r03@bulk.example", "non_transactional": true});
    let mut bad = items.clone();
    bad.push(json!({"recipient": "not an address", "type": "transactional"}));
    let e = api.call(
        "PUT",
        "/api/v1/suppression-list",
        k,
        Some(&json!({"recipients": bad}).to_string()),
    );
    assert_eq!(
        (e.status, e.message()),
        (
            400,
            "PUT body contains 1 invalid or malformed recipient(s): not an address"
        )
    );
    let a = api.call(
        "PUT",
        "/api/v1/suppression-list",
        k,
        Some(&json!({"recipients": items}).to_string()),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body["results"]["message"],
        "Suppression List successfully updated"
    );

    // A cursor walk: every entry once, `links` an array of {href, rel}.
    let mut seen = Vec::new();
    let mut path =
        "/api/v1/suppression-list?domain=bulk.example&cursor=initial&per_page=10".to_owned();
    loop {
        let page = api.call("GET", &path, k, None);
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(page.body["total_count"], 25);
        for e in page.body["results"].as_array().unwrap() {
            seen.push(e["recipient"].as_str().unwrap().to_owned());
        }
        let links = page.body["links"].as_array().unwrap();
        assert_eq!(links[0]["rel"], "first");
        match links.iter().find(|l| l["rel"] == "next") {
            Some(next) => path = next["href"].as_str().unwrap().to_owned(),
            None => break,
        }
        assert!(path.starts_with("/api/v1/suppression-list?"), "{path}");
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25);

    // Filters: types, sources, page paging with the old `limit`.
    let t = api.call(
        "GET",
        "/api/v1/suppression-list?types=transactional",
        k,
        None,
    );
    assert_eq!(t.body["total_count"], 1);
    let s = api.call(
        "GET",
        "/api/v1/suppression-list?sources=Manually%20Added&limit=5&page=2",
        k,
        None,
    );
    assert_eq!(s.body["total_count"], 26);
    assert_eq!(s.body["results"].as_array().unwrap().len(), 5);

    let summary = api.call("GET", "/api/v1/suppression-list/summary", k, None);
    assert_eq!(summary.body["results"]["manually_added"], 26);
    assert_eq!(summary.body["results"]["total"], 26);
    assert_eq!(summary.body["results"]["compliance"], 0);

    // DELETE: 204 and an empty body, then 404 with SparkPost's message.
    let d = api.call(
        "DELETE",
        "/api/v1/suppression-list/r00@bulk.example",
        k,
        None,
    );
    assert_eq!(
        (d.status, d.body.clone()),
        (204, Value::String(String::new()))
    );
    let d = api.call(
        "DELETE",
        "/api/v1/suppression-list/r00@bulk.example",
        k,
        None,
    );
    assert_eq!(
        (d.status, d.message()),
        (404, "Recipient could not be found")
    );
    let g = api.call("GET", "/api/v1/suppression-list/r00@bulk.example/", k, None);
    assert_eq!(
        (g.status, g.message()),
        (404, "Recipient could not be found")
    );

    // The CLI sees the same list.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msys-milter"))
        .env("STATE_DIRECTORY", milter.state.path())
        .args(["suppression", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ann+tag@example.com"), "{text}");
    assert!(!text.contains("r00@bulk.example"), "{text}");
}

#[test]
fn callers_without_the_right_key_get_sparkpost_errors_and_change_nothing() {
    let (_milter, api, http) = start("");
    let put = |key, recipient: &str, headers: &[(&str, &str)]| {
        api.try_call(
            "PUT",
            &format!("/api/v1/suppression-list/{recipient}"),
            key,
            headers,
            Some(br#"{"type":"non_transactional"}"#.to_vec()),
        )
        .unwrap()
    };
    assert_eq!(put(Some(KEY), "main@example.com", &[]).status, 200);
    let a = put(None, "x@example.com", &[]);
    assert_eq!((a.status, a.message()), (401, "Unauthorized."));
    assert_eq!(put(Some("wrong"), "x@example.com", &[]).status, 401);
    // HTTP Basic with the key as the user name works as SparkPost's does.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{KEY}:")
        )
    );
    assert_eq!(
        api.try_call(
            "GET",
            "/api/v1/suppression-list",
            None,
            &[("Authorization", &basic)],
            None
        )
        .unwrap()
        .status,
        200
    );
    let f = put(Some(VIEWER), "x@example.com", &[]);
    assert_eq!((f.status, f.message()), (403, "Forbidden."));
    // A subaccount's key sees and changes only its own subaccount.
    assert_eq!(put(Some(SUB), "own@example.com", &[]).status, 200);
    let g = api.call(
        "GET",
        "/api/v1/suppression-list/main@example.com",
        Some(SUB),
        None,
    );
    assert_eq!(g.status, 404);
    let d = api.call(
        "DELETE",
        "/api/v1/suppression-list/main@example.com",
        Some(SUB),
        None,
    );
    assert_eq!(d.status, 404);
    let other = put(Some(SUB), "x@example.com", &[("X-MSYS-SUBACCOUNT", "8")]);
    assert_eq!(other.status, 403);
    let listed = api.call("GET", "/api/v1/suppression-list", Some(SUB), None);
    assert_eq!(listed.body["total_count"], 1);
    assert_eq!(listed.body["results"][0]["subaccount_id"], "7");
    // The main key picks a subaccount with X-MSYS-SUBACCOUNT.
    let picked = api
        .try_call(
            "GET",
            "/api/v1/suppression-list/own@example.com",
            Some(KEY),
            &[("X-MSYS-SUBACCOUNT", "7")],
            None,
        )
        .unwrap();
    assert_eq!(picked.status, 200);
    let all = api.call("GET", "/api/v1/suppression-list", Some(KEY), None);
    assert_eq!(
        all.body["total_count"], 2,
        "nothing else was written: {all:?}"
    );

    // Malformed input: a clear 4xx each time.
    let k = Some(KEY);
    let bad_json = api.call(
        "PUT",
        "/api/v1/suppression-list",
        k,
        Some("{\"recipients\": [}"),
    );
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.message(), "Problems parsing request as json");
    let huge = api
        .try_call(
            "PUT",
            "/api/v1/suppression-list",
            k,
            &[],
            Some(vec![b' '; 60 << 20]),
        )
        .map(|a| a.status);
    // The answer comes before the whole body is read: the client may see it or a reset.
    assert!(matches!(huge, Ok(413) | Err(_)), "{huge:?}");
    // Without a known key, no body is read at all: 401 right after the head, though the
    // 10 MB the head announces never come.
    let port: u16 = api.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(
        b"PUT /api/v1/suppression-list HTTP/1.1\r\nHost: x\r\nAuthorization: wrong\r\n\
          Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 401", "answered before any body byte");
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"recipient": format!("m{i}@example.com"), "type": "transactional"}))
        .collect();
    let m = api.call(
        "PUT",
        "/api/v1/suppression-list",
        k,
        Some(&json!({"recipients": many}).to_string()),
    );
    assert_eq!(m.status, 400);
    assert!(m.message().contains("at most 10000"), "{m:?}");
    let port: u16 = api.base.rsplit(':').next().unwrap().parse().unwrap();
    // 5,000 filters: over the request head limit (431) ...
    let filters = vec!["t=a"; 5000].join("&");
    let answer = raw(
        port,
        &format!(
            "GET /api/v1/suppression-list?{filters} HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    // ... and under it, more parameters than any search needs: 400.
    let filters = vec!["t=a"; 1500].join("&");
    let f = api.call(
        "GET",
        &format!("/api/v1/suppression-list?{filters}"),
        k,
        None,
    );
    assert_eq!(f.status, 400, "{}", f.message());
    for path in [
        "/api/v1/suppression-list/../../../etc/passwd",
        "/api/v1/suppression-list/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/../v1/suppression-list",
        "/api/v1/suppression-list/%ff%fe",
    ] {
        let answer = raw(
            port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
        assert!(answer.contains("\"errors\""), "{path}: {answer}");
    }
    let wrong_method = api.call("POST", "/api/v1/suppression-list", k, Some("{}"));
    assert_eq!(wrong_method.status, 405);
    assert_eq!(api.call("GET", "/api/v1/nothing-here", k, None).status, 404);
    // Each listener serves only its own paths.
    let on_tracking = raw(
        http,
        &format!(
            "GET /api/v1/suppression-list HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(on_tracking.starts_with("HTTP/1.1 404"), "{on_tracking}");
    let on_api = raw(
        port,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(on_api.starts_with("HTTP/1.1 404"), "{on_api}");
    let on_api = raw(
        port,
        "GET /o/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(on_api.starts_with("HTTP/1.1 404"), "{on_api}");
    // Still serving after all that.
    assert_eq!(
        api.call("GET", "/api/v1/suppression-list", k, None).status,
        200
    );
}

#[test]
fn a_key_over_its_rate_gets_429_too_many_requests() {
    let (_milter, api, _) = start("rate_limit = 5");
    for _ in 0..5 {
        assert_eq!(
            api.call("GET", "/api/v1/suppression-list", Some(KEY), None)
                .status,
            200
        );
    }
    let a = api.call("GET", "/api/v1/suppression-list", Some(KEY), None);
    assert_eq!((a.status, a.message()), (429, "Too many requests"));
    // Another key has its own allowance.
    let v = api.call(
        "GET",
        "/api/v1/metrics/campaigns?from=2020-01-01T00:00",
        Some(VIEWER),
        None,
    );
    assert_eq!(v.status, 200, "{v:?}");
}

/// An event as the store keeps it.
fn event(
    id: u64,
    kind: msys_milter::events::EventType,
    at: u64,
    rcpt: &str,
    fields: &[(&str, &str)],
) -> msys_milter::events::Event {
    let mut m = Map::new();
    m.insert("type".into(), json!(kind.as_str()));
    m.insert("event_id".into(), json!(id.to_string()));
    m.insert("timestamp".into(), json!(at.to_string()));
    m.insert("transmission_id".into(), json!("7001"));
    m.insert("rcpt_to".into(), json!(rcpt));
    for (k, v) in fields {
        m.insert((*k).into(), json!(v));
    }
    msys_milter::events::Event {
        event_id: id,
        kind,
        timestamp: at,
        transmission_id: "7001".into(),
        fields: m,
    }
}

#[test]
fn events_and_metrics_from_the_store() {
    use msys_milter::events::EventType::*;
    use msys_milter::store::Store as _;
    let (milter, api, _) = start("");
    let now = msys_milter::ids::unix_secs();
    let t = now - 3600;
    let spring = [
        ("campaign_id", "spring"),
        ("sending_domain", "news.example"),
    ];
    let bounce = [
        ("campaign_id", "spring"),
        ("sending_domain", "news.example"),
        ("bounce_class", "10"),
        ("reason", "550 5.1.1 no such user"),
    ];
    let events = vec![
        event(1, Injection, t, "ann@example.com", &spring),
        event(2, Injection, t, "bob@example.com", &spring),
        event(
            3,
            Delivery,
            t + 5,
            "ann@example.com",
            &[("campaign_id", "spring"), ("msg_size", "2000")],
        ),
        event(4, Bounce, t + 6, "bob@example.com", &bounce),
        event(5, Open, t + 60, "ann@example.com", &spring),
        event(6, Open, t + 120, "ann@example.com", &spring),
        event(7, Click, t + 130, "ann@example.com", &spring),
        event(
            8,
            Injection,
            t,
            "cy@example.com",
            &[("campaign_id", "autumn"), ("subaccount_id", "7")],
        ),
    ];
    let store = msys_milter::store::SqliteStore::open(
        &milter.state.path().join("msys-milter.db"),
        msys_milter::store::sqlite::Durability::Full,
    )
    .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.commit(msys_milter::store::Commit {
            events,
            ..Default::default()
        }))
        .unwrap();
    // Closed: its journal is applied, so the daemon's reads see the events.
    drop(store);
    let k = Some(KEY);

    let by_rcpt = api.call(
        "GET",
        "/api/v1/events/message?recipients=ANN@example.com",
        k,
        None,
    );
    assert_eq!(by_rcpt.status, 200, "{by_rcpt:?}");
    assert_eq!(by_rcpt.body["total_count"], 5);
    let results = by_rcpt.body["results"].as_array().unwrap();
    // Newest first, flattened (no msys wrapper).
    assert_eq!(results[0]["type"], "click");
    assert_eq!(results[4]["type"], "injection");
    assert_eq!(by_rcpt.body["links"], json!({}));

    let bounces = api.call(
        "GET",
        "/api/v1/events/message?campaigns=spring&events=bounce",
        k,
        None,
    );
    assert_eq!(bounces.body["total_count"], 1);
    assert_eq!(bounces.body["results"][0]["rcpt_to"], "bob@example.com");
    let classes = api.call(
        "GET",
        "/api/v1/events/message?bounce_classes=10&reasons=no%20such",
        k,
        None,
    );
    assert_eq!(classes.body["total_count"], 1);
    let e = api.call("GET", "/api/v1/events/message?events=nonsense", k, None);
    assert_eq!(e.status, 400);

    // Cursor paging: every event once.
    let mut path = "/api/v1/events/message?per_page=3".to_owned();
    let mut ids = Vec::new();
    loop {
        let page = api.call("GET", &path, k, None);
        assert_eq!(page.body["total_count"], 8);
        ids.extend(
            page.body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].clone()),
        );
        match page.body["links"]["next"].as_str() {
            Some(next) => path = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(ids.len(), 8);
    // The legacy endpoint: pages and a links array.
    let legacy = api.call("GET", "/api/v1/message-events?per_page=5&page=1", k, None);
    assert_eq!(legacy.body["results"].as_array().unwrap().len(), 5);
    assert_eq!(legacy.body["links"][0]["rel"], "next");
    // A subaccount's key sees only its events.
    let sub = api.call("GET", "/api/v1/events/message", Some(SUB), None);
    assert_eq!(sub.body["total_count"], 1);
    assert_eq!(sub.body["results"][0]["rcpt_to"], "cy@example.com");

    // Metrics from the counters.
    let from = msys_milter::rest::common::format_time(t - 86_400);
    let metrics = "count_targeted,count_injected,count_delivered,count_sent,count_bounce,count_hard_bounce,\
        count_rendered,count_unique_rendered,count_clicked,count_unique_clicked,count_unique_confirmed_opened,total_msg_volume";
    let by_campaign = api.call(
        "GET",
        &format!(
            "/api/v1/metrics/deliverability/campaign?from={}&metrics={metrics}",
            &from[..16]
        ),
        Some(VIEWER),
        None,
    );
    assert_eq!(by_campaign.status, 200, "{by_campaign:?}");
    let spring = by_campaign.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["campaign_id"] == "spring")
        .unwrap()
        .clone();
    assert_eq!(
        spring,
        json!({"campaign_id": "spring", "count_targeted": 2, "count_injected": 2,
            "count_delivered": 1, "count_sent": 2, "count_bounce": 1, "count_hard_bounce": 1,
            "count_rendered": 2, "count_unique_rendered": 1, "count_clicked": 1,
            "count_unique_clicked": 1, "count_unique_confirmed_opened": 1,
            "total_msg_volume": 2000})
    );
    let summary = api.call(
        "GET",
        &format!(
            "/api/v1/metrics/deliverability?from={}&metrics=count_injected",
            &from[..16]
        ),
        Some(VIEWER),
        None,
    );
    assert_eq!(summary.body, json!({"results": [{"count_injected": 3}]}));
    let series = api.call(
        "GET",
        &format!("/api/v1/metrics/deliverability/time-series?from={}&metrics=count_injected&precision=day", &from[..16]),
        Some(VIEWER),
        None,
    );
    let points = series.body["results"].as_array().unwrap();
    assert!(points.len() >= 2, "{series:?}");
    assert_eq!(
        points
            .iter()
            .map(|p| p["count_injected"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    assert!(
        points[0]["ts"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00+00:00")
    );
    let classes = api.call(
        "GET",
        &format!(
            "/api/v1/metrics/deliverability/bounce-classification?from={}&metrics=count_bounce",
            &from[..16]
        ),
        Some(VIEWER),
        None,
    );
    assert_eq!(
        classes.body["results"][0],
        json!({"classification_id": 10, "bounce_class_name": "Invalid Recipient",
            "bounce_category_name": "Hard", "count_bounce": 1})
    );
    let campaigns = api.call(
        "GET",
        &format!("/api/v1/metrics/campaigns?from={}", &from[..16]),
        Some(VIEWER),
        None,
    );
    assert_eq!(
        campaigns.body,
        json!({"results": {"campaigns": ["autumn", "spring"]}})
    );
    let missing = api.call(
        "GET",
        "/api/v1/metrics/deliverability?from=2020-01-01T00:00",
        Some(VIEWER),
        None,
    );
    assert_eq!(missing.status, 422);
    let unknown = api.call(
        "GET",
        "/api/v1/metrics/deliverability?from=2020-01-01T00:00&metrics=count_nonsense",
        Some(VIEWER),
        None,
    );
    assert_eq!(unknown.status, 400);
}

#[test]
fn https_with_the_configured_certificate_and_keys_reloaded_on_sighup() {
    let ca = TestCa::new();
    let port = free_port();
    let toml = api_section(port, Some(&ca), "") + &key_table("ops", KEY, &ALL_GRANTS, None);
    let milter = Milter::start(&toml);
    let api = Api::new(&format!("https://127.0.0.1:{port}"), Some(&ca));
    api.wait();
    assert_eq!(
        api.call("GET", "/api/v1/suppression-list", Some(KEY), None)
            .status,
        200
    );
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = raw(
        port,
        "GET /api/v1/suppression-list HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    // A new key in the file, SIGHUP: the new one works, the old one no longer.
    std::fs::write(
        milter.config_path(),
        api_section(port, Some(&ca), "") + &key_table("new", VIEWER, &ALL_GRANTS, None),
    )
    .unwrap();
    milter.hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api
        .call("GET", "/api/v1/suppression-list", Some(VIEWER), None)
        .status
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "{}", milter.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        api.call("GET", "/api/v1/suppression-list", Some(KEY), None)
            .status,
        401
    );
}

/// A webhook made through the API is a caller's say, not the administrator's: it may
/// not point the daemon at this host, its private network or a cloud's metadata
/// service unless `[api] webhook_allow_networks` lists them; names are checked as they
/// resolve.
#[test]
fn webhooks_made_through_the_api_reach_no_private_address_unless_allowed() {
    let make = |api: &Api, target: &str| {
        let body = format!(r#"{{"name":"n","target":"{target}","events":["delivery"]}}"#);
        api.try_call(
            "POST",
            "/api/v1/webhooks",
            Some(KEY),
            &[],
            Some(body.into_bytes()),
        )
        .unwrap()
    };
    let description = |a: &support::rest::Answer| a.body["errors"][0]["description"].to_string();
    let (_milter, api, _) = start("");
    for target in [
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ] {
        let a = make(&api, target);
        assert_eq!(a.status, 400, "{target}: {:?}", a.body);
        assert!(
            description(&a).contains("is not a public address"),
            "{:?}",
            a.body
        );
    }
    // A name is refused when all it resolves to is refused.
    let a = make(&api, "http://localhost:9/");
    assert_eq!(
        (a.status, a.message()),
        (400, "Webhook target failed the test POST")
    );
    assert!(
        description(&a).contains("is not a public address"),
        "{:?}",
        a.body
    );
    assert_eq!(
        api.call("GET", "/api/v1/webhooks", Some(KEY), None).body["results"],
        serde_json::json!([])
    );

    // Allowed: the test POST is made (nothing listens on port 9, so it fails there).
    let (_milter, api, _) = start("webhook_allow_networks = [\"127.0.0.0/8\"]\n");
    let a = make(&api, "http://127.0.0.1:9/hook");
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(
        !description(&a).contains("is not a public address"),
        "{:?}",
        a.body
    );
}

/// A client that keeps sending wrong keys gets 429 before any key is checked (a
/// guesser learns nothing more, even with the right key) for a minute's worth.
#[test]
fn a_client_sending_wrong_keys_is_held_back() {
    let (_milter, api, _) = start("auth_failures_per_minute = 3\n");
    let get = |key| {
        api.try_call("GET", "/api/v1/suppression-list", Some(key), &[], None)
            .unwrap()
            .status
    };
    assert_eq!(get(KEY), 200);
    for _ in 0..3 {
        assert_eq!(get("wrong"), 401);
    }
    assert_eq!(get("wrong"), 429);
    assert_eq!(get(KEY), 429);
}
