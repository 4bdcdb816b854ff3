//! msys-milter: SparkPost's X-MSYS-API SMTP-injection features for Postfix and Sendmail.

pub mod admin;
pub mod api;
pub mod blocking;
pub mod config;
pub mod connlimit;
pub mod dkim;
pub mod events;
pub mod explain;
pub mod failpoint;
pub mod feedback;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod ids;
pub mod ledger;
pub mod metrics;
pub mod milter;
pub mod mime;
pub mod netguard;
pub mod pipeline;
pub mod record;
pub mod reinject;
pub mod render;
pub mod rest;
pub mod store;
pub mod suppression;
pub mod tracking;

pub use config::Config;

use std::future::Future;
use std::sync::Arc;

/// A running milter's handle: serve connections, reload the configuration.
pub struct Daemon {
    shared: Arc<milter::session::Shared>,
}

/// Open the configured store (`[store]`), or the default one.
pub fn open_store(config: &Config) -> Result<Arc<dyn store::Store>, store::StoreError> {
    if !config.store.enabled {
        tracing::warn!("[store] enabled = false: no events are recorded and nobody is suppressed");
        return Ok(Arc::new(store::NullStore::new()));
    }
    let (store, path, why) = open_sqlite(config)?;
    tracing::info!(store = %path.display(), chosen_by = why, "store opened");
    Ok(Arc::new(store))
}

/// The configured SQLite file (or the default one), where it is and what chose it.
fn open_sqlite(
    config: &Config,
) -> Result<(store::SqliteStore, std::path::PathBuf, &'static str), store::StoreError> {
    let (path, why) = match &config.store.path {
        Some(path) => (path.clone(), "[store] path"),
        None => store::default_path(),
    };
    let durability = match config.store.durability {
        config::Durability::Full => store::sqlite::Durability::Full,
        config::Durability::Normal => store::sqlite::Durability::Normal,
    };
    let store = store::SqliteStore::open(&path, durability)?;
    store.set_counting(config.store.counters);
    store.set_write_timeout(std::time::Duration::from_secs(
        config.store.write_timeout.0 as u64,
    ));
    Ok((store, path, why))
}

/// The store the admin verbs use: [`open_store`]; with `[store] postgres`, the host's
/// store with the group's webhook batches behind it (`webhooks status`, `events
/// replay`), and what a verb changes (suppression entries) queued for the daemon's
/// shipper, so it reaches every host. No registration, no tasks: the daemon does that.
pub fn open_admin_store(config: &Config, host: &str) -> Result<Arc<dyn store::Store>, OpenError> {
    // An admin verb (a replay of a million events) may write for long; nobody's mail
    // waits for it.
    let mut config = config.clone();
    config.store.write_timeout = config::AtLeastOne(3600);
    let config = &config;
    match open_group_parts(config, host)? {
        None => Ok(open_store(config)?),
        Some(g) => Ok(Arc::new(store::postgres::SharedStore::new(
            g.local,
            Arc::new(g.pg),
        ))),
    }
}

/// A host of a group: its SQLite store, queueing what it commits for shipping, and the
/// group's database (not connected yet).
struct GroupParts {
    local: Arc<store::SqliteStore>,
    pg: store::postgres::Pg,
    /// Where the local file is, and what chose it.
    path: std::path::PathBuf,
    why: &'static str,
}

/// [`GroupParts`] with `[store] postgres` (and the store on); `None` for a host alone.
fn open_group_parts(config: &Config, host: &str) -> Result<Option<GroupParts>, OpenError> {
    let Some(url) = config
        .store
        .postgres
        .as_deref()
        .filter(|_| config.store.enabled)
    else {
        return Ok(None);
    };
    let (local, path, why) = open_sqlite(config)?;
    local.set_shipping(true);
    let pg = store::postgres::Pg::with_ca(
        url,
        config.node_id.0,
        host,
        config.store.postgres_ca.as_deref(),
    )?
    .with_lease(std::time::Duration::from_secs(
        config.store.webhook_lease_seconds.0 as u64,
    ));
    Ok(Some(GroupParts {
        local: Arc::new(local),
        pg,
        path,
        why,
    }))
}

/// Why the daemon's store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Shared(#[from] store::postgres::PgError),
}

/// The daemon's store: [`open_store`], and with `[store] postgres` the group's shared
/// store behind it, its shipper and suppression replica running as tasks. Refuses to
/// start when another live host uses this `node_id`; starts anyway when PostgreSQL does
/// not answer (mail never waits on it) and registers as soon as it does.
pub async fn open_daemon_store(
    config: &Config,
    host: &str,
) -> Result<Arc<dyn store::Store>, OpenError> {
    let Some(GroupParts {
        local,
        pg,
        path,
        why,
    }) = open_group_parts(config, host)?
    else {
        return Ok(open_store(config)?);
    };
    let pg = Arc::new(pg);
    tracing::info!(store = %path.display(), chosen_by = why, shared = %pg.describe(), "store opened, shared through PostgreSQL");
    let wait = std::time::Duration::from_secs(5);
    match tokio::time::timeout(wait, pg.prepare()).await {
        Ok(Ok(())) => {
            tracing::info!(shared = %pg.describe(), node_id = config.node_id.0, "registered with the shared store")
        }
        Ok(Err(e @ store::postgres::PgError::NodeTaken { .. })) => return Err(e.into()),
        Ok(Err(e)) => tracing::warn!(
            shared = %pg.describe(),
            "the shared store does not answer: starting anyway (mail never waits on it); registering and shipping as soon as it does: {e}"
        ),
        Err(_) => tracing::warn!(
            shared = %pg.describe(),
            "the shared store did not answer within {wait:?}: starting anyway; registering and shipping as soon as it does"
        ),
    }
    let shared = store::postgres::SharedStore::new(Arc::clone(&local), Arc::clone(&pg));
    // Known before anything is shipped: what is shipped is queued for these webhooks.
    let sinks = events::sink::configured(config)
        .map(|sinks| sinks.into_iter().map(|s| s.spec).collect())
        .unwrap_or_default();
    store::Store::set_sinks(&shared, sinks);
    tokio::spawn(store::postgres::ship_forever(
        Arc::clone(&local),
        Arc::clone(&pg),
    ));
    tokio::spawn(store::postgres::replicate_forever(local, pg));
    Ok(Arc::new(shared))
}

impl Daemon {
    /// A daemon with the configured store and its own id generator.
    pub fn new(config: Config) -> std::io::Result<Self> {
        let store = open_store(&config).map_err(std::io::Error::other)?;
        let ids = Arc::new(ids::IdGenerator::new(config.node_id.0));
        Self::with_store(config, store, ids)
    }

    /// A daemon sharing `store` and `ids` with the HTTP endpoint and the sinks.
    pub fn with_store(
        config: Config,
        store: Arc<dyn store::Store>,
        ids: Arc<ids::IdGenerator>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            shared: Arc::new(milter::session::Shared::new(config, store, ids)?),
        })
    }

    /// Serve the milter protocol on `listener` until `shutdown` completes; messages being
    /// processed finish first.
    pub async fn run(
        &self,
        listener: milter::MilterListener,
        shutdown: impl Future,
    ) -> std::io::Result<()> {
        milter::run(listener, Arc::clone(&self.shared), shutdown).await
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.shared.settings().config.clone()
    }

    /// Apply a new configuration to messages that start from now on.
    pub fn reload(&self, config: Config) {
        self.shared.reload(config);
    }
}

/// Run the milter on `listener` with `config` until `shutdown` completes.
pub async fn run(
    listener: milter::MilterListener,
    config: Config,
    shutdown: impl Future,
) -> std::io::Result<()> {
    Daemon::new(config)?.run(listener, shutdown).await
}
