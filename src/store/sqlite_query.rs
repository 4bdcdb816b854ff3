//! The REST API's questions in SQLite (see `query.rs`), and the deliverability counters
//! kept at commit: per minute and per hour, so a month's campaign report sums hours and
//! only its ragged edges read minutes.

use super::query::{
    BatchLogEntry, Dimension, EventField, EventKey, EventPage, EventQuery, MetricsQuery,
    MetricsRow, StoredWebhook, SuppressionPage, SuppressionQuery,
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

pub(super) fn suppression_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<SuppressionEntry> {
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

/// A query's values with its `LIMIT` and `OFFSET` (none with a keyset cursor).
fn paged(mut values: Vec<V>, limit: usize, offset: u64, keyset: bool) -> Vec<V> {
    values.push(V::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    values.push(V::Integer(if keyset { 0 } else { int(offset) }));
    values
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
    let values = paged(w.values, q.limit, q.offset, q.after.is_some());
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
    let values = paged(w.values, q.limit, q.offset, q.after.is_some());
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

/// Counter sums: (minute, dimensions, metric) -> amount.
type Sums = std::collections::HashMap<(u64, [String; 5], &'static str), u64>;

thread_local! {
    /// On the writer thread: the sums of the write running now, and of the group's
    /// writes that succeeded (a write rolled back to its savepoint adds nothing).
    pub(super) static JOB_COUNTS: std::cell::RefCell<Sums> = std::cell::RefCell::default();
    pub(super) static GROUP_COUNTS: std::cell::RefCell<Sums> = std::cell::RefCell::default();
}

/// Add the counts of a commit's new events to the running write's sums (first opens
/// and clicks are remembered in `engaged`, inside the write).
pub(super) fn count_events(conn: &Connection, events: &[&Event]) -> rusqlite::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut seen = conn.prepare_cached(
        "INSERT OR IGNORE INTO engaged (message, what, created) VALUES (?1, ?2, ?3)",
    )?;
    JOB_COUNTS.with(|sums| {
        let mut sums = sums.borrow_mut();
        for event in events {
            let (counts, uniques) = counted::counts(event);
            let minute = event.timestamp - event.timestamp % MINUTE;
            let dims = counted::dimensions(event);
            for (metric, amount) in counts {
                *sums.entry((minute, dims.clone(), metric)).or_default() += amount;
            }
            if !uniques.is_empty() {
                let key = counted::message_key(event);
                for (metric, what) in uniques {
                    if seen.execute(params![key, what, int(event.timestamp)])? == 1 {
                        *sums.entry((minute, dims.clone(), metric)).or_default() += 1;
                    }
                }
            }
        }
        Ok(())
    })
}

/// The running write succeeded: its sums join the group's.
pub(super) fn keep_job_counts() {
    JOB_COUNTS.with(|job| {
        GROUP_COUNTS.with(|group| {
            let mut group = group.borrow_mut();
            for (key, n) in job.borrow_mut().drain() {
                *group.entry(key).or_default() += n;
            }
        })
    });
}

/// Whether the group's writes counted anything.
pub(super) fn group_counted() -> bool {
    GROUP_COUNTS.with(|g| !g.borrow().is_empty())
}

/// Add the group's sums to the per-minute, per-hour and per-day counters: one upsert
/// per span and sum, however many messages the group committed.
pub(super) fn write_group_counts(conn: &Connection) -> rusqlite::Result<()> {
    let sums: Sums = GROUP_COUNTS.with(|g| std::mem::take(&mut *g.borrow_mut()));
    if sums.is_empty() {
        return Ok(());
    }
    let mut add = conn.prepare_cached(
        "INSERT INTO counters (span, bucket, campaign, sending_domain, subaccount, ip_pool, bounce_class, metric, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT DO UPDATE SET value = value + excluded.value",
    )?;
    for ((minute, [campaign, domain, subaccount, pool, class], metric), value) in sums {
        for span in SPANS {
            add.execute(params![
                int(span),
                int(minute - minute % span),
                campaign,
                domain,
                subaccount,
                pool,
                class,
                metric,
                int(value)
            ])?;
        }
    }
    Ok(())
}

const DIMENSIONS: &str = "campaign, sending_domain, subaccount, ip_pool, bounce_class";

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

/// The ranges of counter rows covering `[from, to)` with the fewest rows: whole days
/// from the daily sums, whole hours from the hourly ones, the ragged edges from the
/// minutes. `sizes` are the spans usable (largest first; a time series' buckets must
/// hold whole spans).
fn spans(from: u64, to: u64, sizes: &[u64]) -> Vec<(u64, u64, u64)> {
    let Some((&size, rest)) = sizes.split_first() else {
        return Vec::new();
    };
    if rest.is_empty() {
        return vec![(size, from, to)];
    }
    let (a, b) = (from.div_ceil(size) * size, to / size * size);
    if a >= b {
        return spans(from, to, rest);
    }
    let mut out = vec![(size, a, b)];
    if from < a {
        out.extend(spans(from, a, rest));
    }
    if b < to {
        out.extend(spans(b, to, rest));
    }
    out
}

/// The spans kept: a minute, an hour, a day.
const SPANS: [u64; 3] = [DAY, HOUR, MINUTE];
const DAY: u64 = 86_400;

/// The spans whose rows fall wholly in one bucket of `bucket` seconds shifted by
/// `offset` (every span when there are no buckets).
fn usable_spans(bucket: Option<u64>, offset: i64) -> Vec<u64> {
    SPANS
        .into_iter()
        .filter(|&s| bucket.is_none_or(|b| b % s == 0 && offset.rem_euclid(s as i64) == 0))
        .collect()
}

/// The counter rows of `[from, to)` passing `filters`:
/// a `UNION ALL` of one indexed range per span, and its values.
fn counter_rows(
    from: u64,
    to: u64,
    sizes: &[u64],
    by_campaign: bool,
    filters: &dyn Fn(&mut Where),
) -> (String, Vec<V>) {
    // With campaigns named, their index reads only their rows.
    let table = if by_campaign {
        "counters INDEXED BY counters_campaign"
    } else {
        "counters"
    };
    let mut branches = Vec::new();
    let mut values = Vec::new();
    let columns = format!("bucket, {DIMENSIONS}, metric, value");
    for (span, start, end) in spans(from, to, sizes) {
        let mut w = Where::default();
        w.push(
            "span = ? AND bucket >= ? AND bucket < ?",
            [
                V::Integer(int(span)),
                V::Integer(int(start)),
                V::Integer(int(end)),
            ],
        );
        filters(&mut w);
        branches.push(format!("SELECT {columns} FROM {table}{}", w.sql()));
        values.extend(w.values);
    }
    (branches.join(" UNION ALL "), values)
}

pub(super) fn metrics(conn: &Connection, q: &MetricsQuery) -> rusqlite::Result<Vec<MetricsRow>> {
    let sizes = usable_spans(q.bucket, q.bucket_offset);
    let by_campaign = q.filters.iter().any(|(d, _)| *d == Dimension::Campaign);
    let filters = |w: &mut Where| {
        w.any_of("metric", q.metrics.iter().map(|m| text(m)));
        for (dim, values) in &q.filters {
            w.any_of(dim.column(), values.iter().map(|v| text(v)));
        }
    };
    let (rows_sql, values) = counter_rows(q.from, q.to, &sizes, by_campaign, &filters);
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
        "SELECT {select_keys}metric, sum(value) FROM ({rows_sql}) GROUP BY {group_by} ORDER BY {group_by}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows: Vec<MetricsRow> = Vec::new();
    let mut query = stmt.query(params_from_iter(values.iter()))?;
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
    let filters = |w: &mut Where| {
        w.push(format!("{column} <> ''"), []);
        if let Some(m) = matching {
            w.push(
                format!("{column} LIKE ? ESCAPE '\\'"),
                [text(&format!("%{}%", like_escaped(m)))],
            );
        }
    };
    // Whole hours are enough to know which values were seen.
    let (rows_sql, values) = counter_rows(
        from / HOUR * HOUR,
        to.div_ceil(HOUR) * HOUR,
        &SPANS,
        false,
        &filters,
    );
    let mut stmt = conn.prepare(&format!(
        "SELECT DISTINCT {column} FROM ({rows_sql}) ORDER BY {column} LIMIT {limit}"
    ))?;
    stmt.query_map(params_from_iter(values.iter()), |r| r.get(0))?
        .collect()
}

/// Keep the last 100 batches of a sink in its log (`batch-status`).
pub(super) fn trim_batch_log(conn: &Connection, sink: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM batch_log WHERE sink = ?1 AND seq <=
           (SELECT seq FROM batch_log WHERE sink = ?1 ORDER BY seq DESC LIMIT 1 OFFSET 100)",
    )?
    .execute(params![sink])?;
    Ok(())
}

pub(super) fn batch_log(
    conn: &Connection,
    sink: &str,
    limit: usize,
) -> rusqlite::Result<Vec<BatchLogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT batch_id, ts, attempts, response_code, failure_code FROM batch_log
         WHERE sink = ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    stmt.query_map(params![sink, limit as i64], |r| {
        Ok(BatchLogEntry {
            batch_id: r.get(0)?,
            ts: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            attempts: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            response_code: r.get(3)?,
            failure_code: r.get(4)?,
        })
    })?
    .collect()
}

pub(super) fn api_webhooks(conn: &Connection) -> rusqlite::Result<Vec<StoredWebhook>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, spec, created, updated FROM api_webhooks ORDER BY created, id",
    )?;
    stmt.query_map([], |r| {
        Ok(StoredWebhook {
            id: r.get(0)?,
            spec: r.get(1)?,
            created: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            updated: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        })
    })?
    .collect()
}

pub(super) fn api_webhook_put(conn: &Connection, hook: &StoredWebhook) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO api_webhooks (id, spec, created, updated) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
    )?
    .execute(params![
        hook.id,
        hook.spec,
        int(hook.created),
        int(hook.updated)
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;
    use crate::store::{Commit, SqliteStore, Store};

    fn event(id: u64, kind: EventType, at: u64, rcpt: &str) -> Event {
        let mut fields = serde_json::Map::new();
        fields.insert("rcpt_to".into(), rcpt.into());
        fields.insert("campaign_id".into(), "c1".into());
        Event {
            event_id: id,
            kind,
            timestamp: at,
            transmission_id: "9".into(),
            fields,
        }
    }

    #[tokio::test]
    async fn counts_by_minute_hour_and_day_once_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("s.db"),
            crate::store::sqlite::Durability::Normal,
        )
        .unwrap();
        let t = 1_800_000_000 - 1_800_000_000 % HOUR;
        let events = vec![
            event(1, EventType::Injection, t + 10, "a@x"),
            event(2, EventType::Injection, t + HOUR + 70, "b@x"),
            event(3, EventType::Open, t + HOUR + 80, "b@x"),
            event(4, EventType::Open, t + HOUR + 150, "b@x"),
        ];
        store
            .commit(Commit {
                events: events.clone(),
                ..Commit::default()
            })
            .await
            .unwrap();
        // The same events again (a retried commit) count nothing.
        store
            .commit(Commit {
                events,
                ..Commit::default()
            })
            .await
            .unwrap();
        let ask = |from: u64, to: u64, bucket: Option<u64>| MetricsQuery {
            from,
            to,
            metrics: vec![
                "count_injected".into(),
                "count_rendered".into(),
                "count_unique_rendered".into(),
            ],
            filters: vec![(Dimension::Campaign, vec!["c1".into()])],
            group: None,
            bucket,
            bucket_offset: 0,
        };
        let sums = |rows: Vec<MetricsRow>| -> Vec<(String, u64)> {
            rows.into_iter().flat_map(|r| r.values).collect()
        };
        let questions = [
            ask(t, t + 2 * HOUR, None),
            ask(t + 60, t + 2 * HOUR, None),
            ask(t, t + HOUR + 120, None),
        ];
        let mut before = Vec::new();
        for q in &questions {
            before.push(sums(store.metrics(q.clone()).await.unwrap()));
        }
        let hours = store
            .metrics(ask(t, t + 2 * HOUR, Some(HOUR)))
            .await
            .unwrap();
        for (q, b) in questions.iter().zip(&before) {
            assert_eq!(&sums(store.metrics(q.clone()).await.unwrap()), b);
        }
        assert_eq!(
            store
                .metrics(ask(t, t + 2 * HOUR, Some(HOUR)))
                .await
                .unwrap(),
            hours
        );
        assert_eq!(
            before[0],
            [
                ("count_injected".to_owned(), 2),
                ("count_rendered".to_owned(), 2),
                ("count_unique_rendered".to_owned(), 1)
            ]
        );
        // From the second minute on: the first injection is not in the range.
        assert_eq!(before[1][0], ("count_injected".to_owned(), 1));
        // Up to the first open of the second hour.
        assert_eq!(before[2][1], ("count_rendered".to_owned(), 1));
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[1].bucket, Some(t + HOUR));
    }

    #[test]
    fn spans_sum_whole_days_and_hours_and_read_minutes_at_the_edges() {
        assert_eq!(spans(0, 7200, &SPANS), [(HOUR, 0, 7200)]);
        assert_eq!(
            spans(600, 7260, &SPANS),
            [
                (HOUR, 3600, 7200),
                (MINUTE, 600, 3600),
                (MINUTE, 7200, 7260)
            ]
        );
        assert_eq!(spans(600, 3000, &SPANS), [(MINUTE, 600, 3000)]);
        assert_eq!(spans(0, 7200, &[MINUTE]), [(MINUTE, 0, 7200)]);
        assert_eq!(
            spans(DAY - 60, 3 * DAY + HOUR, &SPANS),
            [
                (DAY, DAY, 3 * DAY),
                (MINUTE, DAY - 60, DAY),
                (HOUR, 3 * DAY, 3 * DAY + HOUR)
            ]
        );
        assert_eq!(usable_spans(Some(HOUR), 0), [HOUR, MINUTE]);
        assert_eq!(usable_spans(Some(DAY), -4 * 3600), [HOUR, MINUTE]);
        assert_eq!(usable_spans(Some(DAY), 1800), [MINUTE]);
        assert_eq!(usable_spans(None, 0), SPANS);
    }
}
