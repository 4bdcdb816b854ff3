//! The embedded store: SQLite (rusqlite, bundled) in WAL mode. One writer thread takes
//! every write from a channel and commits whatever has queued up in one transaction
//! (group commit: one fsync for many messages); a write that fails does not take the
//! others down (the group is written again, each write in a savepoint). Reads use
//! connections of their own.

use super::journal::{self, Journal, Pending, Progress};
use super::{
    Account, Batch, Commit, Queued, SinkSpec, SinkStatus, Store, StoreError, StoreFuture,
    StoreResult, SuppressionEntry, SuppressionFilter, SuppressionType,
};
use crate::events::{EventType, Transmission};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The schema, one entry per version; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE events (
    event_id INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    type TEXT NOT NULL,
    transmission_id TEXT,
    item TEXT NOT NULL
);
CREATE INDEX events_created ON events (created);
CREATE TABLE transmissions (
    transmission_id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    facts TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX transmissions_created ON transmissions (created);
CREATE TABLE suppression (
    recipient TEXT NOT NULL,
    account INTEGER NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    description TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (recipient, account, type)
) WITHOUT ROWID;
CREATE TABLE outbox (
    sink TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    batch_id TEXT,
    PRIMARY KEY (sink, event_id)
) WITHOUT ROWID;
CREATE INDEX outbox_batch ON outbox (sink, batch_id);
CREATE INDEX outbox_event ON outbox (event_id);
CREATE TABLE batches (
    sink TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failure INTEGER,
    next_attempt INTEGER,
    last_error TEXT,
    PRIMARY KEY (sink, batch_id)
) WITHOUT ROWID;
",
    r"
CREATE TABLE queued (
    queue_id TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    raw_rcpt TEXT NOT NULL,
    transmission_id TEXT NOT NULL,
    message_id TEXT,
    rcpt_type TEXT,
    msg_size INTEGER,
    created INTEGER NOT NULL,
    PRIMARY KEY (queue_id, rcpt)
) WITHOUT ROWID;
CREATE INDEX queued_created ON queued (created);
CREATE TABLE cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
",
    // Deferrals per recipient, so `num_retries` survives a restart.
    r"
ALTER TABLE queued ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
",
    // What waits to be shipped to PostgreSQL (several hosts; see store/ship.rs): kept
    // only while `[store] postgres` is set.
    r"
CREATE TABLE ship_events (event_id INTEGER PRIMARY KEY);
CREATE TABLE ship_transmissions (transmission_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE ship_suppression (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    account INTEGER NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    description TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
",
    // The REST API: events searched by recipient and campaign, the suppression list
    // walked by `updated`, and the deliverability counters (per minute and per hour;
    // `engaged` remembers each message's first open and click for the unique counts).
    r"
ALTER TABLE events ADD COLUMN rcpt TEXT;
ALTER TABLE events ADD COLUMN campaign TEXT;
UPDATE events SET
    rcpt = lower(COALESCE(json_extract(item, '$.msys.message_event.rcpt_to'),
        json_extract(item, '$.msys.track_event.rcpt_to'),
        json_extract(item, '$.msys.unsubscribe_event.rcpt_to'))),
    campaign = COALESCE(json_extract(item, '$.msys.message_event.campaign_id'),
        json_extract(item, '$.msys.track_event.campaign_id'),
        json_extract(item, '$.msys.unsubscribe_event.campaign_id'));
CREATE INDEX events_rcpt ON events (rcpt, created);
CREATE INDEX events_campaign ON events (campaign, created);
CREATE INDEX suppression_updated ON suppression (updated, recipient, account, type);
CREATE TABLE counters (
    span INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    campaign TEXT NOT NULL,
    sending_domain TEXT NOT NULL,
    subaccount TEXT NOT NULL,
    ip_pool TEXT NOT NULL,
    bounce_class TEXT NOT NULL,
    metric TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (span, bucket, campaign, sending_domain, subaccount, ip_pool, bounce_class, metric)
) WITHOUT ROWID;
CREATE INDEX counters_campaign ON counters (span, campaign, bucket);
CREATE TABLE engaged (
    message TEXT NOT NULL,
    what TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (message, what)
) WITHOUT ROWID;
CREATE INDEX engaged_created ON engaged (created);
CREATE TABLE api_webhooks (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE batch_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    response_code TEXT,
    failure_code TEXT
);
CREATE INDEX batch_log_sink ON batch_log (sink, seq);
",
    // The exactly-once ledger of copies (see ledger.rs), kept `[reinject] dedupe_hours`;
    // MTA log attempts waiting for their queue id to be indexed (feedback/follow.rs).
    r"
CREATE TABLE ledger (
    message TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (message, key)
) WITHOUT ROWID;
CREATE INDEX ledger_created ON ledger (created);
CREATE TABLE log_pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    line TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX log_pending_queue_id ON log_pending (queue_id, rcpt);
CREATE INDEX log_pending_created ON log_pending (created);
CREATE TABLE mta_queued (
    sender TEXT PRIMARY KEY,
    queue_id TEXT NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX mta_queued_created ON mta_queued (created);
",
    // Commits appended here first; the tables they fill are written behind, in batches
    // (see journal.rs).
    r"
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
",
];

/// Writes queued at once beyond this wait for the next transaction.
const MAX_GROUP: usize = 4096;
/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// How hard a commit is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every commit: survives a power loss (the default).
    Full,
    /// fsync at WAL checkpoints only: survives `kill -9` and crashes of the daemon, not
    /// a power loss.
    Normal,
}

/// One write: runs inside the group's transaction, then learns whether it committed.
trait Job: Send {
    fn run(&mut self, conn: &Connection, sinks: &[SinkSpec]) -> rusqlite::Result<()>;
    fn finish(self: Box<Self>, result: StoreResult<()>);
    /// Its caller gave up waiting (`write_timeout`): not to be written.
    fn cancelled(&self) -> bool;
    /// It reads or changes the tables the journal fills: the journal is applied first.
    fn needs_tables(&self) -> bool {
        true
    }
    /// What it appended to the journal, once its group committed.
    fn take_journaled(&mut self) -> Option<Pending> {
        None
    }
}

/// A commit: its direct part written in the group's transaction, the rest appended to
/// the journal.
struct CommitJob {
    direct: Commit,
    /// The journaled part and its row.
    journaled: Option<(Pending, String)>,
    shipping: bool,
    reply: tokio::sync::oneshot::Sender<StoreResult<()>>,
}

impl Job for CommitJob {
    fn run(&mut self, conn: &Connection, _: &[SinkSpec]) -> rusqlite::Result<()> {
        write_commit(conn, &[], &self.direct, &[], None, false)?;
        if self.shipping {
            super::ship::queue_commit(conn, &self.direct)?;
        }
        if let Some((p, body)) = &mut self.journaled {
            journal::append(conn, p, body)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, result: StoreResult<()>) {
        let _ = self.reply.send(result);
    }

    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }

    fn needs_tables(&self) -> bool {
        false
    }

    fn take_journaled(&mut self) -> Option<Pending> {
        self.journaled.take().map(|(p, _)| p)
    }
}

struct FnJob<T, F> {
    f: F,
    value: Option<T>,
    reply: tokio::sync::oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send,
    F: Fn(&Connection, &[SinkSpec]) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection, sinks: &[SinkSpec]) -> rusqlite::Result<()> {
        self.value = Some((self.f)(conn, sinks)?);
        Ok(())
    }

    fn finish(self: Box<Self>, result: StoreResult<()>) {
        let FnJob { value, reply, .. } = *self;
        let _ = reply.send(result.and_then(|()| value.ok_or(StoreError::Stopped)));
    }

    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Writes waiting for the writer at most; more get [`StoreError::Busy`] at once, so a
/// stalled disk costs bounded memory (a message's commit is a few KB).
const MAX_QUEUED: usize = 10_000;

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    readers: Mutex<Vec<Connection>>,
    sinks: Arc<RwLock<Vec<SinkSpec>>>,
    /// Woken after every commit that added events (sinks wait on it).
    committed: Arc<tokio::sync::Notify>,
    /// Commits also queue what they write for the PostgreSQL shipper.
    pub(super) shipping: Arc<std::sync::atomic::AtomicBool>,
    /// Keep the deliverability counters at commit.
    counting: std::sync::atomic::AtomicBool,
    /// Writes sent to the writer and not yet taken by it.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// How long a write waits for the writer (`[store] write_timeout`), in ms.
    write_timeout_ms: std::sync::atomic::AtomicU64,
    /// How far the journal is applied (reads of its tables wait for it).
    progress: Arc<Progress>,
    /// Hangs up when the writer thread is done.
    stopped: Mutex<Option<mpsc::Receiver<()>>>,
}

/// How long closing the store waits for the writer to finish.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(super) fn err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Turning a new file to WAL takes an exclusive lock and, unlike other statements,
    // answers SQLITE_BUSY at once when another connection opens the file meanwhile
    // (the daemon and a CLI verb started together): try again within the busy timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => break other?,
        }
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // Pages served from SQLite's own cache and the mapping, not copied from the
    // kernel's page cache on every read: the writer's index lookups were mostly that.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "mmap_size", 268_435_456)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A connection for reads. Without the mapping: every other connection's commit made a
/// mapped reader unmap and map the file again as its next read began (a perf profile of
/// the milter at 8 connections: 5% of the worker thread in munmap and mmap).
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open(path, Durability::Normal)?;
    conn.pragma_update(None, "mmap_size", 0)?;
    Ok(conn)
}

pub(crate) fn account_key(account: Account) -> i64 {
    account.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX))
}

pub(crate) fn account_of(key: i64) -> Account {
    u64::try_from(key).ok().filter(|k| *k != 0)
}

pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Open (or create) the store at `path` and run its migrations.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: path.display().to_string(),
                source,
            })?;
        }
        let mut conn = open(path, durability).map_err(err(path))?;
        migrate(&mut conn, path)?;
        // Checkpoints run beside the writer, not inside its commits (they copied the
        // WAL into the database and fsynced it in the commit that crossed 1000 pages).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err(path))?;
        let progress = Arc::new(Progress::default());
        let journal = Journal::recover(&conn, path, Arc::clone(&progress)).map_err(err(path))?;
        let checkpointing = Arc::new(Checkpointing::default());
        start_checkpointer(path, durability, Arc::clone(&checkpointing))?;
        let sinks = Arc::new(RwLock::new(Vec::new()));
        let committed = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let writer_sinks = Arc::clone(&sinks);
        let writer_path = path.to_owned();
        let writer_committed = Arc::clone(&committed);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer_queued = Arc::clone(&queued);
        let (done, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("msys-store-writer".into())
            .spawn(move || {
                let _done = done;
                let shared = WriterShared {
                    sinks: &writer_sinks,
                    path: &writer_path,
                    committed: &writer_committed,
                    queued: &writer_queued,
                    checkpointing: &checkpointing,
                };
                writer(conn, rx, journal, &shared);
                checkpointing
                    .stopped
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            })
            .map_err(|source| StoreError::Directory {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(Some(tx)),
            readers: Mutex::new(Vec::new()),
            sinks,
            committed,
            shipping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            counting: std::sync::atomic::AtomicBool::new(true),
            queued,
            write_timeout_ms: std::sync::atomic::AtomicU64::new(10_000),
            progress,
            stopped: Mutex::new(Some(stopped)),
        })
    }

    /// How long a write waits for the writer before it fails (`[store] write_timeout`).
    pub fn set_write_timeout(&self, timeout: std::time::Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.write_timeout_ms
            .store(ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep (the default) or skip the deliverability counters for what is committed.
    pub fn set_counting(&self, on: bool) {
        self.counting
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stop the writer once the writes queued so far are done and the journal is
    /// applied; waits for that a few seconds at most (a stalled disk: the next start
    /// applies it).
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stopped) = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stopped.recv_timeout(CLOSE_WAIT);
        }
    }

    pub(super) fn write<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: Fn(&Connection, &[SinkSpec]) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Box<dyn Job> = Box::new(FnJob {
            f,
            value: None,
            reply,
        });
        self.send(job, answer)
    }

    /// Hand `job` to the writer; its answer comes on `answer`.
    fn send<T: Send + 'static>(
        &self,
        job: Box<dyn Job>,
        answer: tokio::sync::oneshot::Receiver<StoreResult<T>>,
    ) -> StoreFuture<'_, T> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.queued.load(Relaxed) >= MAX_QUEUED {
            return Box::pin(std::future::ready(Err(StoreError::Busy {
                queued: MAX_QUEUED,
            })));
        }
        self.queued.fetch_add(1, Relaxed);
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|w| w.send(job).is_ok());
        if !sent {
            self.queued.fetch_sub(1, Relaxed);
        }
        let timeout = std::time::Duration::from_millis(self.write_timeout_ms.load(Relaxed));
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            // Dropping `answer` on timeout cancels the write if the writer has not
            // taken it yet.
            match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer.map_err(|_| StoreError::Stopped)?,
                Err(_) => Err(StoreError::Timeout { waited: timeout }),
            }
        })
    }

    /// Run `f` on a read connection, at once (reads take microseconds: no thread hop).
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path).map_err(err(&self.path))?,
        };
        let result = f(&conn).map_err(err(&self.path));
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Resolves once every commit journaled before the call is in the tables.
    fn settle(&self) -> Option<StoreFuture<'_, ()>> {
        // A write that needs the tables: the writer applies the journal before it.
        self.progress.behind().then(|| self.write(|_, _| Ok(())))
    }

    /// [`Self::read`] of the tables the journal fills: after it is applied.
    pub(super) fn read_applied<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        self.once_applied(move || self.read(f))
    }

    /// [`Self::read_heavy`] of the tables the journal fills: after it is applied.
    fn read_heavy_applied<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        self.once_applied(move || self.read_heavy(f))
    }

    /// Run `read` at once when the journal is applied, else once it is.
    fn once_applied<'a, T: Send + 'a>(
        &'a self,
        read: impl FnOnce() -> StoreResult<T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        match self.settle() {
            None => Self::ready(read()),
            Some(settle) => Box::pin(async move {
                settle.await?;
                read()
            }),
        }
    }

    /// [`Self::read`] for an API query over many rows: the daemon's other tasks go on
    /// meanwhile.
    fn read_heavy<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        crate::blocking::heavy(|| self.read(f))
    }

    fn ready<'a, T: Send + 'a>(result: StoreResult<T>) -> StoreFuture<'a, T> {
        Box::pin(std::future::ready(result))
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err(path))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found: version,
            known,
        });
    }
    for (n, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        // Another process (the daemon and a CLI verb, started together) may migrate the
        // same file: take the write lock first, then look again.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err(path))?;
        let now: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err(path))?;
        if now > i64::try_from(n).unwrap_or(i64::MAX) {
            continue;
        }
        tx.execute_batch(sql).map_err(err(path))?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(n + 1).unwrap_or(i64::MAX),
        )
        .map_err(err(path))?;
        tx.commit().map_err(err(path))?;
        tracing::info!(store = %path.display(), version = n + 1, "store schema migrated");
    }
    Ok(())
}

/// The writer thread: one transaction per group of queued writes.
/// What the writer thread shares with the store.
struct WriterShared<'a> {
    sinks: &'a RwLock<Vec<SinkSpec>>,
    path: &'a Path,
    committed: &'a tokio::sync::Notify,
    queued: &'a std::sync::atomic::AtomicUsize,
    checkpointing: &'a Checkpointing,
}

fn writer(
    conn: Connection,
    rx: mpsc::Receiver<Box<dyn Job>>,
    mut journal: Journal,
    shared: &WriterShared<'_>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let WriterShared {
        sinks,
        path,
        committed,
        queued,
        checkpointing,
    } = *shared;
    // All of it, or a chunk between groups of writes (so commits wait one chunk at most).
    let apply_some = |journal: &mut Journal, limit: usize| match journal.apply(&conn, path, limit) {
        Ok(applied) => {
            if applied {
                committed.notify_waiters();
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(store = %path.display(), "applying the journal: {e}");
            Err(e)
        }
    };
    let apply = |journal: &mut Journal| apply_some(journal, usize::MAX);
    let _ = apply(&mut journal);
    loop {
        let first = match journal.wait() {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(wait) => rx.recv_timeout(wait),
        };
        let first = match first {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = apply_some(&mut journal, journal::APPLY_CHUNK);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        queued.fetch_sub(group.len(), Relaxed);
        crate::failpoint::stall("store_writer");
        // Writes whose callers gave up waiting are not written: they were answered.
        group.retain(|job| !job.cancelled());
        if journal.full() && apply(&mut journal).is_err() {
            for job in group {
                job.finish(Err(StoreError::Busy {
                    queued: journal::MAX_PENDING,
                }));
            }
            continue;
        }
        let sinks = sinks.read().map(|s| s.clone()).unwrap_or_default();
        // Written in runs: a write that needs the journal's tables up to date starts a
        // run of its own, after the journal is applied.
        while !group.is_empty() {
            let cut = group
                .iter()
                .skip(1)
                .position(|job| job.needs_tables())
                .map_or(group.len(), |i| i + 1);
            let rest = group.split_off(cut);
            let mut run = std::mem::replace(&mut group, rest);
            if run[0].needs_tables()
                && !journal.is_empty()
                && let Err(e) = apply(&mut journal)
            {
                run.remove(0).finish(Err(err(path)(e)));
            }
            if run.is_empty() {
                continue;
            }
            // Most runs have no failing write: all in one transaction without a
            // savepoint each (savepoints copy every page a write touches again). A
            // failure rolls the run back and writes it again with one savepoint per
            // write, so it fails alone.
            let written = match write_group(&conn, run, &sinks, path, false, &mut journal) {
                Ok(committed) => committed,
                Err(run) => {
                    write_group(&conn, run, &sinks, path, true, &mut journal).unwrap_or(false)
                }
            };
            if written {
                committed.notify_waiters();
            }
        }
        if journal.due() {
            let _ = apply_some(&mut journal, journal::APPLY_CHUNK);
        }
        // The checkpointer is behind (every frame it copied was followed by new ones):
        // one checkpoint here, between transactions, lets the next one start the WAL over.
        if checkpointing.behind.swap(false, Relaxed)
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(store = %path.display(), "checkpoint: {e}");
        }
    }
    // Closed: what is journaled goes into the tables now (or at the next start).
    let _ = apply(&mut journal);
}

/// The checkpointer's state, shared with the writer.
#[derive(Default)]
struct Checkpointing {
    /// The WAL has grown past [`WAL_BEHIND_PAGES`]: the writer checkpoints once itself.
    behind: std::sync::atomic::AtomicBool,
    /// The writer is gone: so is the checkpointer.
    stopped: std::sync::atomic::AtomicBool,
}

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages (4 KiB) beyond which the writer checkpoints itself once: under steady load a
/// checkpoint beside it never catches up with the last frame, and only a checkpoint that
/// did lets the WAL start over.
const WAL_BEHIND_PAGES: i64 = 8_192;

/// A thread of its own that checkpoints the WAL (PASSIVE: never blocking the writer or
/// readers), so a commit never pays for one.
fn start_checkpointer(
    path: &Path,
    durability: Durability,
    state: Arc<Checkpointing>,
) -> StoreResult<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let conn = open(path, durability).map_err(err(path))?;
    let file = path.to_owned();
    std::thread::Builder::new()
        .name("msys-store-ckpt".into())
        .spawn(move || {
            while !state.stopped.load(Relaxed) {
                std::thread::sleep(CHECKPOINT_EVERY);
                // Its answer: (busy, frames in the WAL, frames copied).
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
                    Ok(log) if log > WAL_BEHIND_PAGES => state.behind.store(true, Relaxed),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(store = %file.display(), "checkpoint: {e}"),
                }
            }
        })
        .map(|_| ())
        .map_err(|source| StoreError::Directory {
            path: path.display().to_string(),
            source,
        })
}

/// Write `group` in one transaction and answer every job (`Ok(true)` when it
/// committed); `isolated`: each write in a savepoint, so a failing one fails alone.
/// Without isolation, a failing write rolls everything back and the group comes back
/// unanswered, to be written again.
fn write_group(
    conn: &Connection,
    mut group: Vec<Box<dyn Job>>,
    sinks: &[SinkSpec],
    path: &Path,
    isolated: bool,
    journal: &mut Journal,
) -> Result<bool, Vec<Box<dyn Job>>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(store = %path.display(), "cannot begin a transaction: {e}");
        for job in group {
            job.finish(Err(err(path)(e.clone_for_report())));
        }
        return Ok(false);
    }
    let savepoint = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    super::sqlite_query::GROUP_COUNTS.with(|c| c.borrow_mut().clear());
    let mut ok = Vec::with_capacity(group.len());
    let mut failed = Vec::new();
    for job in &mut group {
        if isolated {
            let _ = savepoint("SAVEPOINT job");
        }
        super::sqlite_query::JOB_COUNTS.with(|c| c.borrow_mut().clear());
        match job.run(conn, sinks) {
            Ok(()) => {
                if isolated {
                    let _ = savepoint("RELEASE job");
                }
                super::sqlite_query::keep_job_counts();
                ok.push(true);
            }
            Err(e) if isolated => {
                let _ = savepoint("ROLLBACK TO job");
                let _ = savepoint("RELEASE job");
                tracing::error!(store = %path.display(), "write failed: {e}");
                failed.push(e);
                ok.push(false);
            }
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(group);
            }
        }
    }
    write_counts(conn, path);
    let result = conn.execute_batch("COMMIT");
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    } else {
        // Durable now: in the journal before any caller hears so.
        let appended = group
            .iter_mut()
            .zip(&ok)
            .filter(|(_, ok)| **ok)
            .filter_map(|(job, _)| job.take_journaled())
            .collect();
        journal.journaled(appended);
    }
    let mut failed = failed.into_iter();
    for (job, ok) in group.into_iter().zip(ok) {
        if !ok {
            let e = failed.next().unwrap_or(rusqlite::Error::InvalidQuery);
            job.finish(Err(err(path)(e)));
            continue;
        }
        job.finish(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(err(path)(e.clone_for_report())),
        });
    }
    Ok(result.is_ok())
}

/// The counter sums of a group (or of an applied journal): a few upserts for many
/// messages. Derived data: a failure here is logged and never fails the commit.
pub(super) fn write_counts(conn: &Connection, path: &Path) {
    if !super::sqlite_query::group_counted() {
        return;
    }
    let savepoint = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    let _ = savepoint("SAVEPOINT counters");
    if let Err(e) = super::sqlite_query::write_group_counts(conn) {
        let _ = savepoint("ROLLBACK TO counters");
        tracing::error!(store = %path.display(), "the deliverability counters were not updated: {e}");
    }
    let _ = savepoint("RELEASE counters");
}

/// rusqlite errors are not `Clone`; one failed commit is reported to every write in it.
trait CloneForReport {
    fn clone_for_report(&self) -> rusqlite::Error;
}

impl CloneForReport for rusqlite::Error {
    fn clone_for_report(&self) -> rusqlite::Error {
        match self {
            rusqlite::Error::SqliteFailure(code, msg) => {
                rusqlite::Error::SqliteFailure(*code, msg.clone())
            }
            other => rusqlite::Error::ToSqlConversionFailure(other.to_string().into()),
        }
    }
}

/// Write `commit`; `outbox`: each event's sinks; `facts`: its transmission already serialised.
pub(super) fn write_commit(
    conn: &Connection,
    outbox: &[Vec<String>],
    commit: &Commit,
    items: &[String],
    facts: Option<&str>,
    counting: bool,
) -> rusqlite::Result<()> {
    let mut insert_event = conn.prepare_cached(
        "INSERT OR IGNORE INTO events (event_id, created, type, transmission_id, item, rcpt, campaign)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut queue =
        conn.prepare_cached("INSERT OR IGNORE INTO outbox (sink, event_id) VALUES (?1, ?2)")?;
    let mut counted = Vec::new();
    if commit.index_only {
        for e in commit
            .events
            .iter()
            .filter(|e| e.kind == EventType::Injection)
        {
            index_queued(conn, e)?;
        }
    }
    let events = if commit.index_only {
        &[][..]
    } else {
        &commit.events[..]
    };
    for (i, (e, item)) in events.iter().zip(items).enumerate() {
        let id = int(e.event_id);
        let campaign = e.fields.get("campaign_id").and_then(|c| c.as_str());
        let inserted = insert_event.execute(params![
            id,
            int(e.timestamp),
            e.kind.as_str(),
            e.transmission_id,
            item,
            e.rcpt_to().map(str::to_lowercase),
            campaign
        ])?;
        // Counted once: a batch written again (a retried commit) adds nothing.
        if inserted == 1 && counting {
            counted.push(e);
        }
        for sink in outbox.get(i).into_iter().flatten() {
            queue.execute(params![sink, id])?;
        }
        if e.kind == EventType::Injection {
            index_queued(conn, e)?;
        }
    }
    if counting {
        super::sqlite_query::count_events(conn, &counted)?;
    }
    let mut retried = conn.prepare_cached(
        "UPDATE queued SET retries = retries + 1 WHERE queue_id = ?1 AND rcpt = ?2",
    )?;
    for (queue_id, rcpt) in &commit.retried {
        retried.execute(params![queue_id, rcpt.to_lowercase()])?;
    }
    if let Some((name, value)) = &commit.cursor {
        conn.prepare_cached("INSERT OR REPLACE INTO cursors (name, value) VALUES (?1, ?2)")?
            .execute(params![name, value])?;
    }
    if let Some(t) = &commit.transmission {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO transmissions (transmission_id, created, facts) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            t.transmission_id,
            int(t.injection_ms / 1000),
            facts.map_or_else(|| t.to_json().into(), std::borrow::Cow::Borrowed)
        ])?;
    }
    for s in &commit.suppress {
        upsert_suppression(conn, s)?;
    }
    let mut ledger = conn.prepare_cached(
        "INSERT OR IGNORE INTO ledger (message, key, value, created) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for row in &commit.ledger {
        ledger.execute(params![row.message, row.key, row.value, int(row.created)])?;
    }
    let mut keep = conn.prepare_cached(
        "INSERT INTO log_pending (queue_id, rcpt, line, created) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for p in &commit.log_pending {
        keep.execute(params![p.queue_id, p.rcpt, p.line, int(p.created)])?;
    }
    let mut resolved = conn.prepare_cached("DELETE FROM log_pending WHERE seq = ?1")?;
    for seq in &commit.log_resolved {
        resolved.execute(params![seq])?;
    }
    if !commit.mta_queued.is_empty() {
        let now = int(crate::ids::unix_secs());
        let mut queued = conn.prepare_cached(
            "INSERT OR REPLACE INTO mta_queued (sender, queue_id, created) VALUES (?1, ?2, ?3)",
        )?;
        for (sender, queue_id) in &commit.mta_queued {
            queued.execute(params![sender, queue_id, now])?;
        }
    }
    Ok(())
}

/// Add an entry to the suppression list, or update it (then `created` stays).
pub(super) fn upsert_suppression(conn: &Connection, s: &SuppressionEntry) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO suppression (recipient, account, type, source, description, created, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (recipient, account, type) DO UPDATE SET
           source = excluded.source, description = excluded.description, updated = excluded.updated",
    )?
    .execute(params![
        s.recipient.to_lowercase(),
        account_key(s.account),
        s.kind.as_str(),
        s.source,
        s.description,
        int(s.created),
        int(s.updated)
    ])?;
    Ok(())
}

/// Index an injection by its MTA queue id, so the MTA's log lines find it.
fn index_queued(conn: &Connection, e: &crate::events::Event) -> rusqlite::Result<()> {
    let field = |name: &str| e.fields.get(name).and_then(|v| v.as_str());
    let (Some(queue_id), Some(raw)) = (field("queue_id"), field("raw_rcpt_to")) else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO queued (queue_id, rcpt, raw_rcpt, transmission_id, message_id, rcpt_type, msg_size, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        queue_id,
        raw.to_lowercase(),
        raw,
        e.transmission_id,
        field("message_id"),
        field("rcpt_type"),
        field("msg_size").and_then(|s| s.parse::<i64>().ok()),
        int(e.timestamp)
    ])?;
    Ok(())
}

fn load_batch(conn: &Connection, sink: &str, batch_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.item FROM outbox o JOIN events e ON e.event_id = o.event_id
         WHERE o.sink = ?1 AND o.batch_id = ?2 ORDER BY o.event_id",
    )?;
    stmt.query_map(params![sink, batch_id], |r| r.get(0))?
        .collect()
}

fn next_batch(
    conn: &Connection,
    sink: &str,
    max: usize,
    new_batch_id: &str,
    now: u64,
) -> rusqlite::Result<Option<Batch>> {
    let open: Option<(String, u32, Option<i64>, Option<i64>)> = conn
        .prepare_cached(
            "SELECT batch_id, attempts, first_failure, next_attempt FROM batches
             WHERE sink = ?1 AND state = 'pending' ORDER BY created, batch_id LIMIT 1",
        )?
        .query_row(params![sink], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    if let Some((batch_id, attempts, first_failure, next_attempt)) = open {
        let items = load_batch(conn, sink, &batch_id)?;
        if !items.is_empty() {
            return Ok(Some(Batch {
                sink: sink.to_owned(),
                batch_id,
                items,
                attempts,
                failing_since: first_failure.and_then(|v| u64::try_from(v).ok()),
                next_attempt: next_attempt.and_then(|v| u64::try_from(v).ok()),
            }));
        }
        // Its events were pruned or replayed elsewhere: nothing left to send.
        conn.execute(
            "DELETE FROM batches WHERE sink = ?1 AND batch_id = ?2",
            params![sink, batch_id],
        )?;
    }
    // The oldest events in no batch yet, with their items: one read for the new batch.
    let rows: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT o.event_id, e.item FROM outbox o JOIN events e ON e.event_id = o.event_id
             WHERE o.sink = ?1 AND o.batch_id IS NULL ORDER BY o.event_id LIMIT ?2",
        )?
        .query_map(params![sink, int(max as u64)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut assign =
        conn.prepare_cached("UPDATE outbox SET batch_id = ?1 WHERE sink = ?2 AND event_id = ?3")?;
    for (id, _) in &rows {
        assign.execute(params![new_batch_id, sink, id])?;
    }
    conn.execute(
        "INSERT INTO batches (sink, batch_id, created, state) VALUES (?1, ?2, ?3, 'pending')",
        params![sink, new_batch_id, int(now)],
    )?;
    Ok(Some(Batch {
        sink: sink.to_owned(),
        batch_id: new_batch_id.to_owned(),
        items: rows.into_iter().map(|(_, item)| item).collect(),
        attempts: 0,
        failing_since: None,
        next_attempt: None,
    }))
}

/// `WHERE` clause and values for a suppression filter.
pub(super) fn filter_sql(filter: &SuppressionFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if let Some(kind) = filter.kind {
        clauses.push("type = ?");
        values.push(V::Text(kind.as_str().to_owned()));
    }
    if let Some(account) = filter.account {
        clauses.push("account = ?");
        values.push(V::Integer(account_key(account)));
    }
    if let Some(r) = &filter.recipient {
        clauses.push("recipient = ?");
        values.push(V::Text(r.trim().to_lowercase()));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

impl Store for SqliteStore {
    fn commit(&self, commit: Commit) -> StoreFuture<'_, ()> {
        let shipping = self.shipping.load(std::sync::atomic::Ordering::Relaxed);
        let counting = self.counting.load(std::sync::atomic::Ordering::Relaxed);
        if !commit.retried.is_empty() {
            // Retries update `queued` rows, which may still be in the journal: written
            // whole, after it is applied.
            let items: Vec<String> = commit.events.iter().map(|e| e.to_json()).collect();
            return self.write(move |conn, sinks| {
                let outbox = journal::outbox_of(&commit.events, sinks);
                write_commit(conn, &outbox, &commit, &items, None, counting)?;
                if shipping {
                    super::ship::queue_commit(conn, &commit)?;
                }
                Ok(())
            });
        }
        let (direct, journaled) = journal::split(commit);
        // Serialised here, on the caller's thread: the one writer thread only inserts.
        let journaled = journaled.map(|commit| {
            let outbox = self
                .sinks
                .read()
                .map(|sinks| journal::outbox_of(&commit.events, &sinks))
                .unwrap_or_default();
            let p = Pending {
                seq: 0,
                items: commit.events.iter().map(|e| e.to_json()).collect(),
                facts: commit.transmission.as_ref().map(Transmission::to_json),
                commit,
                outbox,
                counting,
                shipping,
            };
            let body = journal::encode(&p);
            (p, body)
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(
            Box::new(CommitJob {
                direct,
                journaled,
                shipping,
                reply,
            }),
            answer,
        )
    }

    fn suppressed<'a>(
        &'a self,
        account: Account,
        kind: SuppressionType,
        recipients: &'a [String],
    ) -> StoreFuture<'a, Vec<String>> {
        let result = self.read(|conn| {
            // One read transaction for all of them, not one each.
            let tx = conn.unchecked_transaction()?;
            let mut stmt = tx.prepare_cached(
                "SELECT 1 FROM suppression WHERE recipient = ?1 AND account = ?2 AND type = ?3",
            )?;
            let mut hits = Vec::new();
            for r in recipients {
                let r = r.to_lowercase();
                if stmt.exists(params![r, account_key(account), kind.as_str()])? {
                    hits.push(r);
                }
            }
            Ok(hits)
        });
        Self::ready(result)
    }

    fn transmission<'a>(
        &'a self,
        transmission_id: &'a str,
    ) -> StoreFuture<'a, Option<Transmission>> {
        self.read_applied(move |conn| {
            let facts = conn
                .prepare_cached("SELECT facts FROM transmissions WHERE transmission_id = ?1")?
                .query_row(params![transmission_id], |r| r.get::<_, String>(0))
                .optional()?;
            Ok(facts.as_deref().and_then(Transmission::from_json))
        })
    }

    fn queued<'a>(&'a self, queue_ids: &'a [String]) -> StoreFuture<'a, Vec<Queued>> {
        self.read_applied(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT queue_id, rcpt, raw_rcpt, transmission_id, message_id, rcpt_type, msg_size, retries
                 FROM queued WHERE queue_id = ?1",
            )?;
            let mut out = Vec::new();
            for id in queue_ids {
                let rows = stmt.query_map(params![id], |r| {
                    Ok(Queued {
                        queue_id: r.get(0)?,
                        rcpt: r.get(1)?,
                        raw_rcpt: r.get(2)?,
                        transmission_id: r.get(3)?,
                        message_id: r.get(4)?,
                        rcpt_type: r.get(5)?,
                        msg_size: opt_u64(r.get(6)?),
                        retries: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                    })
                })?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
    }

    fn cursor<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<String>> {
        Self::ready(self.read(|conn| {
            conn.prepare_cached("SELECT value FROM cursors WHERE name = ?1")?
                .query_row(params![name], |r| r.get(0))
                .optional()
        }))
    }

    fn set_sinks(&self, sinks: Vec<SinkSpec>) {
        match self.sinks.write() {
            Ok(mut s) => *s = sinks,
            Err(p) => *p.into_inner() = sinks,
        }
    }

    fn committed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.committed)
    }

    fn next_batch<'a>(
        &'a self,
        sink: &'a str,
        max: usize,
        new_batch_id: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Option<Batch>> {
        let (sink, new_batch_id) = (sink.to_owned(), new_batch_id.to_owned());
        self.write(move |conn, _| next_batch(conn, &sink, max, &new_batch_id, now))
    }

    fn batch_delivered<'a>(&'a self, sink: &'a str, batch_id: &'a str) -> StoreFuture<'a, ()> {
        let (sink, batch_id) = (sink.to_owned(), batch_id.to_owned());
        let now = crate::ids::unix_secs();
        self.write(move |conn, _| {
            conn.execute(
                "INSERT INTO batch_log (sink, batch_id, ts, attempts, response_code)
                 SELECT sink, batch_id, ?3, attempts + 1, '200' FROM batches
                 WHERE sink = ?1 AND batch_id = ?2",
                params![sink, batch_id, int(now)],
            )?;
            super::sqlite_query::trim_batch_log(conn, &sink)?;
            conn.execute(
                "DELETE FROM outbox WHERE sink = ?1 AND batch_id = ?2",
                params![sink, batch_id],
            )?;
            conn.execute(
                "DELETE FROM batches WHERE sink = ?1 AND batch_id = ?2",
                params![sink, batch_id],
            )?;
            Ok(())
        })
    }

    fn batch_failed<'a>(
        &'a self,
        sink: &'a str,
        batch_id: &'a str,
        error: &'a str,
        now: u64,
        next_attempt: u64,
        give_up: bool,
    ) -> StoreFuture<'a, ()> {
        let (sink, batch_id, error) = (sink.to_owned(), batch_id.to_owned(), error.to_owned());
        self.write(move |conn, _| {
            conn.execute(
                "UPDATE batches SET attempts = attempts + 1,
                   first_failure = COALESCE(first_failure, ?3), last_error = ?4,
                   next_attempt = ?5, state = ?6
                 WHERE sink = ?1 AND batch_id = ?2",
                params![
                    sink,
                    batch_id,
                    int(now),
                    error,
                    int(next_attempt),
                    if give_up { "failed" } else { "pending" }
                ],
            )?;
            // `HTTP 503 Service Unavailable`: the answer's code; else why there was none.
            let code = error
                .strip_prefix("HTTP ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned);
            let failure = code
                .is_none()
                .then(|| error.chars().take(64).collect::<String>());
            conn.execute(
                "INSERT INTO batch_log (sink, batch_id, ts, attempts, response_code, failure_code)
                 SELECT sink, batch_id, ?3, attempts, ?4, ?5 FROM batches
                 WHERE sink = ?1 AND batch_id = ?2",
                params![sink, batch_id, int(now), code, failure],
            )?;
            super::sqlite_query::trim_batch_log(conn, &sink)?;
            Ok(())
        })
    }

    fn sink_status(&self) -> StoreFuture<'_, Vec<SinkStatus>> {
        let configured: Vec<String> = self
            .sinks
            .read()
            .map(|s| s.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        let result = self.read(|conn| {
            let mut out: Vec<SinkStatus> = configured
                .into_iter()
                .map(|sink| SinkStatus {
                    sink,
                    ..SinkStatus::default()
                })
                .collect();
            let entry = |out: &mut Vec<SinkStatus>, sink: String| -> usize {
                if let Some(i) = out.iter().position(|s| s.sink == sink) {
                    return i;
                }
                out.push(SinkStatus {
                    sink,
                    ..SinkStatus::default()
                });
                out.len() - 1
            };
            let mut stmt = conn.prepare(
                "SELECT o.sink, COALESCE(b.state, 'pending'), COUNT(*) FROM outbox o
                 LEFT JOIN batches b ON b.sink = o.sink AND b.batch_id = o.batch_id
                 GROUP BY o.sink, COALESCE(b.state, 'pending')",
            )?;
            let rows: Vec<(String, String, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (sink, state, count) in rows {
                let i = entry(&mut out, sink);
                let count = u64::try_from(count).unwrap_or(0);
                if state == "failed" {
                    out[i].failed_events += count;
                } else {
                    out[i].pending += count;
                }
            }
            let mut stmt = conn.prepare(
                "SELECT sink, state, COUNT(*), MIN(first_failure), MAX(next_attempt),
                   (SELECT last_error FROM batches b2 WHERE b2.sink = b.sink AND b2.state = b.state
                    AND b2.last_error IS NOT NULL ORDER BY b2.first_failure DESC LIMIT 1)
                 FROM batches b GROUP BY sink, state",
            )?;
            type Row = (
                String,
                String,
                i64,
                Option<i64>,
                Option<i64>,
                Option<String>,
            );
            let rows: Vec<Row> = stmt
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            for (sink, state, count, first_failure, next_attempt, last_error) in rows {
                let i = entry(&mut out, sink);
                if state == "failed" {
                    out[i].failed_batches = u64::try_from(count).unwrap_or(0);
                    if out[i].last_error.is_none() {
                        out[i].last_error = last_error;
                    }
                } else if first_failure.is_some() {
                    out[i].failing_since = opt_u64(first_failure);
                    out[i].next_attempt = opt_u64(next_attempt);
                    out[i].last_error = last_error;
                }
            }
            Ok(out)
        });
        Self::ready(result)
    }

    fn replay<'a>(&'a self, since: u64, sinks: &'a [String]) -> StoreFuture<'a, u64> {
        let sinks = sinks.to_vec();
        self.write(move |conn, _| {
            let mut total = 0u64;
            for sink in &sinks {
                let n = conn.execute(
                    "INSERT INTO outbox (sink, event_id, batch_id)
                     SELECT ?1, event_id, NULL FROM events WHERE created >= ?2
                     ON CONFLICT (sink, event_id) DO UPDATE SET batch_id = NULL
                     WHERE outbox.batch_id IN
                       (SELECT batch_id FROM batches WHERE sink = ?1 AND state = 'failed')",
                    params![sink, int(since)],
                )?;
                conn.execute(
                    "DELETE FROM batches WHERE sink = ?1 AND state = 'failed' AND NOT EXISTS
                       (SELECT 1 FROM outbox o WHERE o.sink = ?1 AND o.batch_id = batches.batch_id)",
                    params![sink],
                )?;
                total += n as u64;
            }
            Ok(total)
        })
    }

    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(u64, EventType, String)>> {
        self.read_applied(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT event_id, type, item FROM events WHERE event_id > ?1 ORDER BY event_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![int(after), int(limit as u64)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, kind, item) = row?;
                if let Some(kind) = EventType::parse(&kind) {
                    out.push((u64::try_from(id).unwrap_or(0), kind, item));
                }
            }
            Ok(out)
        })
    }

    fn suppression_list(
        &self,
        filter: SuppressionFilter,
    ) -> StoreFuture<'_, Vec<SuppressionEntry>> {
        let result = self.read(|conn| {
            let (clause, values) = filter_sql(&filter);
            let mut stmt = conn.prepare(&format!(
                "SELECT recipient, account, type, source, description, created, updated
                 FROM suppression{clause} ORDER BY recipient, account, type"
            ))?;
            let rows = stmt.query_map(
                rusqlite::params_from_iter(values),
                super::sqlite_query::suppression_entry,
            )?;
            rows.collect()
        });
        Self::ready(result)
    }

    fn suppression_remove(&self, filter: SuppressionFilter) -> StoreFuture<'_, u64> {
        let shipping = self.shipping.load(std::sync::atomic::Ordering::Relaxed);
        self.write(move |conn, _| {
            let (clause, values) = filter_sql(&filter);
            if shipping {
                super::ship::queue_removal(conn, &clause, &values)?;
            }
            let n = conn.execute(
                &format!("DELETE FROM suppression{clause}"),
                rusqlite::params_from_iter(values),
            )?;
            Ok(n as u64)
        })
    }

    fn suppression_search(
        &self,
        q: super::query::SuppressionQuery,
    ) -> StoreFuture<'_, super::query::SuppressionPage> {
        Self::ready(self.read_heavy(|conn| super::sqlite_query::suppression_search(conn, &q)))
    }

    fn suppression_summary(&self, account: Option<Account>) -> StoreFuture<'_, Vec<(String, u64)>> {
        Self::ready(self.read_heavy(|conn| super::sqlite_query::suppression_summary(conn, account)))
    }

    fn event_search(
        &self,
        q: super::query::EventQuery,
    ) -> StoreFuture<'_, super::query::EventPage> {
        self.read_heavy_applied(move |conn| super::sqlite_query::event_search(conn, &q))
    }

    fn metrics(
        &self,
        q: super::query::MetricsQuery,
    ) -> StoreFuture<'_, Vec<super::query::MetricsRow>> {
        self.read_heavy_applied(move |conn| super::sqlite_query::metrics(conn, &q))
    }

    fn dimension_values(
        &self,
        dim: super::query::Dimension,
        (from, to): (u64, u64),
        matching: Option<String>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<String>> {
        self.read_applied(move |conn| {
            super::sqlite_query::dimension_values(conn, dim, from, to, matching.as_deref(), limit)
        })
    }

    fn api_webhooks(&self) -> StoreFuture<'_, Vec<super::query::StoredWebhook>> {
        Self::ready(self.read(super::sqlite_query::api_webhooks))
    }

    fn api_webhook_put(&self, hook: super::query::StoredWebhook) -> StoreFuture<'_, ()> {
        self.write(move |conn, _| super::sqlite_query::api_webhook_put(conn, &hook))
    }

    fn api_webhook_delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let id = id.to_owned();
        self.write(move |conn, _| {
            Ok(conn.execute("DELETE FROM api_webhooks WHERE id = ?1", params![id])? == 1)
        })
    }

    fn batch_log<'a>(
        &'a self,
        sink: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<super::query::BatchLogEntry>> {
        Self::ready(self.read(|conn| super::sqlite_query::batch_log(conn, sink, limit)))
    }

    fn ledger<'a>(&'a self, message: &'a str) -> StoreFuture<'a, super::Ledger> {
        Self::ready(self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT key, value FROM ledger WHERE message = ?1")?;
            let rows = stmt
                .query_map(params![message], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
            Ok(super::Ledger::from_rows(rows))
        }))
    }

    fn log_pending_matched(&self, since: u64) -> StoreFuture<'_, Vec<super::PendingAttempt>> {
        self.read_applied(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT p.seq, p.queue_id, p.rcpt, p.line, p.created
                 FROM queued q JOIN log_pending p ON p.queue_id = q.queue_id AND p.rcpt = q.rcpt
                 WHERE q.created >= ?1 ORDER BY p.seq",
            )?;
            let rows = stmt.query_map(params![int(since)], |r| {
                Ok(super::PendingAttempt {
                    seq: r.get(0)?,
                    queue_id: r.get(1)?,
                    rcpt: r.get(2)?,
                    line: r.get(3)?,
                    created: opt_u64(r.get(4)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
    }

    fn prune_log_pending(&self, before: u64) -> StoreFuture<'_, u64> {
        self.write(move |conn, _| {
            Ok(conn.execute(
                "DELETE FROM log_pending WHERE created < ?1",
                params![int(before)],
            )? as u64)
        })
    }

    fn prune_ledger(&self, before: u64) -> StoreFuture<'_, u64> {
        self.write(move |conn, _| {
            let ledger = conn.execute(
                "DELETE FROM ledger WHERE created < ?1",
                params![int(before)],
            )?;
            let queued = conn.execute(
                "DELETE FROM mta_queued WHERE created < ?1",
                params![int(before)],
            )?;
            Ok((ledger + queued) as u64)
        })
    }

    fn mta_queued<'a>(&'a self, senders: &'a [String]) -> StoreFuture<'a, Vec<(String, String)>> {
        Self::ready(self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT queue_id FROM mta_queued WHERE sender = ?1")?;
            let mut found = Vec::new();
            for sender in senders {
                if let Some(queue_id) = stmt
                    .query_row(params![sender], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    found.push((sender.clone(), queue_id));
                }
            }
            Ok(found)
        }))
    }

    fn prune_counters(&self, before: u64) -> StoreFuture<'_, u64> {
        self.write(move |conn, _| Ok(super::sqlite_query::prune_counters(conn, before)? as u64))
    }

    fn prune(&self, events_before: u64, transmissions_before: u64) -> StoreFuture<'_, u64> {
        self.write(move |conn, _| {
            let events = conn.execute(
                "DELETE FROM events WHERE created < ?1 AND NOT EXISTS
                   (SELECT 1 FROM outbox o WHERE o.event_id = events.event_id)
                   AND NOT EXISTS (SELECT 1 FROM ship_events s WHERE s.event_id = events.event_id)",
                params![int(events_before)],
            )?;
            let transmissions = conn.execute(
                "DELETE FROM transmissions WHERE created < ?1",
                params![int(transmissions_before)],
            )?;
            // Postfix gives up on a message after 5 days (maximal_queue_lifetime).
            let queued = conn.execute(
                "DELETE FROM queued WHERE created < ?1",
                params![int(transmissions_before.min(events_before))],
            )?;
            Ok((events + transmissions + queued) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes queued together go in one transaction; one that fails fails alone, and the
    /// others are committed (the group is written again, each write in a savepoint).
    #[tokio::test]
    async fn a_failing_write_fails_alone_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), Durability::Normal).unwrap();
        for round in 0..20 {
            // Sent at once (a write is queued when called): mostly one group.
            let writes: Vec<_> = (0..8)
                .map(|i| {
                    let name = format!("c{round}-{i}");
                    store.write(move |conn, _| {
                        if i == 3 {
                            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                        }
                        conn.execute(
                            "INSERT INTO cursors (name, value) VALUES (?1, 'v')",
                            [&name],
                        )?;
                        Ok(i)
                    })
                })
                .collect();
            for (i, w) in writes.into_iter().enumerate() {
                let got = w.await;
                if i == 3 {
                    assert!(got.is_err(), "the failing write reports its error");
                } else {
                    assert_eq!(got.unwrap(), i);
                }
            }
            let kept: i64 = store
                .read(|c| {
                    c.query_row(
                        "SELECT count(*) FROM cursors WHERE name LIKE ?1",
                        [format!("c{round}-%")],
                        |r| r.get(0),
                    )
                })
                .unwrap();
            assert_eq!(kept, 7, "round {round}");
        }
    }

    /// Commits never checkpoint; the checkpointer beside the writer copies the WAL into
    /// the database file soon after.
    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for i in 0..2_000 {
            store
                .write(move |conn, _| {
                    conn.execute(
                        "INSERT INTO cursors (name, value) VALUES (?1, ?2)",
                        (format!("k{i}"), "v".repeat(1000)),
                    )
                })
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).unwrap().len() < before + 2_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file did not grow: no checkpoint"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
