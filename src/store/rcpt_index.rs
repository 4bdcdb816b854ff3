//! The events' recipient index (the REST API's `recipients=` search), written in sorted
//! runs behind the commits instead of one B-tree entry per event.
//!
//! Why: recipients are random keys. A plain index on `events (rcpt)` puts each new event
//! on a leaf page of its own once the index is larger than a transaction's share of it,
//! and that 4 KiB page is written to the WAL, synced and copied at the checkpoint: about
//! one page per event, for a 40-byte entry. Here an event's entry is appended to
//! `rcpt_recent` (the pages it fills are shared by hundreds of events); every
//! [`FLUSH_AT`] entries they are sorted into a new run of `rcpt_runs`, written in key
//! order; [`FANOUT`] runs of one level are merged into one of the next, a chunk at a
//! time, so no transaction holds the writer for long. Each entry is written about once
//! per level (four levels hold 30 million), always in key order: a page per ~100 entries.
//!
//! A search seeks each run once and scans `rcpt_recent` (at most [`FLUSH_AT`] rows).
//! Every entry is in exactly one place at any commit: a flush or a merge chunk moves
//! entries and deletes them from where they were in one transaction. Entries of pruned
//! events are dropped when their run is merged; until then a search's join to `events`
//! skips them.

use rusqlite::{Connection, OptionalExtension, params};

/// Entries in `rcpt_recent` that make a new run.
pub(super) const FLUSH_AT: i64 = 8192;
/// Runs of one level merged into one of the next.
pub(super) const FANOUT: i64 = 8;
/// Entries of the first source run moved per merge step (the step moves about
/// `FANOUT` times as many, from all its sources).
const MERGE_CHUNK: i64 = 512;

/// Record the recipient of a newly stored event (in the caller's transaction).
pub(super) fn add(conn: &Connection, rcpt: &str, event_id: i64) -> rusqlite::Result<()> {
    if rcpt.is_empty() {
        return Ok(());
    }
    conn.prepare_cached("INSERT INTO rcpt_recent (rcpt, event_id) VALUES (?1, ?2)")?
        .execute(params![rcpt, event_id])?;
    Ok(())
}

/// SQL for "the event is one of these recipients'" (`n` placeholders, bound twice: the
/// runs, then the recent entries); lower-case values.
pub(super) fn matching_sql(n: usize) -> String {
    let marks = vec!["?"; n].join(", ");
    format!(
        "event_id IN (SELECT event_id FROM rcpt_runs \
         WHERE run IN (SELECT run FROM rcpt_run_list) AND rcpt IN ({marks}) \
         UNION ALL SELECT event_id FROM rcpt_recent WHERE rcpt IN ({marks}))"
    )
}

/// What one call of [`maintain`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Work {
    None,
    /// `rcpt_recent` became a run of this many entries.
    Flushed(i64),
    /// A merge step moved this many entries (into run `into`).
    Merged {
        into: i64,
        moved: usize,
    },
}

/// One bounded piece of index upkeep, in the caller's transaction: the recent entries
/// made into a run when there are enough, else one step of the lowest-level merge.
pub(super) fn maintain(conn: &Connection) -> rusqlite::Result<Work> {
    let recent: i64 = conn.query_row(
        "SELECT COALESCE(max(seq) - min(seq) + 1, 0) FROM rcpt_recent",
        [],
        |r| r.get(0),
    )?;
    if recent >= FLUSH_AT {
        return flush(conn);
    }
    match merge_in_progress(conn)?.or(start_merge(conn)?) {
        Some(target) => merge_step(conn, target),
        None => Ok(Work::None),
    }
}

fn next_run(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(max(run), 0) + 1 FROM rcpt_run_list",
        [],
        |r| r.get(0),
    )
}

/// All of `rcpt_recent` into a new run of level 0.
pub(super) fn flush(conn: &Connection) -> rusqlite::Result<Work> {
    let run = next_run(conn)?;
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO rcpt_runs (run, rcpt, event_id)
             SELECT ?1, rcpt, event_id FROM rcpt_recent ORDER BY rcpt, event_id",
        )?
        .execute(params![run])?;
    if n > 0 {
        conn.prepare_cached(
            "INSERT INTO rcpt_run_list (run, level, max_event)
             SELECT ?1, 0, max(event_id) FROM rcpt_recent",
        )?
        .execute(params![run])?;
    }
    conn.prepare_cached("DELETE FROM rcpt_recent")?
        .execute([])?;
    if n == 0 {
        return Ok(Work::None);
    }
    Ok(Work::Flushed(n as i64))
}

/// The target of the lowest-level merge under way.
fn merge_in_progress(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT run FROM rcpt_run_list WHERE done_to IS NOT NULL ORDER BY level, run LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// A new merge of the oldest [`FANOUT`] ready runs of the lowest level that has that
/// many; its target run (empty so far).
fn start_merge(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let level: Option<i64> = conn
        .query_row(
            "SELECT level FROM rcpt_run_list WHERE into_run IS NULL AND done_to IS NULL
             GROUP BY level HAVING count(*) >= ?1 ORDER BY level LIMIT 1",
            params![FANOUT],
            |r| r.get(0),
        )
        .optional()?;
    let Some(level) = level else {
        return Ok(None);
    };
    let target = next_run(conn)?;
    conn.prepare_cached(
        "UPDATE rcpt_run_list SET into_run = ?1 WHERE run IN
           (SELECT run FROM rcpt_run_list WHERE level = ?2 AND into_run IS NULL
              AND done_to IS NULL ORDER BY run LIMIT ?3)",
    )?
    .execute(params![target, level, FANOUT])?;
    conn.prepare_cached(
        "INSERT INTO rcpt_run_list (run, level, max_event, done_to)
         SELECT ?1, ?2 + 1, max(max_event), '' FROM rcpt_run_list WHERE into_run = ?1",
    )?
    .execute(params![target, level])?;
    Ok(Some(target))
}

/// Move the sources' entries of the next recipients (after `done_to`, up to a bound a
/// chunk into the first source) into `target`; the last step ends the merge.
fn merge_step(conn: &Connection, target: i64) -> rusqlite::Result<Work> {
    let done: String = conn.query_row(
        "SELECT done_to FROM rcpt_run_list WHERE run = ?1",
        params![target],
        |r| r.get(0),
    )?;
    let first: Option<i64> = conn.query_row(
        "SELECT min(run) FROM rcpt_run_list WHERE into_run = ?1",
        params![target],
        |r| r.get(0),
    )?;
    let bound: Option<String> = conn
        .prepare_cached(
            "SELECT rcpt FROM rcpt_runs WHERE run = ?1 AND rcpt > ?2
             ORDER BY rcpt LIMIT 1 OFFSET ?3",
        )?
        .query_row(params![first.unwrap_or(0), done, MERGE_CHUNK], |r| r.get(0))
        .optional()?;
    // Without a bound, the rest. Each statement in two forms, so that both ends of the
    // range are seeks in every source run.
    let sources = "run IN (SELECT run FROM rcpt_run_list WHERE into_run = ?1) AND rcpt > ?2";
    let upto = if bound.is_some() {
        " AND rcpt <= ?3"
    } else {
        ""
    };
    let range = params![target, done, bound.as_deref().unwrap_or_default()];
    let moved = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO rcpt_runs (run, rcpt, event_id)
             SELECT ?1, rcpt, event_id FROM rcpt_runs r WHERE {sources}{upto}
               AND EXISTS (SELECT 1 FROM events e WHERE e.event_id = r.event_id)
             ORDER BY rcpt, event_id"
        ))?
        .execute(&range[..if bound.is_some() { 3 } else { 2 }])?;
    conn.prepare_cached(&format!("DELETE FROM rcpt_runs WHERE {sources}{upto}"))?
        .execute(&range[..if bound.is_some() { 3 } else { 2 }])?;
    match bound {
        Some(b) => {
            conn.prepare_cached("UPDATE rcpt_run_list SET done_to = ?2 WHERE run = ?1")?
                .execute(params![target, b])?;
        }
        None => {
            conn.prepare_cached("DELETE FROM rcpt_run_list WHERE into_run = ?1")?
                .execute(params![target])?;
            conn.prepare_cached("UPDATE rcpt_run_list SET done_to = NULL WHERE run = ?1")?
                .execute(params![target])?;
        }
    }
    Ok(Work::Merged {
        into: target,
        moved,
    })
}

/// Drop the runs whose every event is pruned (none at or above the oldest stored
/// event's id): a run of the top level may wait long for [`FANOUT`] others to merge
/// with, and would keep its entries after its events are gone.
pub(super) fn drop_pruned(conn: &Connection) -> rusqlite::Result<usize> {
    let oldest: Option<i64> =
        conn.query_row("SELECT min(event_id) FROM events", [], |r| r.get(0))?;
    let runs: Vec<i64> = conn
        .prepare_cached(
            "SELECT run FROM rcpt_run_list WHERE max_event < ?1
               AND into_run IS NULL AND done_to IS NULL",
        )?
        .query_map(params![oldest.unwrap_or(i64::MAX)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for run in &runs {
        conn.prepare_cached("DELETE FROM rcpt_runs WHERE run = ?1")?
            .execute(params![run])?;
        conn.prepare_cached("DELETE FROM rcpt_run_list WHERE run = ?1")?
            .execute(params![run])?;
    }
    Ok(runs.len())
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::MIGRATIONS;
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for sql in MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        conn
    }

    fn event(conn: &Connection, id: i64, rcpt: &str) {
        conn.execute(
            "INSERT INTO events (event_id, created, type, item, rcpt) VALUES (?1, 0, 'delivery', '{}', ?2)",
            params![id, rcpt],
        )
        .unwrap();
        add(conn, rcpt, id).unwrap();
    }

    fn search(conn: &Connection, rcpts: &[&str]) -> Vec<i64> {
        let sql = format!(
            "SELECT event_id FROM events WHERE {} ORDER BY event_id",
            matching_sql(rcpts.len())
        );
        let values: Vec<&str> = rcpts.iter().chain(rcpts).copied().collect();
        let mut stmt = conn.prepare(&sql).unwrap();
        stmt.query_map(rusqlite::params_from_iter(values), |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Recipients spread over the key space, some with many events.
    fn rcpt(i: i64) -> String {
        format!("u{}@example.org", (i * 7919) % 1000)
    }

    /// Whatever the upkeep has done, at any step, a search finds exactly the events of
    /// the recipients asked for: flushed, merging, merged and recent entries alike.
    #[test]
    fn every_event_is_found_at_every_step_of_the_upkeep() {
        let conn = db();
        let total = FLUSH_AT * (FANOUT + 2) + 100;
        let mut steps = (0, 0);
        for i in 1..=total {
            event(&conn, i, &rcpt(i));
            if i % 500 == 0 {
                match maintain(&conn).unwrap() {
                    Work::Flushed(_) => steps.0 += 1,
                    Work::Merged { .. } => steps.1 += 1,
                    Work::None => {}
                }
                let want: Vec<i64> = (1..=i).filter(|j| rcpt(*j) == rcpt(7)).collect();
                assert_eq!(search(&conn, &[&rcpt(7)]), want, "after event {i}");
            }
        }
        while maintain(&conn).unwrap() != Work::None {}
        assert!(steps.0 >= FANOUT && steps.1 > 1, "{steps:?}");
        // One merged run of level 1 and the runs flushed after it.
        assert_eq!(
            count(&conn, "SELECT count(*) FROM rcpt_run_list WHERE level = 1"),
            1
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM rcpt_run_list WHERE into_run IS NOT NULL OR done_to IS NOT NULL"
            ),
            0
        );
        assert_eq!(
            count(&conn, "SELECT count(*) FROM rcpt_runs")
                + count(&conn, "SELECT count(*) FROM rcpt_recent"),
            total
        );
        let two = [rcpt(7), rcpt(8)];
        let want: Vec<i64> = (1..=total).filter(|j| two.contains(&rcpt(*j))).collect();
        assert_eq!(search(&conn, &[&two[0], &two[1]]), want);
    }

    /// A merge drops the entries of events pruned since; the search skips them before.
    #[test]
    fn a_merge_drops_the_entries_of_pruned_events() {
        let conn = db();
        for i in 1..=FLUSH_AT * FANOUT {
            event(&conn, i, &rcpt(i));
            if i % FLUSH_AT == 0 {
                assert!(matches!(maintain(&conn).unwrap(), Work::Flushed(_)));
            }
        }
        conn.execute("DELETE FROM events WHERE event_id <= ?1", params![FLUSH_AT])
            .unwrap();
        let left: Vec<i64> = (FLUSH_AT + 1..=FLUSH_AT * FANOUT)
            .filter(|j| rcpt(*j) == rcpt(3))
            .collect();
        assert_eq!(search(&conn, &[&rcpt(3)]), left);
        while maintain(&conn).unwrap() != Work::None {}
        assert_eq!(search(&conn, &[&rcpt(3)]), left);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM rcpt_runs"),
            FLUSH_AT * (FANOUT - 1)
        );
    }

    /// Runs whose events are all pruned go at the prune; a run with one event left
    /// stays.
    #[test]
    fn the_prune_drops_the_runs_whose_events_are_all_gone() {
        let conn = db();
        for i in 1..=FLUSH_AT * 3 {
            event(&conn, i, &rcpt(i));
            if i % FLUSH_AT == 0 {
                maintain(&conn).unwrap();
            }
        }
        let runs = || count(&conn, "SELECT count(*) FROM rcpt_run_list");
        assert_eq!(runs(), 3);
        conn.execute("DELETE FROM events WHERE event_id < ?1", params![FLUSH_AT])
            .unwrap();
        assert_eq!(drop_pruned(&conn).unwrap(), 0);
        conn.execute(
            "DELETE FROM events WHERE event_id <= ?1",
            params![FLUSH_AT * 2],
        )
        .unwrap();
        assert_eq!(drop_pruned(&conn).unwrap(), 2);
        assert_eq!(runs(), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM rcpt_runs"), FLUSH_AT);
        conn.execute("DELETE FROM events", []).unwrap();
        assert_eq!(drop_pruned(&conn).unwrap(), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM rcpt_runs"), 0);
    }

    /// A store written before the runs existed: its indexed events become one run, at
    /// the level of its size, and are found.
    #[test]
    fn the_migration_makes_the_events_indexed_so_far_one_run() {
        let conn = Connection::open_in_memory().unwrap();
        let (last, before) = MIGRATIONS.split_last().unwrap();
        for sql in before {
            conn.execute_batch(sql).unwrap();
        }
        for i in 1..=70_000 {
            conn.execute(
                "INSERT INTO events (event_id, created, type, item, rcpt) VALUES (?1, 0, 'delivery', '{}', ?2)",
                params![i, (i % 5 > 0).then(|| rcpt(i))],
            )
            .unwrap();
        }
        conn.execute_batch(last).unwrap();
        assert_eq!(
            count(&conn, "SELECT count(*) FROM rcpt_runs WHERE run = 1"),
            56_000
        );
        assert_eq!(
            count(&conn, "SELECT level FROM rcpt_run_list WHERE run = 1"),
            0
        );
        let want: Vec<i64> = (1..=70_000)
            .filter(|j| j % 5 > 0 && rcpt(*j) == rcpt(9))
            .collect();
        assert_eq!(search(&conn, &[&rcpt(9)]), want);
        event(&conn, 70_001, &rcpt(9));
        assert_eq!(search(&conn, &[&rcpt(9)]).last(), Some(&70_001));
    }

    /// The search seeks the runs by their key, not a scan of every entry.
    #[test]
    fn a_search_seeks_each_run() {
        let conn = db();
        let sql = format!("SELECT event_id FROM events WHERE {}", matching_sql(2));
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(["a", "b", "a", "b"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("rcpt_runs USING PRIMARY KEY (run=? AND rcpt=?)")),
            "{plan:#?}"
        );
        assert!(
            plan.iter()
                .any(|p| p.contains("events USING INTEGER PRIMARY KEY")),
            "{plan:#?}"
        );
    }
}
