//! `/api/v1/metrics/...`: deliverability answered from the counters the store keeps
//! as events are committed (never by scanning events), so they outlive the events.

use super::common::{ApiError, ApiResult, Params, format_time_in, ok};
use super::{ApiState, Request};
use crate::config::Grant;
use crate::events::counted::{METRICS, bounce_category, bounce_class_name};
use crate::store::query::{Dimension, MetricsQuery, MetricsRow};
use serde_json::{Map, Value, json};

const MINUTE: u64 = 60;
const DAY: u64 = 86_400;
/// Most time buckets one time-series answer holds.
const MAX_BUCKETS: u64 = 10_000;

/// What a deliverability report is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Summary,
    By(Dimension),
    TimeSeries,
}

/// `timezone`: UTC, or a fixed offset (`+02:00`, `-0500`, `UTC-04:00`), as seconds east.
fn zone(p: &Params) -> Result<i64, ApiError> {
    let Some(tz) = p.get("timezone") else {
        return Ok(0);
    };
    let offset = tz
        .strip_prefix("UTC")
        .or_else(|| tz.strip_prefix("GMT"))
        .unwrap_or(tz);
    if offset.is_empty() || tz == "Etc/UTC" {
        return Ok(0);
    }
    let bad = || {
        ApiError::invalid(format!(
            "timezone: `{tz}` is not supported; use UTC or a fixed offset such as -04:00"
        ))
    };
    let (sign, rest) = match offset.as_bytes().first() {
        Some(b'+') => (1, &offset[1..]),
        Some(b'-') => (-1, &offset[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i64>().map_err(|_| bad())?, 0),
        4 => (
            digits[..2].parse::<i64>().map_err(|_| bad())?,
            digits[2..].parse::<i64>().map_err(|_| bad())?,
        ),
        _ => return Err(bad()),
    };
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// `precision` in seconds; months are days folded afterwards.
fn precision(p: &Params) -> Result<(u64, bool), ApiError> {
    Ok(match p.get("precision").unwrap_or("hour") {
        "1min" => (MINUTE, false),
        "5min" => (5 * MINUTE, false),
        "15min" => (15 * MINUTE, false),
        "hour" => (3600, false),
        "day" => (DAY, false),
        "week" => (7 * DAY, false),
        "month" => (DAY, true),
        other => {
            return Err(ApiError::invalid(format!(
                "precision: `{other}` is not one of 1min, 5min, 15min, hour, day, week, month"
            )));
        }
    })
}

/// `from` (required), `to` (default now), minute-aligned.
fn range(p: &Params) -> Result<(u64, u64), ApiError> {
    let from = p.time("from")?.ok_or_else(|| ApiError::missing("from"))?;
    let now = crate::ids::unix_secs();
    let to = p
        .time("to")?
        .unwrap_or(now.div_ceil(MINUTE) * MINUTE + MINUTE);
    let (from, to) = (from / MINUTE * MINUTE, to.div_ceil(MINUTE) * MINUTE);
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    Ok((from, to))
}

fn filters(p: &Params) -> Result<Vec<(Dimension, Vec<String>)>, ApiError> {
    let mut out = Vec::new();
    for (name, dim) in [
        ("campaigns", Dimension::Campaign),
        ("sending_domains", Dimension::SendingDomain),
        ("subaccounts", Dimension::Subaccount),
        ("ip_pools", Dimension::IpPool),
    ] {
        let mut values = p.list(name)?;
        if dim == Dimension::Subaccount {
            // The main account is subaccount 0; its counters have none.
            for v in &mut values {
                if v == "0" {
                    v.clear();
                }
            }
        }
        if !values.is_empty() {
            out.push((dim, values));
        }
    }
    Ok(out)
}

/// The group's key in an answer.
fn group_key(dim: Dimension) -> &'static str {
    match dim {
        Dimension::Campaign => "campaign_id",
        Dimension::SendingDomain => "sending_domain",
        Dimension::Subaccount => "subaccount_id",
        Dimension::IpPool => "ip_pool",
        Dimension::BounceClass => "classification_id",
    }
}

/// The requested metrics, each present (0 when nothing was counted).
fn values(metrics: &[String], row: Option<&MetricsRow>) -> Map<String, Value> {
    metrics
        .iter()
        .map(|m| {
            let n = row
                .and_then(|r| r.values.iter().find(|(k, _)| k == m))
                .map_or(0, |(_, v)| *v);
            (m.clone(), json!(n))
        })
        .collect()
}

/// `GET /metrics/deliverability[/...]`.
pub async fn deliverability(state: &ApiState, req: &Request, report: Report) -> ApiResult {
    let caller = state.authorize(req, Grant::MetricsView)?;
    let p = &req.params;
    let (from, to) = range(p)?;
    let metrics = p.list("metrics")?;
    if metrics.is_empty() {
        return Err(ApiError::missing("metrics"));
    }
    if let Some(bad) = metrics.iter().find(|m| !METRICS.contains(&m.as_str())) {
        return Err(ApiError::invalid(format!(
            "metrics: `{bad}` is not one of {}",
            METRICS.join(", ")
        )));
    }
    let mut dims = filters(p)?;
    if let Some(account) = caller.scope.filter() {
        dims.retain(|(d, _)| *d != Dimension::Subaccount);
        dims.push((
            Dimension::Subaccount,
            vec![account.map(|a| a.to_string()).unwrap_or_default()],
        ));
    }
    let offset = zone(p)?;
    let mut q = MetricsQuery {
        from,
        to,
        metrics: metrics.clone(),
        filters: dims,
        group: None,
        bucket: None,
        bucket_offset: offset,
    };
    let mut months = false;
    match report {
        Report::Summary => {}
        Report::By(dim) => q.group = Some(dim),
        Report::TimeSeries => {
            let (size, by_month) = precision(p)?;
            if (to - from) / size > MAX_BUCKETS {
                return Err(ApiError::invalid(format!(
                    "precision: more than {MAX_BUCKETS} points; choose a coarser precision or a shorter range"
                )));
            }
            q.bucket = Some(size);
            months = by_month;
        }
    }
    let rows = state
        .store
        .metrics(q.clone())
        .await
        .map_err(|e| ApiError::unavailable("metrics", e))?;
    let results: Vec<Value> = match report {
        Report::Summary => vec![Value::Object(values(&metrics, rows.first()))],
        Report::By(dim) => {
            let limit = p.number("limit", 1..=10_000, 1000)? as usize;
            let mut out: Vec<Value> = rows
                .iter()
                .filter(|r| dim == Dimension::Subaccount || r.group.as_deref() != Some(""))
                .map(|r| {
                    let mut m = Map::new();
                    let g = r.group.clone().unwrap_or_default();
                    match dim {
                        Dimension::Subaccount => {
                            m.insert(group_key(dim).into(), json!(g.parse::<u64>().unwrap_or(0)));
                        }
                        Dimension::BounceClass => {
                            let class = g.parse::<u32>().unwrap_or(1);
                            let category = bounce_category(class);
                            m.insert("classification_id".into(), json!(class));
                            m.insert("bounce_class_name".into(), json!(bounce_class_name(class)));
                            m.insert("bounce_category_name".into(), json!(category));
                        }
                        _ => {
                            m.insert(group_key(dim).into(), json!(g));
                        }
                    }
                    m.extend(values(&metrics, Some(r)));
                    Value::Object(m)
                })
                .collect();
            if let Some(order) = p.get("order_by").filter(|o| metrics.iter().any(|m| m == o)) {
                out.sort_by_key(|v| std::cmp::Reverse(v[order].as_u64().unwrap_or(0)));
            }
            out.truncate(limit);
            out
        }
        Report::TimeSeries => series(&metrics, &rows, &q, months),
    };
    ok(json!({ "results": results }))
}

/// One object per bucket from the first to the last, empty ones included.
fn series(metrics: &[String], rows: &[MetricsRow], q: &MetricsQuery, months: bool) -> Vec<Value> {
    let size = q.bucket.unwrap_or(3600);
    let off = q.bucket_offset;
    let align = |t: u64| -> u64 {
        let t = i64::try_from(t).unwrap_or(0);
        u64::try_from((t + off).div_euclid(size as i64) * size as i64 - off).unwrap_or(0)
    };
    let by_bucket: std::collections::HashMap<u64, &MetricsRow> =
        rows.iter().filter_map(|r| Some((r.bucket?, r))).collect();
    let mut buckets: Vec<(u64, Option<&MetricsRow>)> = Vec::new();
    let mut t = align(q.from);
    while t < q.to {
        buckets.push((t, by_bucket.get(&t).copied()));
        t += size;
    }
    if !months {
        return buckets
            .into_iter()
            .map(|(t, row)| {
                let mut m = Map::new();
                m.insert("ts".into(), json!(format_time_in(t, off)));
                m.extend(values(metrics, row));
                Value::Object(m)
            })
            .collect();
    }
    // Days folded into calendar months of the zone.
    let mut out: Vec<(String, u64, Map<String, Value>)> = Vec::new();
    for (t, row) in buckets {
        let local = i64::try_from(t).unwrap_or(0) + off;
        let (y, mo, _) = crate::events::civil_from_days(local.div_euclid(86_400));
        let key = format!("{y:04}-{mo:02}");
        let day = values(metrics, row);
        match out.last_mut() {
            Some((k, _, sums)) if *k == key => {
                for (name, v) in day {
                    let sum = sums[&name].as_u64().unwrap_or(0) + v.as_u64().unwrap_or(0);
                    sums.insert(name, json!(sum));
                }
            }
            _ => out.push((key, t, day)),
        }
    }
    out.into_iter()
        .map(|(_, t, sums)| {
            let mut m = Map::new();
            m.insert("ts".into(), json!(format_time_in(t, off)));
            m.extend(sums);
            Value::Object(m)
        })
        .collect()
}

/// `GET /metrics/campaigns` and `/metrics/domains`: the values seen in the range.
pub async fn list(state: &ApiState, req: &Request, dim: Dimension) -> ApiResult {
    state.authorize(req, Grant::MetricsView)?;
    let p = &req.params;
    let (from, to) = range(p)?;
    let limit = p.number("limit", 1..=10_000, 1000)? as usize;
    let found = state
        .store
        .dimension_values(dim, (from, to), p.get("match").map(str::to_owned), limit)
        .await
        .map_err(|e| ApiError::unavailable("metrics lists", e))?;
    let key = match dim {
        Dimension::Campaign => "campaigns",
        _ => "domains",
    };
    ok(json!({ "results": { key: found } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones() {
        let z = |tz: &str| zone(&Params::parse(Some(&format!("timezone={tz}"))).unwrap());
        assert_eq!(z("UTC").unwrap(), 0);
        assert_eq!(z("-04:00").unwrap(), -4 * 3600);
        assert_eq!(z("%2B0530").unwrap(), 5 * 3600 + 1800);
        assert_eq!(z("UTC-04:00").unwrap(), -4 * 3600);
        assert!(z("America/New_York").is_err());
    }
}
