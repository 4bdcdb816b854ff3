//! msys-milter: SparkPost's X-MSYS-API SMTP-injection features for Postfix and Sendmail.

pub mod api;
pub mod config;
pub mod explain;
pub mod ids;
pub mod milter;
pub mod reinject;

pub use config::Config;

use std::future::Future;
use std::sync::Arc;

/// Run the milter on `listener` with `config` until `shutdown` completes.
pub async fn run(
    listener: milter::MilterListener,
    config: Config,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let shared = milter::session::Shared::new(config)?;
    milter::run(listener, Arc::new(shared), shutdown).await
}
