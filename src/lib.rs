//! msys-milter: SparkPost's X-MSYS-API SMTP-injection features for Postfix and Sendmail.

pub mod api;
pub mod config;
pub mod explain;
pub mod http;
pub mod ids;
pub mod milter;
pub mod mime;
pub mod reinject;
pub mod render;
pub mod tracking;

pub use config::Config;

use std::future::Future;
use std::sync::Arc;

/// A running milter's handle: serve connections, reload the configuration.
pub struct Daemon {
    shared: Arc<milter::session::Shared>,
}

impl Daemon {
    pub fn new(config: Config) -> std::io::Result<Self> {
        Ok(Self {
            shared: Arc::new(milter::session::Shared::new(config)?),
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
