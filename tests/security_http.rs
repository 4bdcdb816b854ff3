//! The HTTP listeners' limits that RELIABILITY.md listed as "claims without a test yet":
//! the tracking listener's idle timeout, its 431 and 413 caps, the forwarded-address
//! rule, and the REST API's connection cap, list / page / bucket caps and TLS handshake
//! timeout. Each test runs the real daemon, lowers the timeouts or caps through its
//! configuration so it runs in a second or two, and asserts the exact answer at the
//! limit and one past it.

mod support;

use axum::extract::{ConnectInfo, FromRequestParts};
use msys_milter::http::Requester;
use msys_milter::tracking::{Keys, Links};
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::Milter;
use support::postfix::free_port;
use support::rest::{ALL_GRANTS, Api, TestCa, api_section, key_table};

const KEY: &str = "0123456789abcdef0123456789abcdef01234567";
const BASE: &str = "https://track.example.com";

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 over std sockets.

/// Read one response (head and a `Content-Length` body) and leave the connection open.
fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&raw));
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

/// How long after `since` the server closed `s` (EOF or reset), reading and throwing
/// away whatever comes; `None` if it is still open at `since + wait`.
fn closed_after(s: &mut TcpStream, since: Instant, wait: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        let left = (since + wait).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(since.elapsed()),
        }
    }
}

/// Send `request` whole, then read until the server closes. A reset after the answer
/// (the server closed with bytes of ours unread) keeps what came before it.
fn exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

// ---------------------------------------------------------------------------------------
// The real daemon: the tracking listener (`[http]`, with `[tracking]` so its links are
// served) and a REST API (`[api]`, HTTPS with `ca`, else plain HTTP on loopback).

const SECRET: &str = "security-secret-0123456789";

struct Daemon {
    milter: Milter,
    http: u16,
    api: u16,
}

/// Start it with `http_extra` lines in `[http]` and `api_extra` in `[api]`, and wait
/// until the tracking listener answers.
fn daemon(ca: Option<&TestCa>, http_extra: &str, api_extra: &str) -> Daemon {
    let api = free_port();
    let http = free_port();
    let toml = format!(
        "[tracking]\nbase_url = \"{BASE}\"\nsecrets = [\"{SECRET}\"]\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n{http_extra}\n{}{}",
        api_section(api, ca, api_extra),
        key_table("ops", KEY, &ALL_GRANTS, None)
    );
    let milter = Milter::start(&toml);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !exchange_or_empty(
        http,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(
            Instant::now() < deadline,
            "no tracking listener:\n{}",
            milter.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { milter, http, api }
}

/// [`exchange`], or "" when nothing listens.
fn exchange_or_empty(port: u16, request: &[u8]) -> String {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(_) => exchange(port, request),
        Err(_) => String::new(),
    }
}

/// Links signed with the daemon's secret.
fn links(keys: &Keys) -> Links<'_> {
    Links {
        base_url: BASE,
        keys,
        transmission_id: 77,
        recipient: "who@example.net",
        expires: u32::MAX,
    }
}

fn keys() -> Keys {
    Keys::new(&[SECRET]).unwrap()
}

/// The daemon's suppression list, as `msys-milter suppression list` prints it.
fn suppression_list(milter: &Milter) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msys-milter"))
        .env("STATE_DIRECTORY", milter.state.path())
        .args(["suppression", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// Claim 1: `[http] idle_timeout`.

/// A keep-alive connection that fell silent after one complete request and answer is
/// closed by the server once `idle_timeout` (1 s here, 30 s by default) has passed, and
/// not before. `header_timeout` is set above it (30 s) so that only the idle timeout can
/// be what closes it (see the next test for why that matters).
#[test]
fn tracking_a_silent_keep_alive_connection_is_closed_after_idle_timeout() {
    let d = daemon(None, "idle_timeout = 1\nheader_timeout = 30", "");
    let mut s = TcpStream::connect(("127.0.0.1", d.http)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(
        (status, body.as_slice()),
        (200, b"ok\n".as_slice()),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "the server keeps the connection: {head}"
    );
    let answered = Instant::now();
    // Still open (and serving) shortly before the timeout...
    std::thread::sleep(Duration::from_millis(600));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).0, 200, "open 0.6 s after an answer");
    // ... and closed one idle second after the last answer.
    let answered_again = Instant::now();
    let closed = closed_after(&mut s, answered_again, Duration::from_secs(5))
        .expect("a silent keep-alive connection was still open 5 s later");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "closed {closed:?} after the last answer (idle_timeout = 1 s); first answer {:?} ago",
        answered.elapsed()
    );
}

/// What actually closes a silent keep-alive connection with the defaults: hyper runs
/// its header read timeout from the moment it waits for the next request head, so
/// silence between keep-alive requests is cut at `min(header_timeout, idle_timeout)`.
/// With the defaults (10 s and 30 s) that is 10 s, not the 30 s of `idle_timeout`.
/// Here: header_timeout = 1, idle_timeout = 30 → closed after ~1 s.
#[test]
fn tracking_keep_alive_silence_is_cut_by_header_timeout_when_it_is_shorter() {
    let d = daemon(None, "idle_timeout = 30\nheader_timeout = 1", "");
    let mut s = TcpStream::connect(("127.0.0.1", d.http)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    let answered = Instant::now();
    let closed = closed_after(&mut s, answered, Duration::from_secs(5))
        .expect("still open 5 s after the answer: the header timeout does not apply");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "closed {closed:?} after the answer (header_timeout = 1 s, idle_timeout = 30 s)"
    );
}

// ---------------------------------------------------------------------------------------
// Claim 2: 431 and 413 on the tracking listener.

/// A request head of exactly `len` bytes (start line, headers and the blank line).
fn head_of(len: usize) -> Vec<u8> {
    let start = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "a".repeat(pad)).into_bytes()
}

/// The defaults (`max_header_bytes` = `max_body_bytes` = 16384): a head of 16384 bytes is
/// served and one of 16385 gets 431; a one-click POST body of 16384 bytes unsubscribes
/// and one of 16385 gets 413 and records nothing.
#[test]
fn tracking_head_over_16384_bytes_gets_431_and_body_over_16384_gets_413() {
    let d = daemon(None, "", "");
    let defaults = msys_milter::config::Http::default();
    assert_eq!(
        (defaults.max_header_bytes.0, defaults.max_body_bytes.0),
        (16_384, 16_384)
    );

    let at_cap = exchange(d.http, &head_of(16_384));
    assert_eq!(
        status_of(&at_cap),
        200,
        "{}",
        &at_cap[..at_cap.len().min(200)]
    );
    let over = exchange(d.http, &head_of(16_385));
    assert!(
        over.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{over:?}"
    );

    let keys = keys();
    let path = links(&keys).unsubscribe();
    let path = path.strip_prefix(BASE).unwrap();
    let post = |len: usize| {
        let body = "List-Unsubscribe=One-Click&pad=";
        let body = format!("{body}{}", "x".repeat(len - body.len()));
        assert_eq!(body.len(), len);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
        );
        exchange(d.http, request.as_bytes())
    };
    let over = post(16_385);
    assert_eq!(status_of(&over), 413, "{over}");
    assert!(
        !suppression_list(&d.milter).contains("who@example.net"),
        "a refused body unsubscribes nobody"
    );
    let at_cap = post(16_384);
    assert_eq!(status_of(&at_cap), 200, "{at_cap}");
    assert!(
        suppression_list(&d.milter).contains("who@example.net"),
        "{}",
        suppression_list(&d.milter)
    );
}

// ---------------------------------------------------------------------------------------
// Claim 3: `X-Forwarded-For` / `X-Real-IP` only from a loopback peer.

/// The visitor `Requester` (public, the extractor every tracking handler uses) makes of
/// a request from `peer` with `headers`.
fn requester(peer: Option<SocketAddr>, headers: &[(&str, &str)]) -> Option<String> {
    let mut request = axum::http::Request::builder().uri("/o/x");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(peer) = peer {
        request = request.extension(ConnectInfo(peer));
    }
    let (mut parts, ()) = request.body(()).unwrap().into_parts();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let Ok(Requester(visitor)) = runtime.block_on(Requester::from_request_parts(&mut parts, &()));
    visitor.ip_address
}

/// Every test peer is loopback, so the rule is checked on the extractor itself with
/// other peers: a non-loopback peer is recorded whatever the headers say; a loopback
/// peer (a proxy on this host) passes on the first `X-Forwarded-For` entry, else
/// `X-Real-IP`, when it is an IP address. Then the same over a real connection.
#[test]
fn forwarded_addresses_are_honoured_only_from_a_loopback_peer() {
    let peer = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 40_000));
    let xff = ("X-Forwarded-For", "203.0.113.9, 10.0.0.1");
    let real = ("X-Real-IP", "203.0.113.10");

    // From elsewhere: the peer, never the headers.
    for ip in ["198.51.100.7", "10.1.2.3", "2001:db8::5"] {
        assert_eq!(requester(peer(ip), &[xff]).as_deref(), Some(ip), "{ip}");
        assert_eq!(requester(peer(ip), &[real]).as_deref(), Some(ip), "{ip}");
        assert_eq!(requester(peer(ip), &[xff, real]).as_deref(), Some(ip));
        assert_eq!(requester(peer(ip), &[]).as_deref(), Some(ip));
    }
    // From loopback: the forwarded address.
    for ip in ["127.0.0.1", "127.8.9.10", "::1"] {
        assert_eq!(
            requester(peer(ip), &[xff, real]).as_deref(),
            Some("203.0.113.9"),
            "{ip}"
        );
        assert_eq!(
            requester(peer(ip), &[real]).as_deref(),
            Some("203.0.113.10")
        );
        assert_eq!(requester(peer(ip), &[]).as_deref(), Some(ip));
        // Not an address: the peer.
        assert_eq!(
            requester(peer(ip), &[("X-Forwarded-For", "evil, 1.2.3.4")]).as_deref(),
            Some(ip)
        );
    }
    // A local proxy reaching a dual-stack `[::]` listener is `::ffff:127.0.0.1`: loopback
    // too. With no peer at all (never the case behind `serve`) nothing is believed.
    assert_eq!(
        requester(peer("::ffff:127.0.0.1"), &[xff]).as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(requester(None, &[xff]).as_deref(), None);

    // Over a real (loopback) connection the server hands the peer to the extractor: the
    // forwarded address is what the daemon records, else the peer's.
    let d = daemon(None, "", "");
    let keys = keys();
    let open = links(&keys).open();
    let path = open.strip_prefix(BASE).unwrap();
    for forwarded in ["X-Forwarded-For: 192.0.2.44\r\n", ""] {
        let answer = exchange(
            d.http,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{forwarded}Connection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    let api = Api::new(&format!("http://127.0.0.1:{}", d.api), None);
    let found = api.call("GET", "/api/v1/events/message?events=open", Some(KEY), None);
    assert_eq!(found.status, 200, "{found:?}");
    let mut ips: Vec<&str> = found.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ip_address"].as_str().unwrap_or("none"))
        .collect();
    ips.sort_unstable();
    assert_eq!(ips, ["127.0.0.1", "192.0.2.44"], "{found:?}");
}

// ---------------------------------------------------------------------------------------
// The REST API of the real daemon.

/// Wait until the plain-HTTP API answers, over connections that are closed again.
fn wait_for_api(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /api/v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            if out.starts_with(b"HTTP/1.1 ") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the API did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a `/metrics` sample line on the tracking listener.
fn metric(http_port: u16, sample: &str) -> Option<f64> {
    let text = exchange(
        http_port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// Claim 4: `[api] max_connections`.

/// With `[api] max_connections = 3`, three connections are served (and keep being
/// served), the fourth gets the fixed `503 Service Unavailable` at once and is closed,
/// and the refusal is counted once. A slot freed is taken by the next connection.
#[test]
fn api_connections_over_max_connections_get_503_at_once() {
    const CAP: usize = 3;
    let d = daemon(None, "", &format!("max_connections = {CAP}"));
    let (port, http) = (d.api, d.http);
    wait_for_api(port);
    // The connections of the wait are closed: no slot is held.
    let open = "msys_milter_connections_open{listener=\"api\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(http, open) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "{open}: {:?}",
            metric(http, open)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = "msys_milter_connections_refused_total{listener=\"api\"}";
    let refused_before = metric(http, refused).unwrap_or(0.0);

    let request =
        format!("GET /api/v1/suppression-list HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\n\r\n");
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let (status, head, _) = read_response(&mut s);
            assert_eq!(status, 200, "{head}");
            s
        })
        .collect();

    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let since = Instant::now();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    );
    assert!(
        since.elapsed() < Duration::from_secs(1),
        "at once: {:?}",
        since.elapsed()
    );
    assert_eq!(metric(http, refused), Some(refused_before + 1.0));

    // The held ones still work.
    for s in &mut held {
        s.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_response(s).0, 200);
    }
    // One closed: its slot goes to the next connection.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = exchange(
            port,
            format!("GET /api/v1/suppression-list HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        if status_of(&answer) == 200 {
            break;
        }
        assert_eq!(status_of(&answer), 503);
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(d);
}

// Claim 5: MAX_LIST, per_page and the time-series buckets.

/// At each cap the API answers 200; one past it, 400 with SparkPost's error body
/// (`invalid params`, code 1200, a description naming the cap).
#[test]
fn api_lists_pages_and_buckets_over_their_caps_get_400() {
    let d = daemon(None, "", "");
    let port = d.api;
    let api = Api::new(&format!("http://127.0.0.1:{port}"), None);
    api.wait();
    let k = Some(KEY);
    let invalid = |description: &str| json!({"errors": [{"message": "invalid params", "description": description, "code": "1200"}]});
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("r{i}@x.example"))
            .collect::<Vec<_>>()
            .join(",")
    };

    // Comma lists: 1000 values, then 1001 (one parameter, so not MAX_PARAMS).
    let a = api.call(
        "GET",
        &format!("/api/v1/events/message?recipients={}", list(1000)),
        k,
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let a = api.call(
        "GET",
        &format!("/api/v1/events/message?recipients={}", list(1001)),
        k,
        None,
    );
    assert_eq!(
        (a.status, a.body),
        (400, invalid("recipients: at most 1000 values"))
    );
    // A list split over repeated parameters counts whole too.
    let a = api.call(
        "GET",
        &format!("/api/v1/metrics/deliverability?from=2020-01-01T00:00&metrics=count_injected&campaigns={}&campaigns=last", list(1000)),
        k,
        None,
    );
    assert_eq!(
        (a.status, a.body),
        (400, invalid("campaigns: at most 1000 values"))
    );

    // per_page: 10,000, then 10,001, on both searches.
    for path in ["/api/v1/events/message", "/api/v1/suppression-list"] {
        let a = api.call("GET", &format!("{path}?per_page=10000"), k, None);
        assert_eq!(a.status, 200, "{path}: {a:?}");
        let a = api.call("GET", &format!("{path}?per_page=10001"), k, None);
        assert_eq!(
            (a.status, a.body),
            (400, invalid("per_page must be a number from 1 to 10000")),
            "{path}"
        );
    }

    // Time-series buckets: 10,000 one-minute points, then 10,001.
    let day = msys_milter::ids::unix_secs() / 86_400 * 86_400 - 10 * 86_400;
    let minute = |t: u64| msys_milter::rest::common::format_time(t)[..16].to_owned();
    let series = |minutes: u64| {
        format!(
            "/api/v1/metrics/deliverability/time-series?metrics=count_injected&precision=1min&from={}&to={}",
            minute(day),
            minute(day + minutes * 60)
        )
    };
    let a = api.call("GET", &series(10_000), k, None);
    assert_eq!(a.status, 200, "{:?}", a.body.to_string().get(..300));
    assert_eq!(a.body["results"].as_array().map(Vec::len), Some(10_000));
    let a = api.call("GET", &series(10_001), k, None);
    assert_eq!(
        (a.status, a.body),
        (
            400,
            invalid(
                "precision: more than 10000 points; choose a coarser precision or a shorter range"
            )
        )
    );
}

// Claim 6: the TLS handshake is cut at `header_timeout`.

/// With `[http] header_timeout = 1` (the API listener takes its timeouts from `[http]`),
/// a client that connects to the HTTPS API and sends nothing, or stops half-way through
/// its ClientHello, is closed after ~1 s, and the cut is counted as a timeout.
#[test]
fn api_tls_handshake_is_cut_at_header_timeout() {
    let ca = TestCa::new();
    let d = daemon(Some(&ca), "header_timeout = 1", "");
    let (port, http) = (d.api, d.http);
    let api = Api::new(&format!("https://127.0.0.1:{port}"), Some(&ca));
    api.wait();
    assert_eq!(
        api.call("GET", "/api/v1/suppression-list", Some(KEY), None)
            .status,
        200
    );
    // Its pooled connection closed now, so that it cannot time out and be counted.
    drop(api);
    let timed_out = "msys_milter_connections_timed_out_total{listener=\"api\"}";
    let before = metric(http, timed_out).unwrap_or(0.0);

    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let since = Instant::now();
    // A TLS record header announcing a 512-byte handshake message, and no more.
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for (what, s) in [("silent", &mut silent), ("half a ClientHello", &mut half)] {
        let closed = closed_after(s, since, Duration::from_secs(6))
            .unwrap_or_else(|| panic!("{what}: still open 6 s later"));
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_millis(3000),
            "{what}: closed after {closed:?} (header_timeout = 1 s)"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while metric(http, timed_out).unwrap_or(0.0) < before + 2.0 {
        assert!(
            Instant::now() < deadline,
            "{timed_out}: {:?}, was {before}",
            metric(http, timed_out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(http, timed_out), Some(before + 2.0));
}
