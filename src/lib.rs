//! msys-milter: SparkPost's X-MSYS-API SMTP-injection features for Postfix and Sendmail.

pub mod api;
pub mod config;
pub mod explain;
pub mod ids;

pub use config::Config;
pub mod milter;

use std::future::Future;
use std::sync::Arc;

/// Run the milter on `listener` with `config` until `shutdown` completes.
pub async fn run(
    listener: milter::MilterListener,
    config: Config,
    shutdown: impl Future,
) -> std::io::Result<()> {
    milter::run(
        listener,
        Arc::new(milter::session::Shared::new(config)),
        shutdown,
    )
    .await
}
