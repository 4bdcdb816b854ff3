//! msys-milter: SparkPost's X-MSYS-API SMTP-injection features for Postfix and Sendmail.

pub mod admin;
pub mod api;
pub mod config;
pub mod connlimit;
pub mod dkim;
pub mod events;
pub mod explain;
pub mod feedback;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod milter;
pub mod mime;
pub mod record;
pub mod reinject;
pub mod render;
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
    let (path, why) = match &config.store.path {
        Some(path) => (path.clone(), "[store] path"),
        None => store::default_path(),
    };
    let durability = match config.store.durability {
        config::Durability::Full => store::sqlite::Durability::Full,
        config::Durability::Normal => store::sqlite::Durability::Normal,
    };
    let store = store::SqliteStore::open(&path, durability)?;
    tracing::info!(store = %path.display(), chosen_by = why, "store opened");
    Ok(Arc::new(store))
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
