//! The REST API: the subset of SparkPost's API v1 over what msys-milter keeps
//! (suppression list, message events, deliverability metrics, webhooks), so SparkPost's own
//! client libraries and tools work against it unchanged. It has a listener of its own
//! (`[api] listen`, HTTPS), never the public tracking one, and answers only keys of
//! `[[api_key]]`.

pub mod auth;
pub mod common;
pub mod events;
pub mod metrics;
pub mod suppression;
pub mod tls;
pub mod webhooks;

use crate::config::{Config, Grant};
use crate::store::Store;
use crate::store::query::Dimension;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{ApiError, ApiResult, Params};
use metrics::Report;
use std::sync::{Arc, RwLock};

/// What the endpoints share; the keys are replaced on SIGHUP.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    keys: RwLock<Arc<auth::Keys>>,
    /// Wrong or missing keys per client (kept across reloads).
    failures: auth::Failures,
    max_body: usize,
    /// The configuration file's webhooks (listed read-only).
    config_webhooks: RwLock<Vec<crate::config::Webhook>>,
    /// Where webhooks made here may post.
    reach: RwLock<Arc<crate::netguard::Reach>>,
    /// Webhooks may be made here (a host alone with a store).
    webhooks_writable: bool,
    /// Woken when a webhook is made, changed or removed: the sinks restart.
    pub webhooks_changed: Arc<tokio::sync::Notify>,
}

impl ApiState {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> ApiState {
        ApiState {
            store,
            keys: RwLock::new(Arc::new(keys_of(config))),
            failures: auth::Failures::new(config.api.auth_failures_per_minute.0),
            max_body: config.api.max_body_bytes.0,
            config_webhooks: RwLock::new(config.webhooks.clone()),
            reach: RwLock::new(Arc::new(crate::netguard::Reach::of(config))),
            webhooks_writable: config.store.enabled && config.store.postgres.is_none(),
            webhooks_changed: Arc::default(),
        }
    }

    fn config_webhooks(&self) -> Vec<crate::config::Webhook> {
        self.config_webhooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Take up the keys of a reloaded configuration.
    pub fn reload(&self, config: &Config) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys_of(config));
        *self
            .config_webhooks
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.webhooks.clone();
        *self.reach.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(crate::netguard::Reach::of(config));
    }

    pub(crate) fn reach(&self) -> Arc<crate::netguard::Reach> {
        Arc::clone(&self.reach.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn authorize(&self, req: &Request, grant: Grant) -> Result<auth::Caller, ApiError> {
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        keys.authorize(&req.headers, grant)
    }
}

fn keys_of(config: &Config) -> auth::Keys {
    auth::Keys::new(config.api_keys.clone(), config.api.rate_limit.0)
}

/// A request as the endpoints read it.
pub struct Request {
    pub headers: HeaderMap,
    pub params: Params,
    pub body: bytes::Bytes,
}

pub fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

/// A path segment percent-decoded; a literal `+` stays a `+` (clients send addresses
/// unescaped).
fn segment(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

async fn handle(State(state): State<Arc<ApiState>>, request: axum::extract::Request) -> Response {
    let response = match dispatch(&state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    crate::metrics::global().api_answered(response.status().as_u16());
    response
}

fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

async fn dispatch(state: &ApiState, request: axum::extract::Request) -> ApiResult {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Err(ApiError::not_found("Resource could not be found"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let params = Params::parse(parts.uri.query())?;
    {
        // A client without a peer address (never over TCP) is one client.
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0u8; 4]), |c| c.0.ip());
        state.failures.admit(client)?;
        let keys = Arc::clone(&state.keys.read().unwrap_or_else(|p| p.into_inner()));
        keys.known(&parts.headers)
            .inspect_err(|_| state.failures.failed(client))?;
    }
    let body = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").with(
                "1301",
                format!("at most {} bytes ([api] max_body_bytes)", state.max_body),
            )
        })?;
    let req = Request {
        headers: parts.headers,
        params,
        body,
    };
    let m = &parts.method;
    match segments.as_slice() {
        ["suppression-list"] => match *m {
            Method::GET => suppression::search(state, &req).await,
            Method::PUT => suppression::put_many(state, &req).await,
            _ => Err(method_not_allowed()),
        },
        ["suppression-list", "summary"] if *m == Method::GET => {
            suppression::summary(state, &req).await
        }
        ["suppression-list", raw] => {
            let Some(recipient) = segment(raw) else {
                return Err(ApiError::not_found("Recipient could not be found"));
            };
            match *m {
                Method::GET => suppression::get(state, &req, &recipient).await,
                Method::PUT => suppression::put(state, &req, &recipient).await,
                Method::DELETE => suppression::delete(state, &req, &recipient).await,
                _ => Err(method_not_allowed()),
            }
        }
        ["events", "message"] => match *m {
            Method::GET => events::search(state, &req).await,
            _ => Err(method_not_allowed()),
        },
        ["message-events"] => match *m {
            Method::GET => events::legacy(state, &req).await,
            _ => Err(method_not_allowed()),
        },
        ["metrics", "deliverability", rest @ ..] => {
            if *m != Method::GET {
                return Err(method_not_allowed());
            }
            let report = match rest {
                [] => Report::Summary,
                ["campaign"] => Report::By(Dimension::Campaign),
                ["sending-domain"] => Report::By(Dimension::SendingDomain),
                ["subaccount"] => Report::By(Dimension::Subaccount),
                ["ip-pool"] => Report::By(Dimension::IpPool),
                ["bounce-classification"] => Report::By(Dimension::BounceClass),
                ["time-series"] => Report::TimeSeries,
                _ => return Err(ApiError::not_found("Resource could not be found")),
            };
            metrics::deliverability(state, &req, report).await
        }
        ["metrics", "campaigns"] if *m == Method::GET => {
            metrics::list(state, &req, Dimension::Campaign).await
        }
        ["metrics", "domains"] if *m == Method::GET => {
            metrics::list(state, &req, Dimension::SendingDomain).await
        }
        ["metrics", "campaigns" | "domains"] => Err(method_not_allowed()),
        ["webhooks"] => match *m {
            Method::GET => webhooks::list(state, &req).await,
            Method::POST => webhooks::create(state, &req).await,
            _ => Err(method_not_allowed()),
        },
        ["webhooks", id] => match *m {
            Method::GET => webhooks::get(state, &req, id).await,
            Method::PUT => webhooks::update(state, &req, id).await,
            Method::DELETE => webhooks::delete(state, &req, id).await,
            _ => Err(method_not_allowed()),
        },
        ["webhooks", id, "validate"] if *m == Method::POST => {
            webhooks::validate(state, &req, id).await
        }
        ["webhooks", id, "batch-status"] if *m == Method::GET => {
            webhooks::batch_status(state, &req, id).await
        }
        ["webhooks", _, "validate" | "batch-status"] => Err(method_not_allowed()),
        _ => Err(ApiError::not_found("Resource could not be found")),
    }
}
