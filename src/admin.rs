//! The admin verbs of the `msys-milter` command (`suppression`, `events`, `webhooks`):
//! they work on the configured store, also while the daemon runs (SQLite in WAL mode
//! lets both read and write).

use crate::events::EventType;
use crate::ids::unix_secs as now;
use crate::store::{Account, Store, SuppressionEntry, SuppressionFilter, SuppressionType};
use crate::suppression::{CsvError, SOURCE_MANUAL, read_csv, write_csv};
use std::io::Write;
use std::time::Duration;

/// Entries written per transaction by an import.
const IMPORT_CHUNK: usize = 20_000;

/// `suppression list`: one entry a line, tab-separated, with a header.
pub async fn suppression_list(
    store: &dyn Store,
    filter: SuppressionFilter,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let entries = store.suppression_list(filter).await?;
    writeln!(
        out,
        "recipient\ttype\tsubaccount\tsource\tdescription\tupdated"
    )?;
    for e in &entries {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.recipient,
            e.kind.as_str(),
            e.account.unwrap_or(0),
            e.source,
            e.description.replace(['\t', '\n', '\r'], " "),
            crate::events::iso8601(e.updated * 1000)
        )?;
    }
    Ok(entries.len())
}

/// `suppression add`.
pub async fn suppression_add(
    store: &dyn Store,
    recipients: &[String],
    kind: SuppressionType,
    account: Account,
    description: &str,
) -> anyhow::Result<usize> {
    let now = now();
    let mut entries = Vec::new();
    for r in recipients {
        anyhow::ensure!(
            crate::api::recipients::is_valid_mailbox(r.trim()),
            "`{r}` is not an email address"
        );
        entries.push(SuppressionEntry::new(
            r,
            account,
            kind,
            SOURCE_MANUAL,
            description,
            now,
        ));
    }
    let n = entries.len();
    store
        .commit(crate::store::Commit {
            suppress: entries,
            ..Default::default()
        })
        .await?;
    Ok(n)
}

/// `suppression import FILE`: SparkPost's CSV, committed in chunks; progress on `bar`.
/// The file is parsed on a blocking thread while the previous chunk is committed.
pub async fn suppression_import(
    store: &dyn Store,
    input: impl std::io::Read + Send + 'static,
    kind: Option<SuppressionType>,
    account: Account,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<SuppressionEntry>>(2);
    let now = now();
    let parse = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
        let result = read_csv(input, kind, account, now, |e| {
            chunk.push(e);
            if chunk.len() == IMPORT_CHUNK {
                tx.blocking_send(std::mem::take(&mut chunk))
                    .map_err(|_| CsvError {
                        line: 0,
                        message: "import stopped".into(),
                    })?;
            }
            Ok(())
        });
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        result
    });
    let mut committed = 0u64;
    while let Some(chunk) = rx.recv().await {
        let n = chunk.len() as u64;
        store
            .commit(crate::store::Commit {
                suppress: chunk,
                ..Default::default()
            })
            .await?;
        committed += n;
        bar.set_position(committed);
    }
    let parsed = parse
        .await?
        .map_err(|e| anyhow::anyhow!("{e} (the {committed} entries before it were imported)"))?;
    anyhow::ensure!(
        parsed == committed,
        "imported {committed} of {parsed} entries"
    );
    Ok(committed)
}

/// `suppression export`: SparkPost's CSV on `out`.
pub async fn suppression_export(
    store: &dyn Store,
    filter: SuppressionFilter,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let entries = store.suppression_list(filter).await?;
    let n = entries.len();
    write_csv(out, entries)?;
    Ok(n)
}

/// `events tail`: the last `lines` events (of `kind`), then with `follow` every new one,
/// as JSON lines.
pub async fn events_tail(
    store: &dyn Store,
    kind: Option<EventType>,
    lines: usize,
    follow: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Walk to the end, keeping the last `lines` matches.
    let mut last = std::collections::VecDeque::with_capacity(lines);
    let mut after = 0;
    loop {
        let page = store.events_after(after, 10_000).await?;
        let Some((id, _, _)) = page.last() else {
            break;
        };
        after = *id;
        for (_, k, item) in page {
            if kind.is_none_or(|want| want == k) {
                if last.len() == lines {
                    last.pop_front();
                }
                if lines > 0 {
                    last.push_back(item);
                }
            }
        }
    }
    for item in last {
        writeln!(out, "{item}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (id, k, item) in store.events_after(after, 10_000).await? {
            after = id;
            if kind.is_none_or(|want| want == k) {
                writeln!(out, "{item}")?;
            }
        }
        out.flush()?;
    }
}

/// A point in time for `--since`: Unix seconds, `YYYY-MM-DD[THH:MM[:SS]][Z]` (UTC), or
/// an age such as `90m`, `2h`, `3d`.
pub fn parse_time(text: &str, now: u64) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs);
    }
    if let Some((n, unit)) = t
        .char_indices()
        .last()
        .map(|(i, c)| (&t[..i], c))
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        let n: u64 = n.parse().map_err(|_| format!("bad age `{t}`"))?;
        let unit = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("bad unit in `{t}`: use s, m, h or d")),
        };
        return Ok(now.saturating_sub(n * unit));
    }
    parse_iso(t).ok_or_else(|| {
        format!("`{t}` is no time: give Unix seconds, 2026-12-01T14:00:00Z, or an age like 2h")
    })
}

fn parse_iso(t: &str) -> Option<u64> {
    let t = t.trim_end_matches('Z');
    let (date, time) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min) = (hms.next()??, hms.next().flatten().unwrap_or(0));
    let s = hms.next().flatten().unwrap_or(0);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + s).ok()
}

/// `webhooks status`: per sink, its backlog and failures.
pub async fn webhooks_status(store: &dyn Store, out: &mut dyn Write) -> anyhow::Result<()> {
    let status = store.sink_status().await?;
    if status.is_empty() {
        writeln!(out, "no webhooks and no JSONL file configured")?;
    }
    let when = |t: Option<u64>| t.map_or("-".to_owned(), |t| crate::events::iso8601(t * 1000));
    for s in status {
        writeln!(out, "{}", s.sink)?;
        writeln!(out, "  pending events:  {}", s.pending)?;
        writeln!(
            out,
            "  failed:          {} batches, {} events (kept; `msys-milter events replay` sends them again)",
            s.failed_batches, s.failed_events
        )?;
        writeln!(out, "  failing since:   {}", when(s.failing_since))?;
        writeln!(out, "  next attempt:    {}", when(s.next_attempt))?;
        writeln!(
            out,
            "  last error:      {}",
            s.last_error.as_deref().unwrap_or("-")
        )?;
    }
    let hosts = store.hosts().await?;
    if !hosts.is_empty() {
        writeln!(
            out,
            "hosts of the group (what each has not shipped yet, at its last heartbeat)"
        )?;
    }
    for h in hosts {
        writeln!(
            out,
            "  node {} {}: {} waiting to be shipped, heartbeat {} s ago",
            h.node_id, h.host, h.backlog, h.heartbeat_age
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = 1_796_135_107;
        assert_eq!(parse_time("1496154610", now), Ok(1_496_154_610));
        assert_eq!(parse_time("2h", now), Ok(now - 7200));
        assert_eq!(parse_time("3d", now), Ok(now - 3 * 86_400));
        assert_eq!(parse_time("2026-12-01T14:25:07Z", now), Ok(1_796_135_107));
        assert_eq!(parse_time("2026-12-01", now), Ok(1_796_083_200));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("5w", now).unwrap_err().contains("unit"));
    }
}
