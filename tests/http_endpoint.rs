//! The tracking endpoint answering real HTTP requests on loopback: the pixel, redirects
//! only to signed targets, one-click unsubscribe by POST and never by GET.

use msys_milter::events::EventType;
use msys_milter::http::{EventSink, HttpState, PIXEL, RecordFuture, TrackingEvent, serve};
use msys_milter::tracking::{Keys, Links};
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

impl Endpoint {
    async fn start() -> Endpoint {
        let keys = Keys::new(&["current-secret-0123456789", "previous-secret-012345"]).unwrap();
        let events = Arc::new(Recorded::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(HttpState {
            keys: Some(keys.clone()),
            sink: events.clone(),
            store: None,
            metrics_from: msys_milter::netguard::Networks::loopback(),
        });
        tokio::spawn(serve(
            listener,
            state,
            msys_milter::http::Limits::from_config(&msys_milter::config::Http::default()),
            std::future::pending(),
        ));
        Endpoint { port, events, keys }
    }

    fn links<'a>(&'a self, base: &'a str) -> Links<'a> {
        Links {
            base_url: base,
            keys: &self.keys,
            transmission_id: 42,
            recipient: "to@example.org",
            expires: u32::MAX,
        }
    }

    /// The path of a URL the links made (they use a public base URL).
    fn path(url: &str) -> String {
        url.strip_prefix("https://track.example.com")
            .unwrap()
            .to_owned()
    }

    /// One raw HTTP/1.1 request; (status, headers, body).
    async fn request(
        &self,
        method: &str,
        path: &str,
        ua: &str,
        body: &str,
    ) -> (u16, String, Vec<u8>) {
        let port = self.port;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: track.example.com\r\nUser-Agent: {ua}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(req.as_bytes()).unwrap();
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

    fn events(&self) -> Vec<TrackingEvent> {
        self.events.0.lock().unwrap().clone()
    }
}

const PERSON: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

#[tokio::test]
async fn pixel_bytes_and_headers() {
    let e = Endpoint::start().await;
    let url = e.links("https://track.example.com").open();
    let (status, head, body) = e.request("GET", &Endpoint::path(&url), PERSON, "").await;
    assert_eq!(status, 200);
    assert_eq!(body, PIXEL);
    assert_eq!(body.len(), 43);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: image/gif"));
    assert!(head.contains("cache-control: no-cache, no-store"));
    let events = e.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].kind,
            events[0].transmission_id,
            events[0].recipient.as_str()
        ),
        (EventType::Open, 42, "to@example.org")
    );
    assert!(!events[0].visitor.machine);
    // Gmail's image proxy is flagged.
    e.request(
        "GET",
        &Endpoint::path(&url),
        "Mozilla/5.0 (via ggpht.com GoogleImageProxy)",
        "",
    )
    .await;
    assert!(e.events()[1].visitor.machine);
}

#[tokio::test]
async fn click_redirects_to_the_signed_target_only() {
    let e = Endpoint::start().await;
    let target = "https://shop.example.com/item?id=42&x=%20y";
    let url = e.links("https://track.example.com").click(3, target);
    let (status, head, _) = e.request("GET", &Endpoint::path(&url), PERSON, "").await;
    assert_eq!(status, 302);
    assert!(
        head.contains(&format!("location: {target}"))
            || head.contains(&format!("Location: {target}")),
        "{head}"
    );
    assert_eq!(e.events()[0].link_index, 3);
    assert_eq!(e.events()[0].url, target);

    // Forged, tampered, wrong kind, expired, or plain URLs: 404, never a redirect.
    let path = Endpoint::path(&url);
    let mut tampered = path.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let forged_keys = Keys::new(&["someone-elses-secret-123"]).unwrap();
    let forged = Links {
        keys: &forged_keys,
        ..e.links("https://track.example.com")
    }
    .click(0, "https://evil.example/");
    let expired = Links {
        expires: 1,
        ..e.links("https://track.example.com")
    }
    .click(0, target);
    let open_as_click =
        Endpoint::path(&e.links("https://track.example.com").open()).replace("/o/", "/c/");
    for bad in [
        String::from_utf8(tampered).unwrap(),
        Endpoint::path(&forged),
        Endpoint::path(&expired),
        open_as_click,
        "/c/https://evil.example/".into(),
        "/c/".into(),
        "/c/%2F%2Fevil.example".into(),
    ] {
        let (status, head, _) = e.request("GET", &bad, PERSON, "").await;
        assert_eq!(status, 404, "{bad}: {head}");
        assert!(!head.to_ascii_lowercase().contains("location:"), "{bad}");
    }
    assert_eq!(e.events().len(), 1);
}

#[tokio::test]
async fn old_keys_still_work_after_rotation() {
    let e = Endpoint::start().await;
    let old = Keys::new(&["previous-secret-012345"]).unwrap();
    let url = Links {
        keys: &old,
        ..e.links("https://track.example.com")
    }
    .click(0, "https://example.com/");
    assert_eq!(
        e.request("GET", &Endpoint::path(&url), PERSON, "").await.0,
        302
    );
}

#[tokio::test]
async fn one_click_unsubscribe_by_post_never_by_get() {
    let e = Endpoint::start().await;
    let path = Endpoint::path(&e.links("https://track.example.com").unsubscribe());
    let (status, head, body) = e.request("GET", &path, PERSON, "").await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/html"));
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains("<form method=\"post\"") && page.contains("value=\"One-Click\""),
        "{page}"
    );
    assert!(e.events().is_empty(), "a GET never unsubscribes");

    assert_eq!(
        e.request("POST", &path, PERSON, "something=else").await.0,
        400
    );
    assert!(e.events().is_empty());
    let (status, _, _) = e
        .request(
            "POST",
            &path,
            "Mozilla/5.0 (compatible; Gmail one-click)",
            "List-Unsubscribe=One-Click",
        )
        .await;
    assert_eq!(status, 200);
    let events = e.events();
    assert_eq!(
        (events.len(), events[0].kind, events[0].recipient.as_str()),
        (1, EventType::ListUnsubscribe, "to@example.org")
    );
    // An unsubscribe token is no click token, and a bad one is refused.
    assert_eq!(
        e.request("GET", &path.replace("/u/", "/c/"), PERSON, "")
            .await
            .0,
        404
    );
    assert_eq!(
        e.request("POST", "/u/bogus", PERSON, "List-Unsubscribe=One-Click")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn health() {
    let e = Endpoint::start().await;
    let (status, _, body) = e.request("GET", "/healthz", PERSON, "").await;
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
}
