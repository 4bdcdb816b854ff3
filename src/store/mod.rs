//! The durable state behind one small async interface: the events outbox (one queue per
//! sink, batches that keep their id across retries), the suppression list, and the facts
//! of each transmission that later events join. Callers never see SQL and make every id
//! themselves (`ids.rs`), so a server backend can implement [`Store`] unchanged.
//! [`sqlite::SqliteStore`] is the embedded default.

mod journal;
pub mod postgres;
pub mod query;
pub mod ship;
pub mod sqlite;
mod sqlite_query;

use crate::events::{Event, EventType, Transmission};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub use sqlite::SqliteStore;

/// Why the store could not do something; the milter answers 451 for any of them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store {path}: cannot create its directory: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "store {path}: schema version {found} is newer than this msys-milter knows ({known}); upgrade msys-milter"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("the store's writer has stopped")]
    Stopped,
    #[error(
        "the store did not write within {waited:?} ([store] write_timeout): is its disk stalled?"
    )]
    Timeout { waited: std::time::Duration },
    #[error("{queued} writes are waiting for the store already: is its disk stalled?")]
    Busy { queued: usize },
    /// The group's shared store (PostgreSQL) could not do it.
    #[error("shared store: {0}")]
    Shared(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// The two suppression lists of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SuppressionType {
    Transactional,
    NonTransactional,
}

impl SuppressionType {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionType::Transactional => "transactional",
            SuppressionType::NonTransactional => "non_transactional",
        }
    }

    pub fn parse(s: &str) -> Option<SuppressionType> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "transactional" => Some(SuppressionType::Transactional),
            "non_transactional" => Some(SuppressionType::NonTransactional),
            _ => None,
        }
    }

    /// The list a message is checked against.
    pub fn of_message(transactional: bool) -> SuppressionType {
        if transactional {
            SuppressionType::Transactional
        } else {
            SuppressionType::NonTransactional
        }
    }
}

/// Which account an entry belongs to: the main account or a subaccount.
pub type Account = Option<u64>;

/// One suppression list entry. `recipient` is kept lower-cased: lookups are
/// case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressionEntry {
    pub recipient: String,
    pub account: Account,
    pub kind: SuppressionType,
    /// SparkPost's values: "Manually Added", "List Unsubscribe", "Unsubscribe Link",
    /// "Bounce Rule", "Spam Complaint".
    pub source: String,
    pub description: String,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

impl SuppressionEntry {
    pub fn new(
        recipient: &str,
        account: Account,
        kind: SuppressionType,
        source: &str,
        description: &str,
        now: u64,
    ) -> Self {
        SuppressionEntry {
            recipient: recipient.trim().to_lowercase(),
            account,
            kind,
            source: source.to_owned(),
            description: description.to_owned(),
            created: now,
            updated: now,
        }
    }
}

/// What one commit writes, all or nothing.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    pub events: Vec<Event>,
    pub transmission: Option<Transmission>,
    /// Added, or updated when present (then `created` stays).
    pub suppress: Vec<SuppressionEntry>,
    /// A reader's position saved with what it read (name, value): exactly once.
    pub cursor: Option<(String, String)>,
    /// Deferred delivery attempts (queue id, recipient): each adds one to the
    /// recipient's `retries`.
    pub retried: Vec<(String, String)>,
    /// Rows of the exactly-once ledger of copies (see `crate::ledger`).
    pub ledger: Vec<LedgerRow>,
    /// Index the injection events by queue id, but do not add them: the retry of a
    /// message whose events were committed at an earlier attempt.
    pub index_only: bool,
    /// MTA log attempts whose queue id is not known yet, kept to match later.
    pub log_pending: Vec<PendingAttempt>,
    /// Kept attempts (by `seq`) now matched, or given up on.
    pub log_resolved: Vec<i64>,
    /// Copies' own senders the MTA's log shows queued: (sender, lower-cased; queue id).
    pub mta_queued: Vec<(String, String)>,
}

/// An attempt from the MTA's log (a delivery, deferral or bounce line) whose queue id
/// and recipient were not indexed yet: a copy's delivery can be logged before the
/// commit of its message indexes the copy's queue id (a message with many copies is
/// committed after the last one is handed over). Kept for a while and matched then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAttempt {
    /// Assigned by the store (0 in a new one).
    pub seq: i64,
    pub queue_id: String,
    /// Lower-cased.
    pub rcpt: String,
    /// The whole log line.
    pub line: String,
    /// Unix seconds.
    pub created: u64,
}

/// One row of the exactly-once ledger: for the message with digest `message`, a copy
/// handed over (`key` the copy's key, `value` the MTA's reply), its transmission id
/// ([`LEDGER_TRANSMISSION`]) or that its events were committed ([`LEDGER_COMMITTED`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    pub message: String,
    pub key: String,
    pub value: String,
    /// Unix seconds; rows older than `[reinject] dedupe_hours` are pruned.
    pub created: u64,
}

pub const LEDGER_TRANSMISSION: &str = "transmission";
pub const LEDGER_COMMITTED: &str = "committed";

/// What the ledger knows of one message from earlier attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The transmission id the first attempt gave it.
    pub transmission_id: Option<String>,
    /// Its events were committed (its answer may have been lost).
    pub committed: bool,
    /// Copies handed over: copy key to the MTA's reply.
    pub copies: std::collections::HashMap<String, String>,
}

impl Ledger {
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String)>) -> Ledger {
        let mut ledger = Ledger::default();
        for (key, value) in rows {
            match key.as_str() {
                LEDGER_TRANSMISSION => ledger.transmission_id = Some(value),
                LEDGER_COMMITTED => ledger.committed = true,
                _ => {
                    ledger.copies.insert(key, value);
                }
            }
        }
        ledger
    }
}

/// A recipient handed to the MTA under a queue id (from its `injection` event; the
/// store keeps this index so the MTA's log can be matched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub queue_id: String,
    /// Lower-cased.
    pub rcpt: String,
    pub raw_rcpt: String,
    pub transmission_id: String,
    pub message_id: Option<String>,
    pub rcpt_type: Option<String>,
    pub msg_size: Option<u64>,
    /// Deferred attempts so far.
    pub retries: u32,
}

/// A consumer of events with a queue of its own: a webhook or the JSONL file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    pub name: String,
    /// Event types it takes; `None`: all.
    pub types: Option<Vec<EventType>>,
}

impl SinkSpec {
    pub fn wants(&self, kind: EventType) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(&kind))
    }
}

/// Events handed to a sink together, under one id that stays the same on every retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub sink: String,
    pub batch_id: String,
    /// The items' stored JSON, in event order.
    pub items: Vec<String>,
    pub attempts: u32,
    /// When the first delivery attempt failed (Unix seconds).
    pub failing_since: Option<u64>,
    /// When to try again after a failure (Unix seconds).
    pub next_attempt: Option<u64>,
}

/// A sink's backlog, for `msys-milter webhooks status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStatus {
    pub sink: String,
    /// Events not yet acknowledged (in no batch yet, or in a batch being retried).
    pub pending: u64,
    /// Batches given up on after the retry period; kept for replay.
    pub failed_batches: u64,
    pub failed_events: u64,
    pub failing_since: Option<u64>,
    pub last_error: Option<String>,
    pub next_attempt: Option<u64>,
}

/// A host of a group sharing one PostgreSQL (`webhooks status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatus {
    pub node_id: u16,
    pub host: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age: u64,
    /// What it had committed and not yet shipped, at its last heartbeat.
    pub backlog: u64,
}

/// Which entries `suppression list` and `export` show.
#[derive(Clone, Debug, Default)]
pub struct SuppressionFilter {
    pub kind: Option<SuppressionType>,
    /// `None`: every account.
    pub account: Option<Account>,
    pub recipient: Option<String>,
}

/// The store, as the milter, the HTTP endpoint, the sinks and the CLI use it.
pub trait Store: Send + Sync {
    /// Write `commit` durably; complete only once it is committed.
    fn commit(&self, commit: Commit) -> StoreFuture<'_, ()>;

    /// Which of `recipients` (lower-cased) are on `account`'s `kind` list.
    fn suppressed<'a>(
        &'a self,
        account: Account,
        kind: SuppressionType,
        recipients: &'a [String],
    ) -> StoreFuture<'a, Vec<String>>;

    /// The stored facts of a transmission.
    fn transmission<'a>(
        &'a self,
        transmission_id: &'a str,
    ) -> StoreFuture<'a, Option<Transmission>>;

    /// The recipients handed to the MTA under these queue ids.
    fn queued<'a>(&'a self, queue_ids: &'a [String]) -> StoreFuture<'a, Vec<Queued>>;

    /// A cursor saved by [`Commit::cursor`].
    fn cursor<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<String>>;

    /// The sinks that get every event committed from now on.
    fn set_sinks(&self, sinks: Vec<SinkSpec>);

    /// Woken after each commit that may have queued events for the sinks.
    fn committed(&self) -> std::sync::Arc<tokio::sync::Notify>;

    /// The sink's oldest unacknowledged batch; when there is none, a new one of at most
    /// `max` events under `new_batch_id`. `None` when nothing is pending.
    fn next_batch<'a>(
        &'a self,
        sink: &'a str,
        max: usize,
        new_batch_id: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Option<Batch>>;

    /// The consumer acknowledged the batch: its events leave the sink's queue.
    fn batch_delivered<'a>(&'a self, sink: &'a str, batch_id: &'a str) -> StoreFuture<'a, ()>;

    /// An attempt failed; retry at `next_attempt`, or give up (kept as failed).
    fn batch_failed<'a>(
        &'a self,
        sink: &'a str,
        batch_id: &'a str,
        error: &'a str,
        now: u64,
        next_attempt: u64,
        give_up: bool,
    ) -> StoreFuture<'a, ()>;

    fn sink_status(&self) -> StoreFuture<'_, Vec<SinkStatus>>;

    /// Queue again for `sinks` the events created at or after `since` (Unix seconds),
    /// failed ones included. The number of events queued.
    fn replay<'a>(&'a self, since: u64, sinks: &'a [String]) -> StoreFuture<'a, u64>;

    /// Events with an id above `after`, oldest first: (event id, type, item JSON).
    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(u64, EventType, String)>>;

    fn suppression_list(&self, filter: SuppressionFilter)
    -> StoreFuture<'_, Vec<SuppressionEntry>>;

    /// Remove matching entries; the number removed.
    fn suppression_remove(&self, filter: SuppressionFilter) -> StoreFuture<'_, u64>;

    /// Forget what no consumer needs any more: delivered events older than
    /// `events_before`, transmissions older than `transmissions_before` (Unix seconds).
    fn prune(&self, events_before: u64, transmissions_before: u64) -> StoreFuture<'_, u64>;

    /// A page of the suppression list (REST API).
    fn suppression_search(
        &self,
        _: query::SuppressionQuery,
    ) -> StoreFuture<'_, query::SuppressionPage> {
        done(query::SuppressionPage::default())
    }

    /// How many entries each source added (`None`: every account).
    fn suppression_summary(&self, _: Option<Account>) -> StoreFuture<'_, Vec<(String, u64)>> {
        done(Vec::new())
    }

    /// A page of the stored events, newest first (REST API).
    fn event_search(&self, _: query::EventQuery) -> StoreFuture<'_, query::EventPage> {
        done(query::EventPage::default())
    }

    /// Sums of the deliverability counters.
    fn metrics(&self, _: query::MetricsQuery) -> StoreFuture<'_, Vec<query::MetricsRow>> {
        done(Vec::new())
    }

    /// The values of a dimension (campaigns, sending domains) seen in `[from, to)`.
    fn dimension_values(
        &self,
        _: query::Dimension,
        _: (u64, u64),
        _: Option<String>,
        _: usize,
    ) -> StoreFuture<'_, Vec<String>> {
        done(Vec::new())
    }

    /// The webhooks made through the REST API.
    fn api_webhooks(&self) -> StoreFuture<'_, Vec<query::StoredWebhook>> {
        done(Vec::new())
    }

    /// Add or replace (by id) a webhook made through the REST API.
    fn api_webhook_put(&self, _: query::StoredWebhook) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Err(StoreError::Stopped)))
    }

    /// Remove a webhook made through the REST API; whether it was there.
    fn api_webhook_delete<'a>(&'a self, _: &'a str) -> StoreFuture<'a, bool> {
        done(false)
    }

    /// A sink's last deliveries, newest first.
    fn batch_log<'a>(&'a self, _: &'a str, _: usize) -> StoreFuture<'a, Vec<query::BatchLogEntry>> {
        done(Vec::new())
    }

    /// Forget counters older than `before` (Unix seconds).
    fn prune_counters(&self, _: u64) -> StoreFuture<'_, u64> {
        done(0)
    }

    /// The hosts of the group this store is shared with; none for a host alone.
    /// Kept MTA log attempts whose queue id and recipient were indexed at or after
    /// `since` (Unix seconds): those that can be matched now.
    fn log_pending_matched(&self, _since: u64) -> StoreFuture<'_, Vec<PendingAttempt>> {
        done(Vec::new())
    }

    /// Forget kept MTA log attempts created before `before`: mail that is not ours.
    fn prune_log_pending(&self, _before: u64) -> StoreFuture<'_, u64> {
        done(0)
    }

    /// Which of `senders` (copies' own senders, lower-cased) the MTA's log showed
    /// queued: (sender, queue id).
    fn mta_queued<'a>(&'a self, _senders: &'a [String]) -> StoreFuture<'a, Vec<(String, String)>> {
        done(Vec::new())
    }

    /// What the exactly-once ledger holds for the message with digest `message`.
    fn ledger<'a>(&'a self, _message: &'a str) -> StoreFuture<'a, Ledger> {
        done(Ledger::default())
    }

    /// Forget ledger rows created before `before` (Unix seconds).
    fn prune_ledger(&self, _before: u64) -> StoreFuture<'_, u64> {
        done(0)
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<HostStatus>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// No store at all (`[store] enabled = false`): nothing is recorded, nobody is
/// suppressed, events are not kept. For hosts that want only the message shaping.
pub struct NullStore(std::sync::Arc<tokio::sync::Notify>);

impl NullStore {
    pub fn new() -> NullStore {
        NullStore(std::sync::Arc::default())
    }
}

impl Default for NullStore {
    fn default() -> Self {
        Self::new()
    }
}

fn done<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Store for NullStore {
    fn commit(&self, _: Commit) -> StoreFuture<'_, ()> {
        done(())
    }
    fn suppressed<'a>(
        &'a self,
        _: Account,
        _: SuppressionType,
        _: &'a [String],
    ) -> StoreFuture<'a, Vec<String>> {
        done(Vec::new())
    }
    fn transmission<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Transmission>> {
        done(None)
    }
    fn queued<'a>(&'a self, _: &'a [String]) -> StoreFuture<'a, Vec<Queued>> {
        done(Vec::new())
    }
    fn cursor<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<String>> {
        done(None)
    }
    fn set_sinks(&self, _: Vec<SinkSpec>) {}
    fn committed(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.0)
    }
    fn next_batch<'a>(
        &'a self,
        _: &'a str,
        _: usize,
        _: &'a str,
        _: u64,
    ) -> StoreFuture<'a, Option<Batch>> {
        done(None)
    }
    fn batch_delivered<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        done(())
    }
    fn batch_failed<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: u64,
        _: u64,
        _: bool,
    ) -> StoreFuture<'a, ()> {
        done(())
    }
    fn sink_status(&self) -> StoreFuture<'_, Vec<SinkStatus>> {
        done(Vec::new())
    }
    fn replay<'a>(&'a self, _: u64, _: &'a [String]) -> StoreFuture<'a, u64> {
        done(0)
    }
    fn events_after(&self, _: u64, _: usize) -> StoreFuture<'_, Vec<(u64, EventType, String)>> {
        done(Vec::new())
    }
    fn suppression_list(&self, _: SuppressionFilter) -> StoreFuture<'_, Vec<SuppressionEntry>> {
        done(Vec::new())
    }
    fn suppression_remove(&self, _: SuppressionFilter) -> StoreFuture<'_, u64> {
        done(0)
    }
    fn prune(&self, _: u64, _: u64) -> StoreFuture<'_, u64> {
        done(0)
    }
}

/// Where the store lives when `[store] path` is not set, and why: systemd's
/// `$STATE_DIRECTORY`, else `/var/lib/msys-milter` when it is (or can be made)
/// writable, else the user's data directory.
pub fn default_path() -> (PathBuf, &'static str) {
    const FILE: &str = "msys-milter.db";
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, separated by colons: the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return (PathBuf::from(first).join(FILE), "$STATE_DIRECTORY");
    }
    let system = PathBuf::from("/var/lib/msys-milter");
    if writable_dir(&system) {
        return (system.join(FILE), "/var/lib/msys-milter is writable");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(std::env::temp_dir);
    (
        data.join("msys-milter").join(FILE),
        "the user's data directory (/var/lib/msys-milter is not writable)",
    )
}

fn writable_dir(dir: &std::path::Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
