//! The tracking endpoint's edges, over real HTTP on loopback: targets that need care in
//! a Location header, signed tokens whose target is no web URL, multipart one-click
//! unsubscribe (RFC 8058 allows it), junk paths.

use msys_milter::events::EventType;
use msys_milter::http::{EventSink, HttpState, RecordFuture, TrackingEvent, serve};
use msys_milter::tracking::token::{TokenData, sign};
use msys_milter::tracking::{Keys, Kind, Links};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Recorded(Mutex<Vec<TrackingEvent>>);

impl EventSink for Recorded {
    fn record(&self, event: TrackingEvent) -> RecordFuture<'_> {
        self.0.lock().unwrap().push(event);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct Endpoint {
    port: u16,
    events: Arc<Recorded>,
    keys: Keys,
}

const BASE: &str = "https://track.example.com";
const PERSON: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

impl Endpoint {
    async fn start() -> Endpoint {
        Endpoint::start_with(msys_milter::netguard::Networks::loopback()).await
    }

    async fn start_with(metrics_from: msys_milter::netguard::Networks) -> Endpoint {
        let keys = Keys::new(&["edge-secret-0123456789"]).unwrap();
        let events = Arc::new(Recorded::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(HttpState {
            keys: Some(keys.clone()),
            sink: events.clone(),
            store: None,
            metrics_from,
        });
        tokio::spawn(serve(
            listener,
            state,
            msys_milter::http::Limits::from_config(&msys_milter::config::Http::default()),
            std::future::pending(),
        ));
        Endpoint { port, events, keys }
    }

    fn links(&self) -> Links<'_> {
        Links {
            base_url: BASE,
            keys: &self.keys,
            transmission_id: 9,
            recipient: "who@example.net",
            expires: u32::MAX,
        }
    }

    /// One raw HTTP/1.1 request with extra header lines; (status, head, body).
    async fn request(&self, head: String, body: Vec<u8>) -> (u16, String, Vec<u8>) {
        let port = self.port;
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).unwrap();
            let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&raw[..split]).into_owned();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            (status, head, raw[split + 4..].to_vec())
        })
        .await
        .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.request(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {PERSON}\r\nConnection: close\r\n\r\n"),
            Vec::new(),
        )
        .await
    }

    async fn post(&self, path: &str, content_type: &str, body: &str) -> u16 {
        self.request(
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.as_bytes().to_vec(),
        )
        .await
        .0
    }

    fn events(&self) -> Vec<TrackingEvent> {
        self.events.0.lock().unwrap().clone()
    }
}

fn path(url: &str) -> &str {
    url.strip_prefix(BASE).unwrap()
}

fn location(head: &str) -> Option<&str> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location").then(|| value.trim())
    })
}

#[tokio::test]
async fn targets_are_made_fit_for_the_location_header() {
    let e = Endpoint::start().await;
    for (target, expected) in [
        ("HTTPS://Example.COM/Path", "HTTPS://Example.COM/Path"),
        (
            "https://example.com/café menu?q=ä&r=%41",
            "https://example.com/caf%C3%A9%20menu?q=%C3%A4&r=%41",
        ),
        (
            "http://example.com/a?b=\"c\"",
            "http://example.com/a?b=\"c\"",
        ),
    ] {
        let (status, head, _) = e.get(path(&e.links().click(1, target))).await;
        assert_eq!((status, location(&head)), (302, Some(expected)), "{head}");
    }
    assert_eq!(e.events().len(), 3);
    assert_eq!(e.events()[1].url, "https://example.com/café menu?q=ä&r=%41");
}

#[tokio::test]
async fn a_signed_target_that_is_no_web_url_is_refused() {
    let e = Endpoint::start().await;
    for target in [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "//evil.example/",
        "ftp://files.example/",
        "",
    ] {
        let token = sign(
            &e.keys,
            &TokenData {
                kind: Kind::Click,
                transmission_id: 1,
                recipient: "a@b".into(),
                link_index: 0,
                url: target.into(),
                link_name: String::new(),
                expires: u32::MAX,
            },
        );
        let (status, head, _) = e.get(&format!("/c/{token}")).await;
        assert_eq!(status, 404, "{target}");
        assert_eq!(location(&head), None);
    }
    assert!(e.events().is_empty());
}

#[tokio::test]
async fn junk_paths_answer_404() {
    let e = Endpoint::start().await;
    let huge = format!("/c/{}", "A".repeat(6000));
    let click = e.links().click(0, "https://example.com/");
    let click_as_open = path(&click).replace("/c/", "/o/");
    let click_as_unsub = path(&click).replace("/c/", "/u/");
    for bad in [
        "/o/",
        "/o/x",
        "/c/%00%ff",
        "/u/..%2F..%2Fetc%2Fpasswd",
        huge.as_str(),
        click_as_open.as_str(),
        click_as_unsub.as_str(),
        "/c/AAAA/extra",
    ] {
        let (status, head, _) = e.get(bad).await;
        assert_eq!(status, 404, "{bad}: {head}");
        assert_eq!(location(&head), None);
    }
    assert_eq!(
        e.post(
            &click_as_unsub,
            "application/x-www-form-urlencoded",
            "List-Unsubscribe=One-Click"
        )
        .await,
        404
    );
    assert!(e.events().is_empty());
}

#[tokio::test]
async fn one_click_as_multipart_form_data() {
    let e = Endpoint::start().await;
    let url = e.links().unsubscribe();
    let body = "------b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n------b0undary--\r\n";
    assert_eq!(
        e.post(
            path(&url),
            "multipart/form-data; boundary=----b0undary",
            &body.replace("One-Click", "Maybe")
        )
        .await,
        400
    );
    assert!(e.events().is_empty());
    assert_eq!(
        e.post(
            path(&url),
            "multipart/form-data; boundary=----b0undary",
            body
        )
        .await,
        200
    );
    let events = e.events();
    assert_eq!(
        (
            events.len(),
            events[0].kind,
            events[0].transmission_id,
            events[0].recipient.as_str()
        ),
        (1, EventType::ListUnsubscribe, 9, "who@example.net")
    );
}

#[tokio::test]
async fn machine_requests_are_flagged() {
    let e = Endpoint::start().await;
    let open = e.links().open();
    for (agent, machine) in [
        (Some(PERSON), false),
        (
            Some(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            ),
            true,
        ),
        (Some("Mozilla/5.0 (compatible; Mimecast URL protect)"), true),
        (None, true),
    ] {
        let ua = agent.map_or(String::new(), |a| format!("User-Agent: {a}\r\n"));
        let (status, _, _) = e
            .request(
                format!(
                    "GET {} HTTP/1.1\r\nHost: t\r\n{ua}Connection: close\r\n\r\n",
                    path(&open)
                ),
                Vec::new(),
            )
            .await;
        assert_eq!(status, 200);
        let last = e.events().pop().unwrap();
        assert_eq!(
            (last.visitor.machine, last.visitor.user_agent.as_deref()),
            (machine, agent),
            "{agent:?}"
        );
    }
}

/// `/metrics` (queue sizes, API key names on its counters) answers only `[http]
/// metrics_from`: the peer and every address a proxy says it forwarded for.
#[tokio::test]
async fn metrics_answer_only_the_allowed_networks_even_through_a_proxy() {
    let e = Endpoint::start().await;
    let with = |extra: &str| {
        format!("GET /metrics HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n")
    };
    let (status, _, body) = e.request(with(""), Vec::new()).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("# EOF"));
    for (forwarded, want) in [
        ("X-Forwarded-For: 203.0.113.9\r\n", 404),
        // A client's own entry first, its proxy's appended: all must be allowed.
        ("X-Forwarded-For: 127.0.0.1, 203.0.113.9\r\n", 404),
        ("X-Real-IP: 203.0.113.9\r\n", 404),
        ("Forwarded: for=203.0.113.9;proto=https\r\n", 404),
        ("Forwarded: for=\"[2001:db8::1]:4711\"\r\n", 404),
        ("X-Forwarded-For: unknown\r\n", 404),
        ("X-Forwarded-For: 127.0.0.1\r\n", 200),
        ("Forwarded: for=\"[::1]\"\r\n", 200),
    ] {
        let (status, ..) = e.request(with(forwarded), Vec::new()).await;
        assert_eq!(status, want, "{forwarded}");
    }
    // Health checks and tracking are for everyone.
    let elsewhere = Endpoint::start_with(
        msys_milter::netguard::Networks::try_from(vec!["10.0.0.0/8".to_owned()]).unwrap(),
    )
    .await;
    assert_eq!(elsewhere.get("/metrics").await.0, 404);
    assert_eq!(elsewhere.get("/healthz").await.0, 200);
}
