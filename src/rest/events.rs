//! `/api/v1/events/message` (cursor paging) and the legacy `/api/v1/message-events`
//! (page paging, still called by gosparkpost and sparkpost-cli): the stored events,
//! newest first, in the webhooks' JSON without the `msys` wrapper.

use super::common::{ApiError, ApiResult, Params, ok};
use super::{ApiState, Request};
use crate::config::Grant;
use crate::events::EventType;
use crate::store::query::{EventField, EventKey, EventQuery};
use serde_json::{Value, json};

const MAX_PER_PAGE: u64 = 10_000;
const DAY: u64 = 86_400;

/// The filters of `/events/message`, by query parameter.
const FILTERS: [(&str, EventField); 16] = [
    ("events", EventField::Type),
    ("event_ids", EventField::EventId),
    ("recipients", EventField::Recipient),
    ("recipient_domains", EventField::RecipientDomain),
    ("from_addresses", EventField::FromAddress),
    ("sending_domains", EventField::SendingDomain),
    ("subjects", EventField::Subject),
    ("bounce_classes", EventField::BounceClass),
    ("reasons", EventField::Reason),
    ("campaigns", EventField::Campaign),
    ("templates", EventField::Template),
    ("sending_ips", EventField::SendingIp),
    ("ip_pools", EventField::IpPool),
    ("subaccounts", EventField::Subaccount),
    ("messages", EventField::Message),
    ("transmissions", EventField::Transmission),
];

/// The legacy endpoint's other names.
const LEGACY_FILTERS: [(&str, EventField); 5] = [
    ("campaign_ids", EventField::Campaign),
    ("message_ids", EventField::Message),
    ("template_ids", EventField::Template),
    ("transmission_ids", EventField::Transmission),
    ("friendly_froms", EventField::FromAddress),
];

/// A stored batch item as the API shows an event: the object inside `msys.<category>`.
pub fn flatten(item: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(item).ok()?;
    value.get("msys")?.as_object()?.values().next().cloned()
}

fn query(p: &Params, scope: Option<crate::store::Account>) -> Result<EventQuery, ApiError> {
    let now = crate::ids::unix_secs();
    let to = p.time("to")?.unwrap_or(now + 1);
    let from = p.time("from")?.unwrap_or(to.saturating_sub(DAY));
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    let mut filters = Vec::new();
    for (name, field) in FILTERS.iter().chain(&LEGACY_FILTERS) {
        let values = p.list(name)?;
        if values.is_empty() {
            continue;
        }
        if *field == EventField::Type
            && let Some(bad) = values.iter().find(|v| EventType::parse(v).is_none())
        {
            return Err(ApiError::invalid(format!(
                "events: `{bad}` is not an event type this server records"
            )));
        }
        filters.push((*field, values));
    }
    Ok(EventQuery {
        from,
        to,
        filters,
        account: scope,
        after: None,
        offset: 0,
        limit: p.number("per_page", 1..=MAX_PER_PAGE, 1000)? as usize,
    })
}

/// The query string of a next page: the caller's parameters with `cursor` or `page`
/// replaced.
fn next_link(path: &str, p: &Params, replace: (&str, String)) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (name, value) in p.pairs() {
        if name != replace.0 {
            q.append_pair(name, value);
        }
    }
    q.append_pair(replace.0, &replace.1);
    format!("{path}?{}", q.finish())
}

/// `GET /events/message`.
pub async fn search(state: &ApiState, req: &Request) -> ApiResult {
    let caller = state.authorize(req, Grant::EventsView)?;
    let p = &req.params;
    let mut q = query(p, caller.scope.filter())?;
    if let Some(c) = p.get("cursor").filter(|c| *c != "initial") {
        q.after = Some(
            EventKey::decode(c)
                .ok_or_else(|| ApiError::invalid("cursor: not a cursor this server gave"))?,
        );
    }
    let limit = q.limit;
    let page = state
        .store
        .event_search(q)
        .await
        .map_err(|e| ApiError::unavailable("event search", e))?;
    let mut links = serde_json::Map::new();
    if page.items.len() == limit
        && let Some((last, _)) = page.items.last()
    {
        links.insert(
            "next".into(),
            json!(next_link(
                "/api/v1/events/message",
                p,
                ("cursor", last.encode())
            )),
        );
    }
    ok(json!({
        "results": page.items.iter().filter_map(|(_, item)| flatten(item)).collect::<Vec<_>>(),
        "total_count": page.total,
        "links": links,
    }))
}

/// `GET /message-events`: the same search by pages.
pub async fn legacy(state: &ApiState, req: &Request) -> ApiResult {
    let caller = state.authorize(req, Grant::EventsView)?;
    let p = &req.params;
    let mut q = query(p, caller.scope.filter())?;
    let page = p.number("page", 1..=u64::from(u32::MAX), 1)?;
    q.offset = (page - 1) * q.limit as u64;
    let per_page = q.limit as u64;
    let found = state
        .store
        .event_search(q)
        .await
        .map_err(|e| ApiError::unavailable("event search", e))?;
    let last = found.total.div_ceil(per_page).max(1);
    let mut links = Vec::new();
    if page < last {
        links.push(json!({"href": next_link("/api/v1/message-events", p, ("page", (page + 1).to_string())), "rel": "next"}));
    }
    links.push(json!({"href": next_link("/api/v1/message-events", p, ("page", last.to_string())), "rel": "last"}));
    ok(json!({
        "results": found.items.iter().filter_map(|(_, item)| flatten(item)).collect::<Vec<_>>(),
        "total_count": found.total,
        "links": links,
    }))
}
