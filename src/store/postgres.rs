//! Several MTA hosts, one sending platform: the shared side in PostgreSQL.
//!
//! Each host keeps its SQLite store as the first durable write (the milter never waits
//! on PostgreSQL) and ships what it committed (transmissions, events, suppression
//! changes) to PostgreSQL in batches, idempotently (our ids, `ON CONFLICT DO NOTHING`),
//! forgetting a batch only once PostgreSQL has committed it. PostgreSQL holds the
//! suppression list's truth and a change log; every host keeps its local table as a
//! replica for the lookups at end of message, fed by `LISTEN`/`NOTIFY` on a connection
//! of its own (outside the pool: deadpool's recycling runs `UNLISTEN *`) with a poll
//! of the log as the backstop (notifications sent while disconnected are lost). A host
//! looks up in PostgreSQL the transmissions it never saw (a click that the load
//! balancer sent to it for mail another host sent).

use super::ship::{ShipBatch, SuppressionChange};
use super::{
    Account, Batch, Commit, Queued, SinkSpec, SinkStatus, SqliteStore, Store, StoreFuture,
    SuppressionEntry, SuppressionFilter, SuppressionType,
};
use crate::connlimit::Throttle;
use crate::events::{EventType, Transmission};
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// Why PostgreSQL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("[store] postgres: {0}")]
    Config(String),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: no connection: {0}")]
    Pool(String),
    #[error(
        "node_id {node_id} is already used by the live host {host} (registered since {since}): give every host its own node_id"
    )]
    NodeTaken {
        node_id: u16,
        host: String,
        since: String,
    },
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

/// The schema, one entry per version, applied once under an advisory lock (two hosts
/// starting together migrate once).
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE nodes (
    node_id integer PRIMARY KEY,
    host text NOT NULL,
    instance text NOT NULL,
    started timestamptz NOT NULL,
    heartbeat timestamptz NOT NULL
);
CREATE TABLE transmissions (
    transmission_id text PRIMARY KEY,
    created bigint NOT NULL,
    facts text NOT NULL
);
CREATE TABLE events (
    event_id bigint PRIMARY KEY,
    created bigint NOT NULL,
    type text NOT NULL,
    transmission_id text,
    node_id integer NOT NULL,
    item text NOT NULL
);
CREATE TABLE suppression (
    recipient text NOT NULL,
    account bigint NOT NULL,
    type text NOT NULL,
    source text NOT NULL,
    description text NOT NULL,
    created bigint NOT NULL,
    updated bigint NOT NULL,
    PRIMARY KEY (recipient, account, type)
);
CREATE TABLE suppression_log (
    seq bigserial PRIMARY KEY,
    change_id text NOT NULL UNIQUE,
    origin text NOT NULL,
    recipient text NOT NULL,
    account bigint NOT NULL,
    type text NOT NULL,
    source text NOT NULL,
    description text NOT NULL,
    created bigint NOT NULL,
    updated bigint NOT NULL,
    deleted boolean NOT NULL
);
"];

/// The advisory lock key of migrations ("msys" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d73_7973;
/// A host whose heartbeat is older than this is no longer live.
const LIVE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The channel of suppression changes.
const CHANNEL: &str = "msys_suppression";
/// The local cursor: the last change log sequence applied to the replica.
pub const REPLICA_CURSOR: &str = "pg_suppression_seq";
/// The local cursor: this store's own id, naming its changes in the shared log.
const ORIGIN_CURSOR: &str = "pg_origin";
const BATCH: usize = 1000;
/// The replica reads the log at least this often (notifications are lost while
/// disconnected, and a `NOTIFY` may race a reconnect).
const POLL: Duration = Duration::from_secs(1);

/// The shared database of a group of hosts.
pub struct Pg {
    pool: deadpool_postgres::Pool,
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    node_id: u16,
    host: String,
    /// This process, in `nodes` (a restarted host is a new instance of its node id).
    instance: String,
    /// The schema is migrated and this host is registered.
    ready: AtomicBool,
    /// The last change log sequence applied to the replica (for `/metrics`).
    replica_seq: AtomicI64,
    /// Unix seconds of the replica's last successful read.
    replica_synced: AtomicI64,
    errors: Throttle,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse `[store] postgres`: a URL (`postgres://user:pass@host/db?sslmode=require`) or
/// libpq's key=value form (`host=/run/postgresql dbname=msys`).
pub fn parse_config(text: &str) -> Result<tokio_postgres::Config, String> {
    let mut config = tokio_postgres::Config::from_str(text).map_err(|e| e.to_string())?;
    if config.get_hosts().is_empty() {
        return Err("names no host: add host=... (or a URL's host)".into());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A session of ours never sits in a transaction: if one does, it holds back vacuum.
    config.options("-c idle_in_transaction_session_timeout=60000");
    config.application_name("msys-milter");
    Ok(config)
}

/// Where `config` points, without the password, for logs.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    format!(
        "{}@{host}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| PgError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Pg {
    /// Set up the pool (no connection is made yet).
    pub fn new(text: &str, node_id: u16, host: &str) -> Result<Pg, PgError> {
        let config = parse_config(text).map_err(PgError::Config)?;
        let tls = tls()?;
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        Ok(Pg {
            pool,
            config,
            tls,
            node_id,
            host: host.to_owned(),
            instance: random_hex(8),
            ready: AtomicBool::new(false),
            replica_seq: AtomicI64::new(0),
            replica_synced: AtomicI64::new(0),
            errors: Throttle::new(),
        })
    }

    pub fn describe(&self) -> String {
        describe(&self.config)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool
            .get()
            .await
            .map_err(|e| PgError::Pool(e.to_string()))
    }

    /// Migrate the schema (once among hosts starting together) and register this host,
    /// refusing a node id that a live host already uses.
    pub async fn prepare(&self) -> Result<(), PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS msys_migrations (
                 version integer PRIMARY KEY,
                 applied timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let done: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM msys_migrations", &[])
            .await?
            .get(0);
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO msys_migrations (version) VALUES ($1)",
                &[&(n as i32 + 1)],
            )
            .await?;
            tracing::info!(postgres = %self.describe(), version = n + 1, "shared schema migrated");
        }
        let node = i32::from(self.node_id);
        let live = format!("{} seconds", LIVE.as_secs());
        let taken = tx
            .query_opt(
                "SELECT host, to_char(started AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM nodes WHERE node_id = $1 AND instance <> $2
                   AND heartbeat > now() - $3::text::interval",
                &[&node, &self.instance, &live],
            )
            .await?;
        if let Some(row) = taken {
            return Err(PgError::NodeTaken {
                node_id: self.node_id,
                host: row.get(0),
                since: row.get(1),
            });
        }
        tx.execute(
            "INSERT INTO nodes (node_id, host, instance, started, heartbeat)
             VALUES ($1, $2, $3, now(), now())
             ON CONFLICT (node_id) DO UPDATE SET host = excluded.host,
               instance = excluded.instance, started = excluded.started,
               heartbeat = excluded.heartbeat",
            &[&node, &self.host, &self.instance],
        )
        .await?;
        tx.commit().await?;
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), PgError> {
        self.client()
            .await?
            .execute(
                "UPDATE nodes SET heartbeat = now() WHERE node_id = $1 AND instance = $2",
                &[&i32::from(self.node_id), &self.instance],
            )
            .await?;
        Ok(())
    }

    /// Write `batch` in one transaction; shipping it again changes nothing.
    /// `origin` names this store's changes in the log.
    pub async fn ship(&self, batch: &ShipBatch, origin: &str) -> Result<(), PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let facts: Vec<_> = batch
            .transmissions
            .iter()
            .filter(|t| !t.facts.is_empty())
            .collect();
        if !facts.is_empty() {
            let ids: Vec<&str> = facts.iter().map(|t| t.transmission_id.as_str()).collect();
            let created: Vec<i64> = facts.iter().map(|t| t.created).collect();
            let text: Vec<&str> = facts.iter().map(|t| t.facts.as_str()).collect();
            tx.execute(
                "INSERT INTO transmissions (transmission_id, created, facts)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
                 ON CONFLICT DO NOTHING",
                &[&ids, &created, &text],
            )
            .await?;
        }
        let events: Vec<_> = batch.events.iter().filter(|e| !e.item.is_empty()).collect();
        if !events.is_empty() {
            let ids: Vec<i64> = events.iter().map(|e| e.event_id).collect();
            let created: Vec<i64> = events.iter().map(|e| e.created).collect();
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            let tids: Vec<Option<&str>> = events
                .iter()
                .map(|e| e.transmission_id.as_deref())
                .collect();
            let nodes: Vec<i32> = vec![i32::from(self.node_id); events.len()];
            let items: Vec<&str> = events.iter().map(|e| e.item.as_str()).collect();
            tx.execute(
                "INSERT INTO events (event_id, created, type, transmission_id, node_id, item)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::integer[], $6::text[])
                 ON CONFLICT DO NOTHING",
                &[&ids, &created, &kinds, &tids, &nodes, &items],
            )
            .await?;
        }
        if !batch.suppression.is_empty() {
            // One writer of the log at a time: sequences then commit in order, so a
            // reader that has seen N has seen everything before N.
            tx.batch_execute("LOCK TABLE suppression_log IN EXCLUSIVE MODE")
                .await?;
            let log = tx
                .prepare(
                    "INSERT INTO suppression_log (change_id, origin, recipient, account, type, source, description, created, updated, deleted)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (change_id) DO NOTHING RETURNING seq",
                )
                .await?;
            let upsert = tx
                .prepare(
                    "INSERT INTO suppression (recipient, account, type, source, description, created, updated)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (recipient, account, type) DO UPDATE SET
                       source = excluded.source, description = excluded.description, updated = excluded.updated",
                )
                .await?;
            let delete = tx
                .prepare(
                    "DELETE FROM suppression WHERE recipient = $1 AND account = $2 AND type = $3",
                )
                .await?;
            for c in &batch.suppression {
                let s = &c.entry;
                let change_id = format!("{origin}:{}", c.seq);
                let account = super::sqlite::account_key(s.account);
                let (created, updated) = (int(s.created), int(s.updated));
                let fresh = tx
                    .query_opt(
                        &log,
                        &[
                            &change_id,
                            &origin,
                            &s.recipient,
                            &account,
                            &s.kind.as_str(),
                            &s.source,
                            &s.description,
                            &created,
                            &updated,
                            &c.deleted,
                        ],
                    )
                    .await?;
                if fresh.is_none() {
                    continue; // shipped before
                }
                if c.deleted {
                    tx.execute(&delete, &[&s.recipient, &account, &s.kind.as_str()])
                        .await?;
                } else {
                    tx.execute(
                        &upsert,
                        &[
                            &s.recipient,
                            &account,
                            &s.kind.as_str(),
                            &s.source,
                            &s.description,
                            &created,
                            &updated,
                        ],
                    )
                    .await?;
                }
            }
            tx.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A transmission's facts, for a host that never saw it.
    pub async fn transmission(&self, tid: &str) -> Result<Option<Transmission>, PgError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT facts FROM transmissions WHERE transmission_id = $1",
                &[&tid],
            )
            .await?;
        Ok(row.and_then(|r| Transmission::from_json(r.get(0))))
    }

    /// Changes in the shared log after `seq`, oldest first, on `client`.
    async fn changes_after(
        client: &tokio_postgres::Client,
        seq: i64,
    ) -> Result<Vec<(SuppressionChange, String)>, PgError> {
        let rows = client
            .query(
                "SELECT seq, recipient, account, type, source, description, created, updated, deleted, origin
                 FROM suppression_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &(BATCH as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let kind: String = r.get(3);
                let change = SuppressionChange {
                    seq: r.get(0),
                    entry: SuppressionEntry {
                        recipient: r.get(1),
                        account: super::sqlite::account_of(r.get(2)),
                        kind: SuppressionType::parse(&kind)
                            .unwrap_or(SuppressionType::NonTransactional),
                        source: r.get(4),
                        description: r.get(5),
                        created: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                        updated: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
                    },
                    deleted: r.get(8),
                };
                (change, r.get::<_, String>(9))
            })
            .collect())
    }

    fn warn(&self, what: &str, e: &PgError) {
        if self.errors.ready() {
            tracing::warn!(postgres = %self.describe(), "{what} (mail flows on; logged once a minute): {e}");
        }
    }

    /// How far the replica has read (`/metrics`): the change log sequence and the age
    /// in seconds of its last successful read (`None` before the first).
    pub fn replica_state(&self) -> (i64, Option<u64>) {
        let synced = self.replica_synced.load(Ordering::Relaxed);
        let age = (synced > 0).then(|| crate::ids::unix_secs().saturating_sub(synced as u64));
        (self.replica_seq.load(Ordering::Relaxed), age)
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// This store's name in the shared log, made once and kept in the store.
async fn origin(local: &SqliteStore) -> Result<String, super::StoreError> {
    if let Some(o) = local.cursor(ORIGIN_CURSOR).await? {
        return Ok(o);
    }
    let made = random_hex(12);
    local
        .commit(Commit {
            cursor: Some((ORIGIN_CURSOR.into(), made.clone())),
            ..Commit::default()
        })
        .await?;
    Ok(made)
}

/// Ship what this host committed, for as long as the daemon runs.
pub async fn ship_forever(local: Arc<SqliteStore>, pg: Arc<Pg>) {
    let origin = loop {
        match origin(&local).await {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!("cannot name this store for the shared log: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let committed = local.committed();
    let mut pause = Duration::from_millis(200);
    let mut last_heartbeat = std::time::Instant::now();
    loop {
        if !pg.ready.load(Ordering::Relaxed) {
            match pg.prepare().await {
                Ok(()) => {
                    tracing::info!(postgres = %pg.describe(), node_id = pg.node_id, "registered with the shared store; shipping")
                }
                Err(e @ PgError::NodeTaken { .. }) => {
                    // Transmission ids would collide: shipping would mix two hosts.
                    if pg.errors.ready() {
                        tracing::error!("not shipping to the shared store: {e}");
                    }
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    continue;
                }
                Err(e) => {
                    pg.warn("the shared store does not answer", &e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }
        if last_heartbeat.elapsed() >= HEARTBEAT {
            last_heartbeat = std::time::Instant::now();
            if let Err(e) = pg.heartbeat().await {
                pg.warn("heartbeat failed", &e);
            }
        }
        let batch = match local.ship_batch(BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot read what to ship: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Ok(backlog) = local.ship_backlog() {
            crate::metrics::global().ship_backlog(backlog);
        }
        if batch.is_empty() {
            pause = Duration::from_millis(200);
            let _ = tokio::time::timeout(Duration::from_millis(200), committed.notified()).await;
            continue;
        }
        let full = batch.events.len() >= BATCH
            || batch.transmissions.len() >= BATCH
            || batch.suppression.len() >= BATCH;
        match pg.ship(&batch, &origin).await {
            Ok(()) => {
                pause = Duration::from_millis(200);
                if let Err(e) = local.shipped(batch).await {
                    tracing::error!(
                        "shipped, but cannot mark it (it will be shipped again, harmlessly): {e}"
                    );
                }
                if !full {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), committed.notified()).await;
                }
            }
            Err(e) => {
                pg.warn("shipping failed, kept locally", &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Keep the local suppression list a replica of the shared one, for as long as the
/// daemon runs: LISTEN first, then read the log past the last change seen; again at
/// every notification and every second; after a lost connection, the same from the
/// start.
pub async fn replicate_forever(local: Arc<SqliteStore>, pg: Arc<Pg>) {
    let own = loop {
        match origin(&local).await {
            Ok(o) => break o,
            Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    };
    let mut pause = Duration::from_millis(200);
    loop {
        match replicate(&local, &pg, &own).await {
            Ok(()) => pause = Duration::from_millis(200),
            Err(e) => {
                pg.warn("the suppression replica lost the shared store", &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn replicate(local: &SqliteStore, pg: &Pg, own: &str) -> Result<(), PgError> {
    let (client, mut connection) = pg.config.connect(pg.tls.clone()).await?;
    let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = wake.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        let _ = closed_tx.send(());
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let mut seq: i64 = local
        .cursor(REPLICA_CURSOR)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    loop {
        let changes = Pg::changes_after(&client, seq).await?;
        let now = crate::ids::unix_secs();
        pg.replica_synced.store(int(now), Ordering::Relaxed);
        if let Some((last, _)) = changes.last() {
            let last = last.seq;
            let n = changes.len();
            let theirs: Vec<SuppressionChange> = changes
                .into_iter()
                .filter(|(_, origin)| origin != own)
                .map(|(c, _)| c)
                .collect();
            local
                .apply_remote(theirs, (REPLICA_CURSOR.into(), last.to_string()))
                .await
                .map_err(|e| PgError::Pool(format!("local replica: {e}")))?;
            seq = last;
            pg.replica_seq.store(seq, Ordering::Relaxed);
            if n >= BATCH {
                continue;
            }
        }
        crate::metrics::global().replica(seq, now);
        tokio::select! {
            _ = woken.recv() => {}
            _ = &mut closed => return Err(PgError::Pool("the listening connection closed".into())),
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The local store, with the group's transmissions in PostgreSQL behind it.
pub struct SharedStore {
    pub local: Arc<SqliteStore>,
    pub pg: Arc<Pg>,
}

impl Store for SharedStore {
    fn commit(&self, commit: Commit) -> StoreFuture<'_, ()> {
        self.local.commit(commit)
    }

    fn suppressed<'a>(
        &'a self,
        account: Account,
        kind: SuppressionType,
        recipients: &'a [String],
    ) -> StoreFuture<'a, Vec<String>> {
        self.local.suppressed(account, kind, recipients)
    }

    fn transmission<'a>(&'a self, tid: &'a str) -> StoreFuture<'a, Option<Transmission>> {
        Box::pin(async move {
            if let Some(t) = self.local.transmission(tid).await? {
                return Ok(Some(t));
            }
            // Sent through another host: its facts are in the shared store. Without an
            // answer the event still goes out, with what the token says.
            match tokio::time::timeout(Duration::from_secs(2), self.pg.transmission(tid)).await {
                Ok(Ok(t)) => Ok(t),
                Ok(Err(e)) => {
                    self.pg.warn("cannot look up a transmission", &e);
                    Ok(None)
                }
                Err(_) => {
                    self.pg.warn(
                        "cannot look up a transmission",
                        &PgError::Timeout(Duration::from_secs(2)),
                    );
                    Ok(None)
                }
            }
        })
    }

    fn queued<'a>(&'a self, queue_ids: &'a [String]) -> StoreFuture<'a, Vec<Queued>> {
        self.local.queued(queue_ids)
    }

    fn cursor<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<String>> {
        self.local.cursor(name)
    }

    fn set_sinks(&self, sinks: Vec<SinkSpec>) {
        self.local.set_sinks(sinks)
    }

    fn committed(&self) -> Arc<tokio::sync::Notify> {
        self.local.committed()
    }

    fn next_batch<'a>(
        &'a self,
        sink: &'a str,
        max: usize,
        new_batch_id: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Option<Batch>> {
        self.local.next_batch(sink, max, new_batch_id, now)
    }

    fn batch_delivered<'a>(&'a self, sink: &'a str, batch_id: &'a str) -> StoreFuture<'a, ()> {
        self.local.batch_delivered(sink, batch_id)
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
        self.local
            .batch_failed(sink, batch_id, error, now, next_attempt, give_up)
    }

    fn sink_status(&self) -> StoreFuture<'_, Vec<SinkStatus>> {
        self.local.sink_status()
    }

    fn replay<'a>(&'a self, since: u64, sinks: &'a [String]) -> StoreFuture<'a, u64> {
        self.local.replay(since, sinks)
    }

    fn events_after(
        &self,
        after: u64,
        max: usize,
    ) -> StoreFuture<'_, Vec<(u64, EventType, String)>> {
        self.local.events_after(after, max)
    }

    fn suppression_list(
        &self,
        filter: SuppressionFilter,
    ) -> StoreFuture<'_, Vec<SuppressionEntry>> {
        self.local.suppression_list(filter)
    }

    fn suppression_remove(&self, filter: SuppressionFilter) -> StoreFuture<'_, u64> {
        self.local.suppression_remove(filter)
    }

    fn prune(&self, events_before: u64, transmissions_before: u64) -> StoreFuture<'_, u64> {
        self.local.prune(events_before, transmissions_before)
    }
}
