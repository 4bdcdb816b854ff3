//! `/api/v1/suppression-list`: the same list the milter checks and the CLI edits. A
//! PUT is committed before it is answered, so the next message is refused at once (and,
//! with `[store] postgres`, shipped to every host of the group).

use super::common::{ApiError, ApiResult, Params, format_time, json_body, ok};
use super::{ApiState, Request};
use crate::config::Grant;
use crate::store::query::{SuppressionKey, SuppressionQuery};
use crate::store::{Commit, SuppressionEntry, SuppressionFilter, SuppressionType};
use crate::suppression::SOURCE_MANUAL;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

/// Most recipients in one bulk PUT (SparkPost's limit).
pub const MAX_BULK: usize = 10_000;
const MAX_PER_PAGE: u64 = 10_000;

/// SparkPost's sources, as `sources=` names them and the summary counts them.
const SOURCES: [&str; 6] = [
    "Spam Complaint",
    "List Unsubscribe",
    "Bounce Rule",
    "Unsubscribe Link",
    "Manually Added",
    "Compliance",
];

/// An entry as SparkPost shows it (the old booleans too: some clients read them).
pub fn entry_json(e: &SuppressionEntry) -> Value {
    let mut m = Map::new();
    m.insert("recipient".into(), json!(e.recipient));
    m.insert("type".into(), json!(e.kind.as_str()));
    m.insert("source".into(), json!(e.source));
    m.insert("description".into(), json!(e.description));
    m.insert("created".into(), json!(format_time(e.created)));
    m.insert("updated".into(), json!(format_time(e.updated)));
    m.insert(
        "subaccount_id".into(),
        json!(e.account.unwrap_or(0).to_string()),
    );
    m.insert(e.kind.as_str().into(), json!(true));
    Value::Object(m)
}

fn types(params: &Params) -> Result<Vec<SuppressionType>, ApiError> {
    params
        .list("types")?
        .iter()
        .map(|t| {
            SuppressionType::parse(t).ok_or_else(|| {
                ApiError::invalid(format!(
                    "types: `{t}` is neither transactional nor non_transactional"
                ))
            })
        })
        .collect()
}

/// The query string of a listing's link: the caller's filters, then the page.
fn link(params: &Params, page: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for name in [
        "from",
        "to",
        "domain",
        "sources",
        "types",
        "description",
        "sort",
    ] {
        if let Ok(values) = params.list(name)
            && !values.is_empty()
        {
            q.append_pair(name, &values.join(","));
        }
    }
    for (name, value) in page {
        q.append_pair(name, value);
    }
    format!("/api/v1/suppression-list?{}", q.finish())
}

/// `GET /suppression-list`: search, by pages or by cursor.
pub async fn search(state: &ApiState, req: &Request) -> ApiResult {
    let caller = state.authorize(req, Grant::SuppressionView)?;
    let p = &req.params;
    let per_page = match p.get("per_page") {
        Some(_) => p.number("per_page", 1..=MAX_PER_PAGE, 1000)?,
        None => p.number("limit", 1..=MAX_PER_PAGE, 1000)?,
    };
    let sources = p.list("sources")?;
    if let Some(bad) = sources
        .iter()
        .find(|s| !SOURCES.iter().any(|k| k.eq_ignore_ascii_case(s)))
    {
        return Err(ApiError::invalid(format!(
            "sources: `{bad}` is not one of {}",
            SOURCES.join(", ")
        )));
    }
    let descending = match p.get("sort") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "sort: `{other}` is neither asc nor desc"
            )));
        }
    };
    let cursor = p.get("cursor");
    let after = match cursor {
        None | Some("initial") => None,
        Some(c) => Some(
            SuppressionKey::decode(c)
                .ok_or_else(|| ApiError::invalid("cursor: not a cursor this server gave"))?,
        ),
    };
    let page = p.number("page", 1..=u64::from(u32::MAX), 1)?;
    let query = SuppressionQuery {
        account: caller.scope.filter(),
        from: p.time("from")?,
        to: p.time("to")?,
        types: types(p)?,
        sources: sources
            .iter()
            .filter_map(|s| SOURCES.iter().find(|k| k.eq_ignore_ascii_case(s)))
            .map(|s| (*s).to_owned())
            .collect(),
        domain: p.get("domain").map(str::to_lowercase),
        description: p.get("description").map(str::to_owned),
        descending,
        after,
        offset: if cursor.is_some() {
            0
        } else {
            (page - 1) * per_page
        },
        limit: per_page as usize,
    };
    let found = state
        .store
        .suppression_search(query)
        .await
        .map_err(|e| ApiError::unavailable("suppression search", e))?;
    let per = per_page.to_string();
    let full = found.entries.len() as u64 == per_page;
    let mut links = Vec::new();
    if cursor.is_some() {
        links.push(json!({"href": link(p, &[("cursor", "initial".into()), ("per_page", per.clone())]), "rel": "first"}));
        if let Some(last) = found.entries.last().filter(|_| full) {
            let next = SuppressionKey::of(last).encode();
            links.push(
                json!({"href": link(p, &[("cursor", next), ("per_page", per)]), "rel": "next"}),
            );
        }
    } else {
        links.push(json!({"href": link(p, &[("page", "1".into()), ("per_page", per.clone())]), "rel": "first"}));
        if full && page * per_page < found.total {
            links.push(json!({"href": link(p, &[("page", (page + 1).to_string()), ("per_page", per.clone())]), "rel": "next"}));
        }
        if page > 1 {
            links.push(json!({"href": link(p, &[("page", (page - 1).to_string()), ("per_page", per.clone())]), "rel": "previous"}));
        }
        let last = found.total.div_ceil(per_page).max(1);
        links.push(json!({"href": link(p, &[("page", last.to_string()), ("per_page", per)]), "rel": "last"}));
    }
    ok(json!({
        "results": found.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "links": links,
        "total_count": found.total,
    }))
}

/// A path's recipient: an email address, lower-cased (lookups ignore case).
fn recipient(raw: &str) -> Option<String> {
    let r = raw.trim();
    crate::api::recipients::is_valid_mailbox(r).then(|| r.to_lowercase())
}

/// `GET /suppression-list/{recipient}`.
pub async fn get(state: &ApiState, req: &Request, raw: &str) -> ApiResult {
    let caller = state.authorize(req, Grant::SuppressionView)?;
    let not_found = || ApiError::not_found("Recipient could not be found");
    let recipient = recipient(raw).ok_or_else(not_found)?;
    let kinds = types(&req.params)?;
    let entries = state
        .store
        .suppression_list(SuppressionFilter {
            kind: None,
            account: caller.scope.filter(),
            recipient: Some(recipient),
        })
        .await
        .map_err(|e| ApiError::unavailable("suppression lookup", e))?;
    let entries: Vec<Value> = entries
        .iter()
        .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
        .map(entry_json)
        .collect();
    if entries.is_empty() {
        return Err(not_found());
    }
    ok(json!({"results": entries, "links": [], "total_count": entries.len()}))
}

/// The lists an item names: `type`, or the old booleans (both may be true).
fn item_types(item: &Map<String, Value>) -> Result<Vec<SuppressionType>, String> {
    if let Some(t) = item.get("type") {
        return t
            .as_str()
            .and_then(SuppressionType::parse)
            .map(|t| vec![t])
            .ok_or_else(|| "type must be transactional or non_transactional".into());
    }
    let flag = |name: &str| item.get(name).and_then(Value::as_bool).unwrap_or(false);
    let mut out = Vec::new();
    if flag("transactional") {
        out.push(SuppressionType::Transactional);
    }
    if flag("non_transactional") {
        out.push(SuppressionType::NonTransactional);
    }
    if out.is_empty() {
        return Err("Must supply a suppression type".into());
    }
    Ok(out)
}

fn description(item: &Map<String, Value>) -> String {
    item.get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(1024)
        .collect()
}

async fn commit(state: &ApiState, entries: Vec<SuppressionEntry>) -> Result<(), ApiError> {
    let n = entries.len();
    state
        .store
        .commit(Commit {
            suppress: entries,
            ..Commit::default()
        })
        .await
        .map_err(|e| ApiError::unavailable("suppression update", e))?;
    tracing::info!(entries = n, "API: suppression list updated");
    Ok(())
}

/// `PUT /suppression-list/{recipient}`.
pub async fn put(state: &ApiState, req: &Request, raw: &str) -> ApiResult {
    let caller = state.authorize(req, Grant::SuppressionManage)?;
    let body = json_body(&req.body)?;
    let recipient = recipient(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("PUT body contains 1 invalid or malformed recipient(s): {raw}"),
        )
    })?;
    let kinds = item_types(&body).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let now = crate::ids::unix_secs();
    let entries = kinds
        .into_iter()
        .map(|kind| {
            SuppressionEntry::new(
                &recipient,
                caller.scope.account(),
                kind,
                SOURCE_MANUAL,
                &description(&body),
                now,
            )
        })
        .collect();
    commit(state, entries).await?;
    ok(json!({"results": {"message": "Suppression list successfully updated"}}))
}

/// `PUT /suppression-list`: up to 10,000 recipients, all or none.
pub async fn put_many(state: &ApiState, req: &Request) -> ApiResult {
    let caller = state.authorize(req, Grant::SuppressionManage)?;
    let body = json_body(&req.body)?;
    let Some(items) = body.get("recipients").and_then(Value::as_array) else {
        return Err(ApiError::missing("recipients"));
    };
    if items.len() > MAX_BULK {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "PUT body contains {} recipients: at most {MAX_BULK} per request",
                items.len()
            ),
        ));
    }
    let now = crate::ids::unix_secs();
    let mut entries = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    let mut missing_type = false;
    for item in items {
        let Some(item) = item.as_object() else {
            bad.push(item.to_string());
            continue;
        };
        let raw = item
            .get("recipient")
            .or_else(|| item.get("email"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (Some(r), Ok(kinds)) = (recipient(raw), item_types(item)) else {
            missing_type |= recipient(raw).is_some();
            bad.push(raw.to_owned());
            continue;
        };
        for kind in kinds {
            entries.push(SuppressionEntry::new(
                &r,
                caller.scope.account(),
                kind,
                SOURCE_MANUAL,
                &description(item),
                now,
            ));
        }
    }
    if !bad.is_empty() {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "PUT body contains {} invalid or malformed recipient(s): {}",
                bad.len(),
                bad.iter().take(100).cloned().collect::<Vec<_>>().join(", ")
            ),
        );
        if missing_type {
            e = e.with(
                "1400",
                "each recipient needs a type (transactional or non_transactional)",
            );
        }
        return Err(e);
    }
    commit(state, entries).await?;
    ok(json!({"results": {"message": "Suppression List successfully updated"}}))
}

/// `DELETE /suppression-list/{recipient}` (optional body `{"type": ...}`): 204.
pub async fn delete(state: &ApiState, req: &Request, raw: &str) -> ApiResult {
    let caller = state.authorize(req, Grant::SuppressionManage)?;
    let not_found = || ApiError::not_found("Recipient could not be found");
    let recipient = recipient(raw).ok_or_else(not_found)?;
    let body = json_body(&req.body)?;
    let kind =
        match body.get("type") {
            None => None,
            Some(t) => Some(t.as_str().and_then(SuppressionType::parse).ok_or_else(|| {
                ApiError::invalid("type must be transactional or non_transactional")
            })?),
        };
    let removed = state
        .store
        .suppression_remove(SuppressionFilter {
            kind,
            account: Some(caller.scope.account()),
            recipient: Some(recipient),
        })
        .await
        .map_err(|e| ApiError::unavailable("suppression removal", e))?;
    if removed == 0 {
        return Err(not_found());
    }
    tracing::info!(entries = removed, "API: suppression entries removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /suppression-list/summary`.
pub async fn summary(state: &ApiState, req: &Request) -> ApiResult {
    let caller = state.authorize(req, Grant::SuppressionView)?;
    let counts = state
        .store
        .suppression_summary(caller.scope.filter())
        .await
        .map_err(|e| ApiError::unavailable("suppression summary", e))?;
    let mut results = Map::new();
    let mut total = 0;
    for source in SOURCES {
        let n = counts
            .iter()
            .filter(|(s, _)| s.eq_ignore_ascii_case(source))
            .map(|(_, n)| n)
            .sum::<u64>();
        total += n;
        results.insert(source.to_lowercase().replace(' ', "_"), json!(n));
    }
    results.insert("total".into(), json!(total));
    ok(json!({ "results": results }))
}
