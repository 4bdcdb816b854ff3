//! `/api/v1/webhooks`: webhooks made through the API live in the store beside those of
//! the configuration file (listed read-only, `"source": "config"`) and are sent exactly
//! like them (same batches, retries and headers). A new or changed target first gets
//! a test POST, as SparkPost does; the sinks restart with the new list at once.

use super::common::{ApiError, ApiResult, json_body, ok};
use super::{ApiState, Request};
use crate::config::Grant;
use crate::events::EventType;
use crate::events::sink::api_sink_name;
use crate::events::webhook::Target;
use crate::store::query::StoredWebhook;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// What SparkPost POSTs to a new target to see that it answers.
const PING: &str = r#"[{"msys":{}}]"#;

fn links(id: &str) -> Value {
    json!([{"href": format!("/api/v1/webhooks/{id}"), "rel": "urn.msys.webhooks.webhook", "method": ["GET", "PUT"]}])
}

fn config_id(n: usize) -> String {
    format!("config-{}", n + 1)
}

/// Webhooks belong to the main account: a subaccount's key may not see or change them.
fn main_account(state: &ApiState, req: &Request, grant: Grant) -> Result<(), ApiError> {
    let caller = state.authorize(req, grant)?;
    match caller.scope {
        super::auth::Scope::Everyone | super::auth::Scope::Only(None) => Ok(()),
        super::auth::Scope::Only(Some(_)) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "Forbidden.")
                .with("1100", "webhooks belong to the main account"))
        }
    }
}

/// Every webhook: the configuration file's, then the API's; (id, sink, object).
async fn all(state: &ApiState) -> Result<Vec<(String, String, Map<String, Value>)>, ApiError> {
    let mut out = Vec::new();
    for (n, hook) in state.config_webhooks().iter().enumerate() {
        let mut m = Map::new();
        m.insert("id".into(), json!(config_id(n)));
        m.insert("name".into(), json!(hook.sink_name()));
        m.insert(
            "target".into(),
            json!(hook.sink_name().trim_start_matches("webhook:")),
        );
        m.insert(
            "events".into(),
            json!(hook.events.clone().unwrap_or_else(|| {
                EventType::ALL
                    .iter()
                    .map(|t| t.as_str().to_owned())
                    .collect()
            })),
        );
        m.insert("active".into(), json!(true));
        m.insert(
            "auth_type".into(),
            json!(if hook.basic.is_some() {
                "basic"
            } else {
                "none"
            }),
        );
        m.insert("source".into(), json!("config"));
        out.push((config_id(n), hook.sink_name(), m));
    }
    let stored = state
        .store
        .api_webhooks()
        .await
        .map_err(|e| ApiError::unavailable("webhooks", e))?;
    for hook in stored {
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&hook.spec) else {
            continue;
        };
        m.insert("id".into(), json!(hook.id));
        // Credentials are write-only: the user name is shown, never the password.
        if let Some(Value::Object(c)) = m.get_mut("auth_credentials") {
            c.remove("password");
        }
        m.insert("source".into(), json!("api"));
        out.push((hook.id.clone(), api_sink_name(&hook.id), m));
    }
    Ok(out)
}

/// The last successful and failed deliveries to `sink`.
async fn add_status(state: &ApiState, sink: &str, m: &mut Map<String, Value>) {
    let log = state.store.batch_log(sink, 100).await.unwrap_or_default();
    let success = |e: &crate::store::query::BatchLogEntry| {
        e.response_code
            .as_deref()
            .is_some_and(|c| c.starts_with('2'))
    };
    let time = |t: u64| json!(super::common::format_time(t));
    m.insert(
        "last_successful".into(),
        log.iter()
            .find(|e| success(e))
            .map_or(Value::Null, |e| time(e.ts)),
    );
    m.insert(
        "last_failure".into(),
        log.iter()
            .find(|e| !success(e))
            .map_or(Value::Null, |e| time(e.ts)),
    );
}

async fn find(
    state: &ApiState,
    id: &str,
) -> Result<(String, String, Map<String, Value>), ApiError> {
    all(state)
        .await?
        .into_iter()
        .find(|(i, _, _)| i == id)
        .ok_or_else(|| ApiError::not_found("Resource could not be found"))
}

/// A webhook made through the API, as stored.
async fn stored(state: &ApiState, id: &str) -> Result<StoredWebhook, ApiError> {
    state
        .store
        .api_webhooks()
        .await
        .map_err(|e| ApiError::unavailable("webhooks", e))?
        .into_iter()
        .find(|h| h.id == id)
        .ok_or_else(|| ApiError::not_found("Resource could not be found"))
}

/// `GET /webhooks`.
pub async fn list(state: &ApiState, req: &Request) -> ApiResult {
    main_account(state, req, Grant::WebhooksView)?;
    let mut results = Vec::new();
    for (_, sink, mut m) in all(state).await? {
        add_status(state, &sink, &mut m).await;
        results.push(Value::Object(m));
    }
    ok(json!({ "results": results }))
}

/// `GET /webhooks/{id}`.
pub async fn get(state: &ApiState, req: &Request, id: &str) -> ApiResult {
    main_account(state, req, Grant::WebhooksView)?;
    let (_, sink, mut m) = find(state, id).await?;
    add_status(state, &sink, &mut m).await;
    ok(json!({ "results": m }))
}

/// A webhook object checked: `target` an http(s) URL, known `events`, `auth_type` none
/// or basic (with `auth_credentials`), string `custom_headers`.
fn checked(
    mut m: Map<String, Value>,
    reach: &crate::netguard::Reach,
) -> Result<Map<String, Value>, ApiError> {
    for key in ["id", "source", "last_successful", "last_failure", "links"] {
        m.remove(key);
    }
    let target = m
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing("target"))?;
    let url = reqwest::Url::parse(target)
        .ok()
        .filter(|_| target.starts_with("https://") || target.starts_with("http://"))
        .ok_or_else(|| ApiError::invalid("target must be an http or https URL"))?;
    reach
        .check_literal(&url)
        .map_err(|why| ApiError::invalid(format!("target: {why}")))?;
    if m.get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::missing("name"));
    }
    match m.get("events") {
        Some(Value::Array(events)) if !events.is_empty() => {
            if let Some(bad) = events
                .iter()
                .find(|e| e.as_str().and_then(EventType::parse).is_none())
            {
                return Err(ApiError::invalid(format!(
                    "events: {bad} is not an event type this server sends"
                )));
            }
        }
        _ => return Err(ApiError::missing("events")),
    }
    match m.get("auth_type").and_then(Value::as_str).unwrap_or("none") {
        "none" => {}
        "basic" => {
            if m.get("auth_credentials")
                .and_then(|c| c.get("username"))
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(ApiError::missing("auth_credentials.username"));
            }
        }
        other => {
            return Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unsupported auth_type").with(
                    "1400",
                    format!("auth_type `{other}` is not supported here: use none or basic"),
                ),
            );
        }
    }
    if let Some(h) = m.get("custom_headers")
        && !h
            .as_object()
            .is_some_and(|h| h.values().all(Value::is_string))
    {
        return Err(ApiError::invalid(
            "custom_headers must be an object of strings",
        ));
    }
    m.entry("active").or_insert(json!(true));
    m.entry("auth_type").or_insert(json!("none"));
    Ok(m)
}

/// The target a webhook object names, to POST to.
fn target_of(
    m: &Map<String, Value>,
    reach: &Arc<crate::netguard::Reach>,
) -> Result<Target, ApiError> {
    // Posted to whether or not it is active.
    let mut active = m.clone();
    active.insert("active".into(), json!(true));
    let spec = StoredWebhook {
        id: String::new(),
        spec: Value::Object(active).to_string(),
        created: 0,
        updated: 0,
    };
    crate::events::sink::from_api(&spec, reach)
        .map(|s| s.target)
        .ok_or_else(|| ApiError::invalid("target must be an http or https URL"))
}

/// SparkPost's test POST before it keeps a new target: 400 when it is not accepted.
async fn test_post(
    m: &Map<String, Value>,
    reach: &Arc<crate::netguard::Reach>,
) -> Result<(), ApiError> {
    let target = target_of(m, reach)?;
    let id = crate::rest::auth::new_key()
        .map(|(k, _)| k)
        .unwrap_or_default();
    match target.post(&id, PING.to_owned()).await {
        Ok((status, _, _)) if (200..300).contains(&status) => Ok(()),
        Ok((status, _, _)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Webhook target failed the test POST",
        )
        .with("1300", format!("the target answered HTTP {status}"))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Webhook target failed the test POST",
        )
        .with("1300", e)),
    }
}

fn writable(state: &ApiState) -> Result<(), ApiError> {
    if state.webhooks_writable {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhooks cannot be changed here",
    )
    .with(
        "1400",
        "with [store] postgres (or no store), webhooks are configured in the file ([[webhook]])",
    ))
}

async fn save(
    state: &ApiState,
    id: &str,
    m: Map<String, Value>,
    created: u64,
) -> Result<(), ApiError> {
    let now = crate::ids::unix_secs();
    state
        .store
        .api_webhook_put(StoredWebhook {
            id: id.to_owned(),
            spec: Value::Object(m).to_string(),
            created: if created == 0 { now } else { created },
            updated: now,
        })
        .await
        .map_err(|e| ApiError::unavailable("webhook update", e))?;
    state.webhooks_changed.notify_one();
    Ok(())
}

/// `POST /webhooks`.
pub async fn create(state: &ApiState, req: &Request) -> ApiResult {
    main_account(state, req, Grant::WebhooksModify)?;
    writable(state)?;
    let reach = state.reach();
    let m = checked(json_body(&req.body)?, &reach)?;
    test_post(&m, &reach).await?;
    let (key, _) =
        crate::rest::auth::new_key().map_err(|e| ApiError::unavailable("webhook id", e))?;
    let id = key[..32].to_owned();
    save(state, &id, m, 0).await?;
    tracing::info!(webhook = %id, "API: webhook created");
    ok(json!({"results": {"id": id, "links": links(&id)}}))
}

fn from_config(id: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "Forbidden.").with(
        "1100",
        format!("webhook {id} is defined in the configuration file: change it there"),
    )
}

/// `PUT /webhooks/{id}`: the fields given replace the stored ones.
pub async fn update(state: &ApiState, req: &Request, id: &str) -> ApiResult {
    main_account(state, req, Grant::WebhooksModify)?;
    let (_, _, current) = find(state, id).await?;
    if current.get("source") == Some(&json!("config")) {
        return Err(from_config(id));
    }
    writable(state)?;
    let stored = stored(state, id).await?;
    let mut m: Map<String, Value> = serde_json::from_str(&stored.spec).unwrap_or_default();
    let old_target = m.get("target").cloned();
    for (k, v) in json_body(&req.body)? {
        m.insert(k, v);
    }
    let reach = state.reach();
    let m = checked(m, &reach)?;
    if m.get("target") != old_target.as_ref() {
        test_post(&m, &reach).await?;
    }
    save(state, id, m, stored.created).await?;
    tracing::info!(webhook = %id, "API: webhook updated");
    ok(json!({"results": {"id": id, "links": links(id)}}))
}

/// `DELETE /webhooks/{id}`: 204.
pub async fn delete(state: &ApiState, req: &Request, id: &str) -> ApiResult {
    main_account(state, req, Grant::WebhooksModify)?;
    let (_, _, current) = find(state, id).await?;
    if current.get("source") == Some(&json!("config")) {
        return Err(from_config(id));
    }
    let removed = state
        .store
        .api_webhook_delete(id)
        .await
        .map_err(|e| ApiError::unavailable("webhook removal", e))?;
    if !removed {
        return Err(ApiError::not_found("Resource could not be found"));
    }
    state.webhooks_changed.notify_one();
    tracing::info!(webhook = %id, "API: webhook deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /webhooks/{id}/validate` with `{"message": <payload>}`: POST it and report.
pub async fn validate(state: &ApiState, req: &Request, id: &str) -> ApiResult {
    main_account(state, req, Grant::WebhooksModify)?;
    let body = json_body(&req.body)?;
    let message = body
        .get("message")
        .ok_or_else(|| ApiError::missing("message"))?
        .to_string();
    let target = match find(state, id)
        .await?
        .2
        .get("source")
        .and_then(Value::as_str)
    {
        Some("config") => {
            let n: usize = id
                .strip_prefix("config-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let hook = state
                .config_webhooks()
                .get(n.wrapping_sub(1))
                .cloned()
                .ok_or_else(|| ApiError::not_found("Resource could not be found"))?;
            crate::events::sink::target_of(&hook)
                .map_err(|e| ApiError::unavailable("webhook", e))?
        }
        _ => {
            let stored = stored(state, id).await?;
            let m: Map<String, Value> = serde_json::from_str(&stored.spec).unwrap_or_default();
            target_of(&m, &state.reach())?
        }
    };
    let batch = crate::rest::auth::new_key()
        .map(|(k, _)| k)
        .unwrap_or_default();
    let (msg, response) = match target.post(&batch, message).await {
        Ok((status, headers, body)) => (
            if (200..300).contains(&status) {
                "Test POST to endpoint succeeded"
            } else {
                "Test POST to endpoint failed"
            },
            json!({
                "status": status,
                "headers": headers
                    .into_iter()
                    .map(|(k, v)| (k, json!(v)))
                    .collect::<Map<String, Value>>(),
                "body": body,
            }),
        ),
        Err(e) => (
            "Test POST to endpoint failed",
            json!({"status": 0, "headers": {}, "body": e}),
        ),
    };
    ok(json!({"results": {"msg": msg, "response": response}}))
}

/// `GET /webhooks/{id}/batch-status?limit=`.
pub async fn batch_status(state: &ApiState, req: &Request, id: &str) -> ApiResult {
    main_account(state, req, Grant::WebhooksView)?;
    let (_, sink, _) = find(state, id).await?;
    let limit = req.params.number("limit", 1..=100, 100)? as usize;
    let log = state
        .store
        .batch_log(&sink, limit)
        .await
        .map_err(|e| ApiError::unavailable("batch status", e))?;
    let results: Vec<Value> = log
        .into_iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("batch_id".into(), json!(e.batch_id));
            m.insert("ts".into(), json!(super::common::format_time(e.ts)));
            m.insert("attempts".into(), json!(e.attempts));
            m.insert(
                "response_code".into(),
                json!(e.response_code.unwrap_or_default()),
            );
            if let Some(f) = e.failure_code {
                m.insert("failure_code".into(), json!(f));
            }
            Value::Object(m)
        })
        .collect();
    ok(json!({ "results": results }))
}
