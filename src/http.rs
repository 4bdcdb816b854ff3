//! The HTTP endpoint behind the links in messages (axum): the open pixel, click
//! redirects, RFC 8058 one-click unsubscribe, and a health check. Only signed tokens are
//! honoured: anything else answers 404 and never redirects (no open redirect).

use crate::events::{self, EventType, Stamp, Transmission, Visitor};
use crate::ids::{IdGenerator, unix_secs as now};
use crate::store::{Commit, Store, SuppressionEntry, SuppressionType};
use crate::suppression::{SOURCE_LIST_UNSUBSCRIBE, SOURCE_UNSUBSCRIBE_LINK};
use crate::tracking::is_web_url;
use crate::tracking::machine::is_machine;
use crate::tracking::token::{self, Keys, Kind, TokenData};
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A transparent 1x1 GIF: the smallest well-formed one (43 bytes).
pub const PIXEL: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// What happened at the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackingEvent {
    /// `Open`, `InitialOpen`, `Click`, `ListUnsubscribe` (one-click POST) or
    /// `LinkUnsubscribe` (a followed unsubscribe link: recorded as a click and an
    /// unsubscribe).
    pub kind: EventType,
    pub transmission_id: u64,
    pub recipient: String,
    pub link_index: u16,
    pub url: String,
    /// The link's `data-msys-linkname` (empty: none).
    pub link_name: String,
    pub visitor: Visitor,
}

pub type RecordFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where events go. `record` completes once the event is durable (the one-click
/// unsubscribe answers 200 only then).
pub trait EventSink: Send + Sync {
    fn record(&self, event: TrackingEvent) -> RecordFuture<'_>;
}

/// Commits events to the store, joined with the transmission's facts; unsubscribes add
/// a non-transactional suppression entry in the same commit.
pub struct StoreSink {
    pub store: Arc<dyn Store>,
    pub ids: Arc<IdGenerator>,
}

impl StoreSink {
    async fn commit(&self, e: TrackingEvent) -> Result<(), String> {
        let tid = e.transmission_id.to_string();
        let t = match self.store.transmission(&tid).await {
            Ok(Some(t)) => t,
            Ok(None) => Transmission {
                transmission_id: tid.clone(),
                ..Transmission::default()
            },
            Err(e) => return Err(e.to_string()),
        };
        let now = now();
        let stamp = || -> Result<Stamp, String> {
            Ok(Stamp {
                event_id: self.ids.next().map_err(|e| e.to_string())?,
                timestamp: now,
            })
        };
        let mut commit = Commit::default();
        let r = t.recipient(&e.recipient);
        let link = events::Link {
            url: Some(e.url.as_str()).filter(|u| !u.is_empty()),
            name: Some(e.link_name.as_str()).filter(|n| !n.is_empty()),
        };
        match e.kind {
            EventType::LinkUnsubscribe => {
                commit.events.push(events::track(
                    EventType::Click,
                    stamp()?,
                    &t,
                    &r,
                    &e.visitor,
                    link,
                ));
                commit.events.push(events::unsubscribe(
                    e.kind,
                    stamp()?,
                    &t,
                    &r,
                    Some(&e.visitor),
                    link,
                ));
            }
            EventType::ListUnsubscribe => {
                // One-click (a POST: who made it) or mailto: (a mail: no client).
                let visitor = Some(&e.visitor).filter(|v| v.ip_address.is_some());
                commit.events.push(events::unsubscribe(
                    e.kind,
                    stamp()?,
                    &t,
                    &r,
                    visitor,
                    events::Link::default(),
                ));
            }
            kind => commit
                .events
                .push(events::track(kind, stamp()?, &t, &r, &e.visitor, link)),
        }
        let source = match e.kind {
            EventType::ListUnsubscribe => Some(SOURCE_LIST_UNSUBSCRIBE),
            EventType::LinkUnsubscribe => Some(SOURCE_UNSUBSCRIBE_LINK),
            _ => None,
        };
        if let Some(source) = source {
            commit.suppress.push(SuppressionEntry::new(
                &e.recipient,
                t.subaccount_id,
                SuppressionType::NonTransactional,
                source,
                &format!("transmission {tid}"),
                now,
            ));
        }
        let kinds: Vec<&'static str> = commit.events.iter().map(|e| e.kind.as_str()).collect();
        self.store.commit(commit).await.map_err(|e| e.to_string())?;
        crate::metrics::global().events(kinds);
        Ok(())
    }
}

impl EventSink for StoreSink {
    fn record(&self, event: TrackingEvent) -> RecordFuture<'_> {
        tracing::info!(
            event = event.kind.as_str(),
            transmission_id = event.transmission_id,
            rcpt = %event.recipient,
            link_index = event.link_index,
            machine_open = event.visitor.machine,
            "tracking event"
        );
        Box::pin(self.commit(event))
    }
}

/// What the handlers share.
pub struct HttpState {
    /// The link keys; `None` when no tracking is configured (only /metrics and
    /// /healthz then).
    pub keys: Option<Keys>,
    pub sink: Arc<dyn EventSink>,
    /// For the backlog figures of /metrics.
    pub store: Option<Arc<dyn Store>>,
    /// Who may read /metrics (`[http] metrics_from`).
    pub metrics_from: crate::netguard::Networks,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/o/{token}", get(open))
        .route("/c/{token}", get(click))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// What the endpoint lets one client hold ([http] in the configuration).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections held at once; one more is answered 503 at once and closed.
    pub max_connections: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Silence allowed on a connection (between keep-alive requests, or mid-request).
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

impl Limits {
    pub fn from_config(http: &crate::config::Http) -> Limits {
        Limits {
            max_connections: http.max_connections.0,
            header_timeout: Duration::from_secs(http.header_timeout.0 as u64),
            idle_timeout: Duration::from_secs(http.idle_timeout.0 as u64),
            max_header_bytes: http.max_header_bytes.0,
            max_body_bytes: http.max_body_bytes.0,
        }
    }
}

/// The answer to a connection over the cap, written without waiting (it fits any
/// socket buffer) before the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// Serve on `listener` until `shutdown` completes, within `limits`: a connection over
/// the cap gets a 503 at once (never a place in the backlog), slow or silent clients
/// are cut, an accept that fails pauses and goes on. HTTP/1.1 (what recipients'
/// clients and any proxy in front speak).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), limits, None, "http", shutdown).await
}

/// [`serve`] for any router, over TLS when `tls` is given; `name` labels the listener
/// in logs and metrics.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    // Its certificate resolver takes up a certificate reloaded on SIGHUP.
    tls: Option<tokio_rustls::TlsAcceptor>,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioTimer;
    let router = router.layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes));
    let slots = crate::connlimit::Slots::new(name, limits.max_connections);
    let throttle = crate::connlimit::Throttle::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                let pause = crate::connlimit::accept_failed(name, &e, &throttle);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let open = crate::connlimit::Open::new(name);
        let Some(slot) = slots.try_take() else {
            let _ = stream.try_write(BUSY);
            drop((stream, open));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _held = (slot, open);
            let Some(acceptor) = tls else {
                serve_connection(stream, peer, router, builder, watcher, limits, name).await;
                return;
            };
            // The handshake gets the time the request's headers would.
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    serve_connection(tls, peer, router, builder, watcher, limits, name).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, listener = name, "TLS handshake failed: {e}"),
                Err(_) => crate::metrics::global().connection_timed_out(name),
            }
        });
    }
    // Requests in progress finish; idle connections are closed.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

/// One connection's requests, each answered by `router`, until it closes or idles out.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    limits: Limits,
    name: &'static str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move {
            tower_service::Service::<hyper::Request<hyper::body::Incoming>>::call(
                &mut router,
                request,
            )
            .await
        }
    });
    if let Err(e) = watcher.watch(builder.serve_connection(io, service)).await {
        // Cut for taking too long: the header read timeout, or our idle one.
        let idle = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        if e.is_timeout() || idle {
            crate::metrics::global().connection_timed_out(name);
        }
        tracing::debug!(%peer, listener = name, "HTTP connection ended: {e}");
    }
}

/// A connection that fails with `TimedOut` once nothing has been read or written for
/// its idle time: a silent keep-alive connection, or a client that stops mid-request.
struct IdleTimeout<S> {
    io: S,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(io: S, idle: Duration) -> Self {
        IdleTimeout {
            io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn active(&mut self) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "idle too long")
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.active();
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Pending if self.expired(cx) => {
                std::task::Poll::Ready(Err(timed_out()))
            }
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            std::task::Poll::Ready(Ok(n)) => {
                self.active();
                std::task::Poll::Ready(Ok(n))
            }
            // A client that does not read our answer is as silent as one that sends
            // nothing.
            std::task::Poll::Pending if self.expired(cx) => {
                std::task::Poll::Ready(Err(timed_out()))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Who made a request: user agent, address (the first `X-Forwarded-For` entry when a
/// proxy on this host passed it on, the peer being loopback, also written as
/// `::ffff:127.0.0.1`; else the peer), and whether it is a machine.
pub struct Requester(pub Visitor);

impl<S: Send + Sync> FromRequestParts<S> for Requester {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let user_agent = header("user-agent");
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = header("x-forwarded-for")
            .and_then(|v| v.split(',').next().map(|f| f.trim().to_owned()))
            .or_else(|| header("x-real-ip"))
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok());
        let ip_address = match peer {
            Some(ip) if ip.to_canonical().is_loopback() => {
                forwarded.or_else(|| Some(ip.to_string()))
            }
            Some(ip) => Some(ip.to_string()),
            // No peer, no proxy to believe.
            None => None,
        };
        Ok(Requester(Visitor {
            machine: is_machine(user_agent.as_deref()),
            user_agent,
            ip_address,
        }))
    }
}

/// Whether a request for /metrics comes from `from`: the peer, and every address a proxy
/// on this host says it forwarded for (a client can add entries, never remove the one
/// its proxy appends, so all must be in `from`).
fn metrics_allowed(from: &crate::netguard::Networks, request: &axum::extract::Request) -> bool {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return false;
    };
    if !from.contains(peer.ip()) {
        return false;
    }
    let headers = request.headers();
    let forwarded_for = |value: &str| -> Vec<Option<std::net::IpAddr>> {
        value
            .split(',')
            .map(|entry| entry.trim().trim_matches('"'))
            .map(|entry| {
                let entry = entry
                    .strip_prefix('[')
                    .and_then(|e| e.split_once(']').map(|(ip, _)| ip))
                    .unwrap_or(entry);
                entry.parse().ok().or_else(|| {
                    // `1.2.3.4:5678`
                    entry.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
                })
            })
            .collect()
    };
    let mut claimed = Vec::new();
    for value in headers
        .get_all("x-forwarded-for")
        .iter()
        .chain(headers.get_all("x-real-ip"))
    {
        match value.to_str() {
            Ok(v) => claimed.extend(forwarded_for(v)),
            Err(_) => return false,
        }
    }
    for value in headers.get_all(header::FORWARDED) {
        let Ok(v) = value.to_str() else { return false };
        for element in v.split([',', ';']) {
            if let Some((name, addr)) = element.trim().split_once('=')
                && name.eq_ignore_ascii_case("for")
            {
                claimed.extend(forwarded_for(addr));
            }
        }
    }
    claimed
        .iter()
        .all(|ip| ip.is_some_and(|ip| from.contains(ip)))
}

async fn metrics(State(state): State<Arc<HttpState>>, request: axum::extract::Request) -> Response {
    if !metrics_allowed(&state.metrics_from, &request) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let m = crate::metrics::global();
    if let Some(store) = &state.store
        && let Ok(status) = store.sink_status().await
    {
        for s in status {
            m.set_backlog(&s.sink, s.pending);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// The token's content when it is ours, of `kind`, and not expired. A path that is not
/// even a string (bad percent-encoding) is just another unknown token: 404, like the rest.
fn check(
    state: &HttpState,
    token: Result<Path<String>, PathRejection>,
    kinds: &[Kind],
) -> Option<TokenData> {
    let Path(token) = token.ok()?;
    token::verify(state.keys.as_ref()?, &token, now())
        .ok()
        .filter(|d| kinds.contains(&d.kind))
}

/// Record an event; opens and clicks are answered whatever happens (a store problem
/// must not break the reader's click), so a failure is only logged there.
async fn record(
    state: &HttpState,
    kind: EventType,
    data: TokenData,
    visitor: Visitor,
) -> Result<(), String> {
    let event = TrackingEvent {
        kind,
        transmission_id: data.transmission_id,
        recipient: data.recipient,
        link_index: data.link_index,
        url: data.url,
        link_name: data.link_name,
        visitor,
    };
    let result = state.sink.record(event).await;
    if let Err(e) = &result {
        tracing::error!(
            event = kind.as_str(),
            transmission_id = data.transmission_id,
            "event not recorded: {e}"
        );
    }
    result
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

const NO_CACHE: [(header::HeaderName, &str); 3] = [
    (
        header::CACHE_CONTROL,
        "no-cache, no-store, must-revalidate, private, max-age=0",
    ),
    (header::PRAGMA, "no-cache"),
    (header::EXPIRES, "0"),
];

async fn open(
    State(state): State<Arc<HttpState>>,
    token: Result<Path<String>, PathRejection>,
    Requester(visitor): Requester,
) -> Response {
    let Some(data) = check(&state, token, &[Kind::Open, Kind::InitialOpen]) else {
        return not_found();
    };
    let kind = if data.kind == Kind::InitialOpen {
        EventType::InitialOpen
    } else {
        EventType::Open
    };
    let _ = record(&state, kind, data, visitor).await;
    let mut response = ([(header::CONTENT_TYPE, "image/gif")], PIXEL.as_slice()).into_response();
    for (name, value) in NO_CACHE {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn click(
    State(state): State<Arc<HttpState>>,
    token: Result<Path<String>, PathRejection>,
    Requester(visitor): Requester,
) -> Response {
    let Some(data) = check(&state, token, &[Kind::Click, Kind::UnsubscribeClick]) else {
        return not_found();
    };
    // Signed by us, but redirect only to web URLs (never `javascript:` or `data:`).
    if !is_web_url(&data.url) {
        return not_found();
    }
    let Ok(location) = HeaderValue::from_str(&location(&data.url)) else {
        return not_found();
    };
    let kind = if data.kind == Kind::UnsubscribeClick {
        EventType::LinkUnsubscribe
    } else {
        EventType::Click
    };
    let _ = record(&state, kind, data, visitor).await;
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
}

/// `url` fit for a `Location` header: what a browser would have sent for the link, with
/// spaces, controls and non-ASCII characters percent-encoded (as UTF-8) and the rest,
/// existing `%XX` escapes included, as it is.
fn location(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for b in url.trim().bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Does a POST body say `List-Unsubscribe=One-Click`? RFC 8058 lets the mailbox provider
/// send it as `application/x-www-form-urlencoded` or as `multipart/form-data`.
fn is_one_click(content_type: Option<&str>, body: &str) -> bool {
    let multipart = content_type.and_then(|ct| {
        let (mime, params) = ct.split_once(';')?;
        if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
            return None;
        }
        params.split(';').find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_owned())
        })
    });
    match multipart {
        Some(boundary) if !boundary.is_empty() => body
            .split(&format!("--{boundary}"))
            .filter_map(|part| {
                let part = part.strip_prefix("\r\n").unwrap_or(part);
                part.split_once("\r\n\r\n")
                    .or_else(|| part.split_once("\n\n"))
            })
            .any(|(head, value)| {
                let head = head.to_ascii_lowercase();
                (head.contains("name=\"list-unsubscribe\"")
                    || head.contains("name=list-unsubscribe"))
                    && value.trim() == "One-Click"
            }),
        _ => body.split('&').any(|field| {
            field.trim().split_once('=').is_some_and(|(name, value)| {
                name == "List-Unsubscribe" && value.replace("%2D", "-") == "One-Click"
            })
        }),
    }
}

/// A confirmation page: link scanners follow every GET, so a GET never unsubscribes.
async fn unsubscribe_page(
    State(state): State<Arc<HttpState>>,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    if check(&state, token, &[Kind::Unsubscribe]).is_none() {
        return not_found();
    }
    let page = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Unsubscribe</title>\
        <meta name=\"robots\" content=\"noindex\"></head><body>\n\
        <h1>Unsubscribe</h1>\n<p>Stop receiving these messages at this address?</p>\n\
        <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
        <button type=\"submit\">Unsubscribe</button></form>\n</body></html>\n";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// RFC 8058 one-click: the body is `List-Unsubscribe=One-Click` (the page's form sends
/// the same).
async fn unsubscribe(
    State(state): State<Arc<HttpState>>,
    token: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    Requester(visitor): Requester,
    body: String,
) -> Response {
    let Some(data) = check(&state, token, &[Kind::Unsubscribe]) else {
        return not_found();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !is_one_click(content_type, &body) {
        return (
            StatusCode::BAD_REQUEST,
            "expected List-Unsubscribe=One-Click\n",
        )
            .into_response();
    }
    // 200 only once the suppression entry is committed; else the provider retries.
    if record(&state, EventType::ListUnsubscribe, data, visitor)
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "60")],
            "temporarily unavailable, try again later\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
         <body><p>You are unsubscribed.</p></body></html>\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_header_safe() {
        assert_eq!(
            location("https://a.example/caf\u{e9} x?q=%20&r=\"1\""),
            "https://a.example/caf%C3%A9%20x?q=%20&r=\"1\""
        );
        assert!(HeaderValue::from_str(&location("https://a.example/\u{7f}\0\n")).is_ok());
    }

    #[test]
    fn one_click_bodies() {
        let form = Some("application/x-www-form-urlencoded");
        assert!(is_one_click(form, "List-Unsubscribe=One-Click"));
        assert!(is_one_click(None, "a=b&List-Unsubscribe=One-Click\r\n"));
        assert!(!is_one_click(form, "List-Unsubscribe=Other"));
        assert!(!is_one_click(form, ""));
        let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        assert!(is_one_click(
            Some("multipart/form-data; boundary=XyZ"),
            multipart
        ));
        assert!(is_one_click(
            Some("Multipart/Form-Data; boundary=\"XyZ\""),
            multipart
        ));
        assert!(!is_one_click(
            Some("multipart/form-data; boundary=XyZ"),
            &multipart.replace("One-Click", "No")
        ));
        assert!(!is_one_click(
            Some("multipart/form-data; boundary="),
            multipart
        ));
    }
}
