//! The REST API's questions in SQLite (see `query.rs`), and the deliverability counters
//! kept at commit: per minute and per hour, so a month's campaign report sums hours and
//! only its ragged edges read minutes.

use super::query::{
    Dimension, EventField, EventKey, EventPage, EventQuery, MetricsQuery, MetricsRow,
    SuppressionPage, SuppressionQuery,
};
use super::sqlite::{account_key, account_of, int};
use super::{SuppressionEntry, SuppressionType};
use crate::events::{Event, counted};
use rusqlite::types::Value as V;
use rusqlite::{Connection, params, params_from_iter};

/// A `WHERE` clause being built, with its values.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    values: Vec<V>,
}

impl Where {
    fn push(&mut self, clause: impl Into<String>, values: impl IntoIterator<Item = V>) {
        self.clauses.push(clause.into());
        self.values.extend(values);
    }

    /// `expr IN (?, ...)`.
    fn any_of(&mut self, expr: &str, values: impl IntoIterator<Item = V>) {
        let values: Vec<V> = values.into_iter().collect();
        let marks = vec!["?"; values.len()].join(", ");
        self.push(format!("{expr} IN ({marks})"), values);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn text(s: &str) -> V {
    V::Text(s.to_owned())
}

fn suppression_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<SuppressionEntry> {
    Ok(SuppressionEntry {
        recipient: r.get(0)?,
        account: account_of(r.get(1)?),
        kind: SuppressionType::parse(&r.get::<_, String>(2)?)
            .unwrap_or(SuppressionType::NonTransactional),
        source: r.get(3)?,
        description: r.get(4)?,
        created: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        updated: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
    })
}

/// `LIKE` pattern text with its wildcards escaped (`ESCAPE '\'`).
fn like_escaped(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub(super) fn suppression_search(
    conn: &Connection,
    q: &SuppressionQuery,
) -> rusqlite::Result<SuppressionPage> {
    let mut w = Where::default();
    if let Some(account) = q.account {
        w.push("account = ?", [V::Integer(account_key(account))]);
    }
    if let Some(from) = q.from {
        w.push("updated >= ?", [V::Integer(int(from))]);
    }
    if let Some(to) = q.to {
        w.push("updated <= ?", [V::Integer(int(to))]);
    }
    if !q.types.is_empty() {
        w.any_of("type", q.types.iter().map(|t| text(t.as_str())));
    }
    if !q.sources.is_empty() {
        w.any_of("source", q.sources.iter().map(|s| text(s)));
    }
    if let Some(domain) = &q.domain {
        w.push(
            "recipient LIKE ? ESCAPE '\\'",
            [text(&format!("%@{}", like_escaped(&domain.to_lowercase())))],
        );
    }
    if let Some(words) = &q.description {
        for word in words.split_whitespace() {
            w.push(
                "description LIKE ? ESCAPE '\\'",
                [text(&format!("%{}%", like_escaped(word)))],
            );
        }
    }
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM suppression{}", w.sql()),
        params_from_iter(w.values.iter()),
        |r| r.get(0),
    )?;
    let (cmp, order) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(k) = &q.after {
        w.push(
            format!("(updated, recipient, account, type) {cmp} (?, ?, ?, ?)"),
            [
                V::Integer(int(k.updated)),
                text(&k.recipient),
                V::Integer(account_key(k.account)),
                text(k.kind.as_str()),
            ],
        );
    }
    let sql = format!(
        "SELECT recipient, account, type, source, description, created, updated FROM suppression{}
         ORDER BY updated {order}, recipient {order}, account {order}, type {order} LIMIT ? OFFSET ?",
        w.sql()
    );
    let mut values = w.values;
    values.push(V::Integer(q.limit as i64));
    values.push(V::Integer(if q.after.is_some() {
        0
    } else {
        int(q.offset)
    }));
    let mut stmt = conn.prepare(&sql)?;
    let entries = stmt
        .query_map(params_from_iter(values.iter()), suppression_entry)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(SuppressionPage {
        entries,
        total: u64::try_from(total).unwrap_or(0),
    })
}

/// The number of entries by source (`None`: every account).
pub(super) fn suppression_summary(
    conn: &Connection,
    account: Option<super::Account>,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut w = Where::default();
    if let Some(account) = account {
        w.push("account = ?", [V::Integer(account_key(account))]);
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT source, count(*) FROM suppression{} GROUP BY source",
        w.sql()
    ))?;
    stmt.query_map(params_from_iter(w.values.iter()), |r| {
        Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
    })?
    .collect()
}

/// An event field in SQL: the indexed columns for recipient and campaign, the stored
/// item's JSON for the rest.
fn event_field_sql(field: EventField) -> String {
    match field {
        EventField::Type => "type".into(),
        EventField::EventId => "CAST(event_id AS TEXT)".into(),
        EventField::Recipient => "rcpt".into(),
        EventField::Campaign => "campaign".into(),
        EventField::Transmission => "transmission_id".into(),
        f => format!(
            "json_extract(item, '$.msys.' || CASE WHEN type IN ('open', 'initial_open', 'click') \
             THEN 'track_event' WHEN type IN ('list_unsubscribe', 'link_unsubscribe') \
             THEN 'unsubscribe_event' ELSE 'message_event' END || '.{}')",
            f.json_name()
        ),
    }
}

pub(super) fn event_search(conn: &Connection, q: &EventQuery) -> rusqlite::Result<EventPage> {
    let mut w = Where::default();
    w.push(
        "created >= ? AND created < ?",
        [V::Integer(int(q.from)), V::Integer(int(q.to))],
    );
    if let Some(account) = q.account {
        let subaccount = event_field_sql(EventField::Subaccount);
        match account {
            Some(id) => w.push(format!("{subaccount} = ?"), [text(&id.to_string())]),
            None => w.push(format!("{subaccount} IS NULL"), []),
        }
    }
    for (field, values) in &q.filters {
        let expr = event_field_sql(*field);
        if field.by_keyword() {
            let any: Vec<String> = values
                .iter()
                .map(|_| format!("{expr} LIKE ? ESCAPE '\\'"))
                .collect();
            w.push(
                format!("({})", any.join(" OR ")),
                values
                    .iter()
                    .map(|v| text(&format!("%{}%", like_escaped(v)))),
            );
        } else if *field == EventField::Recipient {
            w.any_of(&expr, values.iter().map(|v| text(&v.to_lowercase())));
        } else {
            w.any_of(&expr, values.iter().map(|v| text(v)));
        }
    }
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM events{}", w.sql()),
        params_from_iter(w.values.iter()),
        |r| r.get(0),
    )?;
    if let Some(k) = q.after {
        w.push(
            "(created, event_id) < (?, ?)",
            [V::Integer(int(k.created)), V::Integer(int(k.event_id))],
        );
    }
    let sql = format!(
        "SELECT created, event_id, item FROM events{} ORDER BY created DESC, event_id DESC LIMIT ? OFFSET ?",
        w.sql()
    );
    let mut values = w.values;
    values.push(V::Integer(q.limit as i64));
    values.push(V::Integer(if q.after.is_some() {
        0
    } else {
        int(q.offset)
    }));
    let mut stmt = conn.prepare(&sql)?;
    let items = stmt
        .query_map(params_from_iter(values.iter()), |r| {
            Ok((
                EventKey {
                    created: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    event_id: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                },
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(EventPage {
        items,
        total: u64::try_from(total).unwrap_or(0),
    })
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

/// Add `event` to the counters (and its recipient and campaign to its row, for
/// searches). Runs inside the commit's transaction.
pub(super) fn count_event(conn: &Connection, event: &Event) -> rusqlite::Result<()> {
    let (counts, uniques) = counted::counts(event);
    let mut add = conn.prepare_cached(
        "INSERT INTO counters (span, bucket, campaign, sending_domain, subaccount, ip_pool, bounce_class, metric, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT DO UPDATE SET value = value + excluded.value",
    )?;
    let [campaign, domain, subaccount, pool, class] = counted::dimensions(event);
    let mut bump = |metric: &str, amount: u64| -> rusqlite::Result<()> {
        for span in [MINUTE, HOUR] {
            add.execute(params![
                int(span),
                int(event.timestamp - event.timestamp % span),
                campaign,
                domain,
                subaccount,
                pool,
                class,
                metric,
                int(amount)
            ])?;
        }
        Ok(())
    };
    for (metric, amount) in counts {
        bump(metric, amount)?;
    }
    if !uniques.is_empty() {
        let key = counted::message_key(event);
        let mut seen = conn.prepare_cached(
            "INSERT OR IGNORE INTO engaged (message, what, created) VALUES (?1, ?2, ?3)",
        )?;
        for (metric, what) in uniques {
            if seen.execute(params![key, what, int(event.timestamp)])? == 1 {
                bump(metric, 1)?;
            }
        }
    }
    Ok(())
}

/// Forget counters and first-engagement marks older than `before` (Unix seconds).
pub(super) fn prune_counters(conn: &Connection, before: u64) -> rusqlite::Result<usize> {
    let counters = conn.execute(
        "DELETE FROM counters WHERE bucket < ?1",
        params![int(before)],
    )?;
    let engaged = conn.execute(
        "DELETE FROM engaged WHERE created < ?1",
        params![int(before)],
    )?;
    Ok(counters + engaged)
}

/// The ranges of counter rows covering `[from, to)`: whole hours from the hourly rows,
/// the edges from the minute rows. Only minutes when `fine` (buckets under an hour, or
/// not hour-aligned).
fn spans(from: u64, to: u64, fine: bool) -> Vec<(u64, u64, u64)> {
    let h_from = from.div_ceil(HOUR) * HOUR;
    let h_to = to / HOUR * HOUR;
    if fine || h_from >= h_to {
        return vec![(MINUTE, from, to)];
    }
    let mut out = vec![(HOUR, h_from, h_to)];
    if from < h_from {
        out.push((MINUTE, from, h_from));
    }
    if h_to < to {
        out.push((MINUTE, h_to, to));
    }
    out
}

pub(super) fn metrics(conn: &Connection, q: &MetricsQuery) -> rusqlite::Result<Vec<MetricsRow>> {
    let fine = q
        .bucket
        .is_some_and(|b| b < HOUR || q.bucket_offset.rem_euclid(HOUR as i64) != 0);
    let mut w = Where::default();
    let ranges = spans(q.from, q.to, fine);
    let any: Vec<&str> = ranges
        .iter()
        .map(|_| "(span = ? AND bucket >= ? AND bucket < ?)")
        .collect();
    w.push(
        format!("({})", any.join(" OR ")),
        ranges.iter().flat_map(|(span, from, to)| {
            [
                V::Integer(int(*span)),
                V::Integer(int(*from)),
                V::Integer(int(*to)),
            ]
        }),
    );
    w.any_of("metric", q.metrics.iter().map(|m| text(m)));
    for (dim, values) in &q.filters {
        w.any_of(dim.column(), values.iter().map(|v| text(v)));
    }
    let group = q.group.map(Dimension::column);
    let bucket = q.bucket.map(|size| {
        format!(
            "((bucket + {off}) / {size}) * {size} - {off}",
            off = q.bucket_offset
        )
    });
    let keys: Vec<String> = group
        .iter()
        .map(|g| (*g).to_owned())
        .chain(bucket.clone())
        .collect();
    let select_keys = if keys.is_empty() {
        String::new()
    } else {
        format!("{}, ", keys.join(", "))
    };
    let group_by = keys
        .iter()
        .cloned()
        .chain(["metric".to_owned()])
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {select_keys}metric, sum(value) FROM counters{} GROUP BY {group_by} ORDER BY {group_by}",
        w.sql()
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows: Vec<MetricsRow> = Vec::new();
    let mut query = stmt.query(params_from_iter(w.values.iter()))?;
    while let Some(r) = query.next()? {
        let mut i = 0;
        let g: Option<String> = match group {
            Some(_) => {
                i += 1;
                Some(r.get(0)?)
            }
            None => None,
        };
        let b: Option<u64> = match bucket {
            Some(_) => {
                i += 1;
                Some(u64::try_from(r.get::<_, i64>(i - 1)?).unwrap_or(0))
            }
            None => None,
        };
        let metric: String = r.get(i)?;
        let value = u64::try_from(r.get::<_, i64>(i + 1)?).unwrap_or(0);
        match rows.last_mut() {
            Some(last) if last.group == g && last.bucket == b => last.values.push((metric, value)),
            _ => rows.push(MetricsRow {
                group: g,
                bucket: b,
                values: vec![(metric, value)],
            }),
        }
    }
    Ok(rows)
}

/// The values of a dimension seen in `[from, to)` containing `matching`, at most `limit`.
pub(super) fn dimension_values(
    conn: &Connection,
    dim: Dimension,
    from: u64,
    to: u64,
    matching: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let column = dim.column();
    let mut w = Where::default();
    w.push(
        "span = ? AND bucket >= ? AND bucket < ?",
        [
            V::Integer(int(HOUR)),
            V::Integer(int(from / HOUR * HOUR)),
            V::Integer(int(to)),
        ],
    );
    w.push(format!("{column} <> ''"), []);
    if let Some(m) = matching {
        w.push(
            format!("{column} LIKE ? ESCAPE '\\'"),
            [text(&format!("%{}%", like_escaped(m)))],
        );
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT DISTINCT {column} FROM counters{} ORDER BY {column} LIMIT {limit}",
        w.sql()
    ))?;
    stmt.query_map(params_from_iter(w.values.iter()), |r| r.get(0))?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_sum_whole_hours_and_read_minutes_at_the_edges() {
        assert_eq!(spans(0, 7200, false), [(HOUR, 0, 7200)]);
        assert_eq!(
            spans(600, 7260, false),
            [
                (HOUR, 3600, 7200),
                (MINUTE, 600, 3600),
                (MINUTE, 7200, 7260)
            ]
        );
        assert_eq!(spans(600, 3000, false), [(MINUTE, 600, 3000)]);
        assert_eq!(spans(0, 7200, true), [(MINUTE, 0, 7200)]);
    }
}
