//! The store's journal: what a message's commit adds to the write-mostly tables (its
//! events with their three indexes, the webhook outboxes, the queue-id index, its
//! transmission, the counters, the shipping queue) is committed as one row appended to
//! `journal`, and those tables are brought up to date behind it, many commits in one
//! transaction ([`Journal::apply`]).
//!
//! Why: a commit of one message touched about ten B-trees, 40-odd WAL pages, for about
//! 5 KB of data; one append touches one B-tree and a few pages, and the tables written
//! for hundreds of messages at once share their pages. Durability is the journal's: a
//! row is committed (and fsynced, with `full`) before the caller hears "committed", and
//! applying it deletes it in the same transaction, so a restart applies exactly what was
//! not applied yet.
//!
//! What stays direct, written in the commit's own transaction: the suppression list,
//! the ledger, cursors, the MTA log's pending attempts and queued senders (small,
//! read back at once). Reads of the journal's tables wait until it is applied
//! ([`super::SqliteStore`]'s `settle`), so nothing reads a table behind its journal.

use super::sqlite::write_commit;
use super::{Commit, SinkSpec};
use crate::events::{Event, EventType, Transmission};
use rusqlite::{Connection, params};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Commits kept unapplied at most before they are applied.
const APPLY_AT: usize = 256;
/// Commits applied in one transaction at most while writes wait: an apply holds the
/// writer (commits wait behind it) for about 40 us a message.
pub(super) const APPLY_CHUNK: usize = 64;
/// How long the oldest unapplied commit waits at most: webhooks and other processes
/// (the CLI) see the tables this far behind.
const APPLY_AFTER: Duration = Duration::from_millis(50);
/// After a failed apply, the next try waits this long (unless a reader needs it).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Unapplied commits held in memory at most: beyond, commits fail (451) until the
/// journal is applied again, so a failing disk costs bounded memory.
pub(super) const MAX_PENDING: usize = 20_000;

/// How far the journal is applied, shared with the readers.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Commits journaled so far (this process).
    pub journaled: AtomicU64,
    /// Of them, applied (or set aside as unappliable; they stay in the journal).
    pub applied: AtomicU64,
}

impl Progress {
    pub fn behind(&self) -> bool {
        self.applied.load(Relaxed) < self.journaled.load(Relaxed)
    }
}

/// One journaled commit not yet applied.
pub(super) struct Pending {
    /// Its row in `journal`.
    pub seq: i64,
    /// Only its journaled part: events, transmission, `index_only`.
    pub commit: Commit,
    /// Each event's webhook item.
    pub items: Vec<String>,
    /// The transmission's stored form (serialised once, for the row and the table).
    pub facts: Option<String>,
    /// Each event's sinks, as configured when it was committed.
    pub outbox: Vec<Vec<String>>,
    pub counting: bool,
    pub shipping: bool,
}

/// Split `commit` into what is written at once and what goes through the journal
/// (`None` when it has no events, transmission or index to write). The caller writes a
/// commit that adds retries to `queued` rows whole, after the journal is applied: those
/// rows may be in it.
pub(super) fn split(mut commit: Commit) -> (Commit, Option<Commit>) {
    if commit.events.is_empty() && commit.transmission.is_none() {
        return (commit, None);
    }
    let journaled = Commit {
        events: std::mem::take(&mut commit.events),
        transmission: commit.transmission.take(),
        index_only: std::mem::take(&mut commit.index_only),
        ..Commit::default()
    };
    (commit, Some(journaled))
}

/// The sinks each event is queued for.
pub(super) fn outbox_of(events: &[Event], sinks: &[SinkSpec]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            sinks
                .iter()
                .filter(|s| s.wants(e.kind))
                .map(|s| s.name.clone())
                .collect()
        })
        .collect()
}

/// The journal row of a commit: JSON, with the items embedded as they are.
pub(super) fn encode(p: &Pending) -> String {
    let facts = p.facts.as_deref();
    let mut s = String::with_capacity(
        256 + facts.map_or(0, str::len) + p.items.iter().map(|i| i.len() + 96).sum::<usize>(),
    );
    // Writing into a String cannot fail.
    let _ = write!(
        s,
        r#"{{"v":1,"x":{},"c":{},"p":{},"t":{},"e":["#,
        p.commit.index_only,
        p.counting,
        p.shipping,
        facts.unwrap_or("null")
    );
    for (i, (e, item)) in p.commit.events.iter().zip(&p.items).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let outbox = p.outbox.get(i).map(Vec::as_slice).unwrap_or_default();
        let _ = write!(
            s,
            r#"{{"id":{},"ts":{},"k":"{}","tid":{},"o":{},"i":{item}}}"#,
            e.event_id,
            e.timestamp,
            e.kind.as_str(),
            Value::from(e.transmission_id.as_str()),
            Value::from(outbox)
        );
    }
    s.push_str("]}");
    s
}

/// A journal row read back (at start-up, after a crash).
pub(super) fn decode(seq: i64, body: &str) -> Option<Pending> {
    let v: Value = serde_json::from_str(body).ok()?;
    if v.get("v")?.as_u64()? != 1 {
        return None;
    }
    let flag = |k: &str| v.get(k).and_then(Value::as_bool);
    let (transmission, facts) = match v.get("t")? {
        Value::Null => (None, None),
        t => (
            Some(serde_json::from_value::<Transmission>(t.clone()).ok()?),
            Some(t.to_string()),
        ),
    };
    let (mut events, mut items, mut outbox) = (Vec::new(), Vec::new(), Vec::new());
    for e in v.get("e")?.as_array()? {
        let kind = EventType::parse(e.get("k")?.as_str()?)?;
        let item = e.get("i")?;
        let fields = item.get("msys")?.get(kind.category())?.as_object()?.clone();
        events.push(Event {
            event_id: e.get("id")?.as_u64()?,
            kind,
            timestamp: e.get("ts")?.as_u64()?,
            transmission_id: e.get("tid")?.as_str()?.to_owned(),
            fields,
        });
        items.push(item.to_string());
        outbox.push(
            e.get("o")?
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
        );
    }
    Some(Pending {
        seq,
        commit: Commit {
            events,
            transmission,
            index_only: flag("x")?,
            ..Commit::default()
        },
        items,
        facts,
        outbox,
        counting: flag("c")?,
        shipping: flag("p")?,
    })
}

/// Append `p`, encoded as `body`, to the journal (inside the caller's transaction);
/// its `seq` is set.
pub(super) fn append(conn: &Connection, p: &mut Pending, body: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO journal (body) VALUES (?1)")?
        .execute(params![body])?;
    p.seq = conn.last_insert_rowid();
    Ok(())
}

/// Write one journaled commit into the tables and delete its row (inside the caller's
/// transaction).
fn apply_one(conn: &Connection, p: &Pending) -> rusqlite::Result<()> {
    use super::sqlite_query::{JOB_COUNTS, keep_job_counts};
    JOB_COUNTS.with(|c| c.borrow_mut().clear());
    write_commit(
        conn,
        &p.outbox,
        &p.commit,
        &p.items,
        p.facts.as_deref(),
        p.counting,
    )?;
    if p.shipping {
        super::ship::queue_commit(conn, &p.commit)?;
    }
    conn.prepare_cached("DELETE FROM journal WHERE seq = ?1")?
        .execute(params![p.seq])?;
    keep_job_counts();
    Ok(())
}

/// The writer's side: the commits journaled and not applied yet.
pub(super) struct Journal {
    pending: Vec<Pending>,
    /// When the oldest of `pending` was journaled.
    oldest: Option<Instant>,
    /// No automatic apply before this (after a failure).
    retry_at: Option<Instant>,
    progress: Arc<Progress>,
}

impl Journal {
    /// Read back what a previous run journaled and did not apply.
    pub fn recover(
        conn: &Connection,
        path: &Path,
        progress: Arc<Progress>,
    ) -> rusqlite::Result<Journal> {
        let mut stmt = conn.prepare("SELECT seq, body FROM journal ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut pending = Vec::new();
        for row in rows {
            let (seq, body) = row?;
            match decode(seq, &body) {
                Some(p) => pending.push(p),
                // Left where it is, for a later version or a person to look at.
                None => {
                    tracing::error!(store = %path.display(), seq, "journal row cannot be read: left in the journal")
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(store = %path.display(), commits = pending.len(), "applying the journal left by the last run");
        }
        progress.journaled.fetch_add(pending.len() as u64, Relaxed);
        Ok(Journal {
            oldest: (!pending.is_empty()).then(Instant::now),
            pending,
            retry_at: None,
            progress,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn full(&self) -> bool {
        self.pending.len() >= MAX_PENDING
    }

    /// Commits of a group that committed: their journal rows are durable now.
    pub fn journaled(&mut self, committed: Vec<Pending>) {
        if committed.is_empty() {
            return;
        }
        self.oldest.get_or_insert_with(Instant::now);
        self.progress
            .journaled
            .fetch_add(committed.len() as u64, Relaxed);
        self.pending.extend(committed);
    }

    /// How long the writer may wait for the next write before applying (`None`: as
    /// long as it likes).
    pub fn wait(&self) -> Option<Duration> {
        let oldest = self.oldest?;
        let due = (oldest + APPLY_AFTER).max(self.retry_at.unwrap_or(oldest));
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// Enough is waiting, or the oldest waited long enough.
    pub fn due(&self) -> bool {
        !self.pending.is_empty()
            && self.retry_at.is_none_or(|t| Instant::now() >= t)
            && (self.pending.len() >= APPLY_AT || self.wait() == Some(Duration::ZERO))
    }

    /// Apply the oldest `limit` pending commits in one transaction. When that fails,
    /// each is tried alone: one that fails while others succeed is set aside (it stays
    /// in the journal, logged, for the next start); when all fail (the disk), they stay
    /// pending and the error is returned. `Ok(true)`: something was applied.
    pub fn apply(
        &mut self,
        conn: &Connection,
        path: &Path,
        limit: usize,
    ) -> rusqlite::Result<bool> {
        let n = limit.min(self.pending.len());
        if n == 0 {
            return Ok(false);
        }
        crate::failpoint::hit("store_apply");
        if let Err(first) = self.apply_first(conn, path, n, false) {
            tracing::warn!(store = %path.display(), "applying the journal: {first}: trying each commit alone");
            if let Err(e) = self.apply_first(conn, path, n, true) {
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                return Err(e);
            }
        }
        self.pending.drain(..n);
        // What is left is as old as what was applied: still due.
        if self.pending.is_empty() {
            self.oldest = None;
        }
        self.retry_at = None;
        self.progress.applied.fetch_add(n as u64, Relaxed);
        Ok(true)
    }

    /// One transaction; `isolated`: each commit in a savepoint, the ones that fail
    /// set aside (an error only when none applied).
    fn apply_first(
        &mut self,
        conn: &Connection,
        path: &Path,
        n: usize,
        isolated: bool,
    ) -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        super::sqlite_query::GROUP_COUNTS.with(|c| c.borrow_mut().clear());
        let savepoint = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        let mut failed: Vec<(usize, rusqlite::Error)> = Vec::new();
        for (i, p) in self.pending[..n].iter().enumerate() {
            if !isolated {
                if let Err(e) = apply_one(conn, p) {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
                continue;
            }
            savepoint("SAVEPOINT apply")?;
            match apply_one(conn, p) {
                Ok(()) => savepoint("RELEASE apply").map(|_| ())?,
                Err(e) => {
                    let _ = savepoint("ROLLBACK TO apply");
                    let _ = savepoint("RELEASE apply");
                    failed.push((i, e));
                }
            }
        }
        if isolated && failed.len() == n {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(failed
                .pop()
                .map_or(rusqlite::Error::InvalidQuery, |(_, e)| e));
        }
        super::sqlite::write_counts(conn, path);
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        for (i, e) in failed {
            tracing::error!(store = %path.display(), seq = self.pending[i].seq, "a journaled commit cannot be applied: {e}: left in the journal for the next start");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Recipient, Stamp};

    fn pending() -> Pending {
        let mut t = Transmission {
            transmission_id: "7".into(),
            campaign_id: Some("c\"1".into()),
            msg_from: "b@example.net".into(),
            injection_ms: 1_796_135_107_000,
            ..Transmission::default()
        };
        let r = Recipient {
            raw: "To@Example.org".into(),
            rcpt_type: Some("cc"),
            message_id: "7".into(),
            queue_id: Some("4Q".into()),
            msg_size: Some(3000),
        };
        t.add_recipient(&r);
        let e = crate::events::injection(
            Stamp {
                event_id: 42,
                timestamp: 1_796_135_107,
            },
            &t,
            &r,
        );
        Pending {
            seq: 0,
            items: vec![e.to_json()],
            facts: Some(t.to_json()),
            outbox: vec![vec!["hook".into(), "api:\u{e9}".into()]],
            commit: Commit {
                events: vec![e],
                transmission: Some(t),
                ..Commit::default()
            },
            counting: true,
            shipping: false,
        }
    }

    #[test]
    fn a_journal_row_reads_back_as_written() {
        let p = pending();
        let back = decode(9, &encode(&p)).expect("decodes");
        assert_eq!(back.seq, 9);
        assert_eq!(back.commit.events, p.commit.events);
        assert_eq!(back.commit.transmission, p.commit.transmission);
        assert_eq!(back.items, p.items);
        assert_eq!(back.facts, p.facts);
        assert_eq!(back.outbox, p.outbox);
        assert_eq!(
            (back.counting, back.shipping, back.commit.index_only),
            (true, false, false)
        );
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn a_commit_is_read_back_at_once_and_the_journal_emptied() {
        use crate::store::{SqliteStore, Store, sqlite::Durability};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.commit(pending().commit).await.unwrap();
        // Within the 50 ms the journal may wait: the read makes the writer apply it.
        assert!(store.transmission("7").await.unwrap().is_some());
        assert_eq!(store.queued(&["4Q".to_owned()]).await.unwrap().len(), 1);
        store.close();
        let conn = Connection::open(&path).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM journal"), 0);
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 1);
    }

    #[tokio::test]
    async fn what_the_journal_holds_is_applied_at_the_next_open() {
        use crate::store::{SqliteStore, Store, sqlite::Durability};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path, Durability::Normal).unwrap());
        // As a crash leaves it: the row committed, the tables not written.
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO journal (body) VALUES (?1)",
            [encode(&pending())],
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        assert!(store.transmission("7").await.unwrap().is_some());
        store.close();
        let conn = Connection::open(&path).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM journal"), 0);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM events WHERE event_id = 42"),
            1
        );
        // Each sink it was committed for has it in its outbox.
        assert_eq!(
            count(&conn, "SELECT count(*) FROM outbox WHERE event_id = 42"),
            2
        );
    }

    #[test]
    fn a_row_of_another_version_or_garbage_is_not_read() {
        assert!(decode(1, "{").is_none());
        assert!(decode(1, &encode(&pending()).replace(r#""v":1"#, r#""v":2"#)).is_none());
    }

    #[test]
    fn a_commit_splits_into_direct_and_journaled_parts() {
        let mut c = pending().commit;
        c.cursor = Some(("maillog".into(), "1".into()));
        let (direct, journaled) = split(c);
        assert_eq!(direct.cursor.as_ref().map(|c| c.1.as_str()), Some("1"));
        assert!(direct.events.is_empty() && direct.transmission.is_none());
        let journaled = journaled.expect("journaled part");
        assert_eq!(journaled.events.len(), 1);
        assert!(journaled.transmission.is_some() && journaled.cursor.is_none());
        let (direct, journaled) = split(Commit {
            cursor: Some(("x".into(), "y".into())),
            ..Commit::default()
        });
        assert!(journaled.is_none() && direct.cursor.is_some());
    }
}
