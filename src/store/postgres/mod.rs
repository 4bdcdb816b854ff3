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
use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod shared;
mod shipping;
mod webhooks;

pub use shared::SharedStore;
pub use shipping::{replicate_forever, ship_forever};

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
const MIGRATIONS: &[&str] = &[
    r"
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
",
    // Webhook batches made once for the group: each event is sealed into exactly one
    // batch per webhook; any host sends a batch under a lease (expiry from the database
    // clock, a token every renewal and acknowledgement must match). Small rows apart
    // from the events' payloads; done rows are deleted.
    r"
CREATE TABLE webhook_queue (
    sink text NOT NULL,
    event_id bigint NOT NULL,
    batch_id text,
    PRIMARY KEY (sink, event_id)
);
CREATE INDEX webhook_queue_batch ON webhook_queue (sink, batch_id);
CREATE TABLE webhook_batches (
    sink text NOT NULL,
    batch_id text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    first_failure bigint,
    next_attempt bigint,
    last_error text,
    lease_until timestamptz,
    lease_token bigint NOT NULL DEFAULT 0,
    holder text,
    PRIMARY KEY (sink, batch_id)
);
CREATE INDEX webhook_batches_pending ON webhook_batches (sink, created) WHERE state = 'pending';
",
    // What each host has not shipped yet, as of its last heartbeat.
    r"
ALTER TABLE nodes ADD COLUMN backlog bigint NOT NULL DEFAULT 0;
",
];

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
    errors: Throttle,
    /// The webhooks whose batches are made here (the same on every host).
    sinks: std::sync::RwLock<Vec<SinkSpec>>,
    /// How long a claimed batch stays this host's without a renewal.
    lease: Duration,
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

/// TLS for `sslmode=require` (and `prefer`): the system's roots, and `ca` (PEM) when
/// the server's certificate comes from a private CA. The server's name (or address)
/// must match its certificate.
fn tls(ca: Option<&std::path::Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| PgError::Config(format!("postgres_ca {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in certs {
            let cert =
                cert.map_err(|e| PgError::Config(format!("postgres_ca {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| PgError::Config(format!("postgres_ca {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(PgError::Config(format!(
                "postgres_ca {}: no certificate in it",
                path.display()
            )));
        }
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
        Self::with_ca(text, node_id, host, None)
    }

    /// [`Pg::new`], trusting the server certificates `ca` (PEM) signs too.
    pub fn with_ca(
        text: &str,
        node_id: u16,
        host: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Pg, PgError> {
        let config = parse_config(text).map_err(PgError::Config)?;
        let tls = tls(ca)?;
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
            errors: Throttle::new(),
            sinks: std::sync::RwLock::new(Vec::new()),
            lease: Duration::from_secs(30),
        })
    }

    /// A claimed webhook batch is this host's for `lease` without a renewal (renewed
    /// every third of it while it is being sent).
    pub fn with_lease(mut self, lease: Duration) -> Pg {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    fn webhook_sinks(&self) -> Vec<SinkSpec> {
        self.sinks.read().map(|s| s.clone()).unwrap_or_default()
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

    async fn heartbeat(&self, backlog: u64) -> Result<(), PgError> {
        self.client()
            .await?
            .execute(
                "UPDATE nodes SET heartbeat = now(), backlog = $3 WHERE node_id = $1 AND instance = $2",
                &[&i32::from(self.node_id), &self.instance, &int(backlog)],
            )
            .await?;
        Ok(())
    }

    /// The hosts registered in the group, with their heartbeat's age and backlog.
    pub async fn hosts(&self) -> Result<Vec<crate::store::HostStatus>, PgError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT node_id, host, extract(epoch FROM now() - heartbeat)::bigint, backlog
                 FROM nodes ORDER BY node_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| crate::store::HostStatus {
                node_id: u16::try_from(r.get::<_, i32>(0)).unwrap_or(0),
                host: r.get(1),
                heartbeat_age: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                backlog: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            })
            .collect())
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

    /// Forget delivered events and old transmissions in the group's store, as each
    /// host does in its own.
    pub async fn prune(
        &self,
        events_before: u64,
        transmissions_before: u64,
    ) -> Result<u64, PgError> {
        let client = self.client().await?;
        let events = client
            .execute(
                "DELETE FROM events WHERE created < $1 AND NOT EXISTS
                   (SELECT 1 FROM webhook_queue q WHERE q.event_id = events.event_id)",
                &[&int(events_before)],
            )
            .await?;
        let transmissions = client
            .execute(
                "DELETE FROM transmissions WHERE created < $1",
                &[&int(transmissions_before)],
            )
            .await?;
        Ok(events + transmissions)
    }

    fn warn(&self, what: &str, e: &PgError) {
        if self.errors.ready() {
            tracing::warn!(postgres = %self.describe(), "{what} (mail flows on; logged once a minute): {e}");
        }
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
