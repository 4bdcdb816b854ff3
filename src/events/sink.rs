//! Delivering each sink's queue: one task per sink, one batch in flight at a time (so
//! order is kept), retried with exponential back-off and jitter until acknowledged or
//! the retry period is over; then the batch is kept as failed, never dropped. A dead
//! sink only holds back itself: mail never waits for a sink.

use super::webhook::Target;
use crate::ids::{IdGenerator, unix_secs as now};
use crate::store::{SinkSpec, Store};
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Longest wait between two attempts (SparkPost's cap).
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How often a sink looks for events committed by another process (the CLI's replay).
const POLL: Duration = Duration::from_secs(1);

/// One sink and how it batches.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub spec: SinkSpec,
    pub target: Target,
    pub batch_size: usize,
    pub batch_wait: Duration,
    /// How long a batch is retried before it is kept as failed.
    pub retry_for: Duration,
}

/// The sinks a configuration asks for: every `[[webhook]]`, and `[events] jsonl`.
pub fn configured(config: &crate::Config) -> Result<Vec<SinkConfig>, reqwest::Error> {
    let mut out = Vec::new();
    for hook in &config.webhooks {
        out.push(SinkConfig {
            spec: SinkSpec {
                name: hook.sink_name(),
                types: hook.events.as_ref().map(|names| {
                    names
                        .iter()
                        .filter_map(|n| super::EventType::parse(n))
                        .collect()
                }),
            },
            target: target_of(hook)?,
            batch_size: hook.batch_size,
            batch_wait: Duration::from_millis(hook.batch_wait_ms),
            retry_for: Duration::from_secs(hook.retry_hours * 3600),
        });
    }
    if let Some(path) = &config.events.jsonl {
        out.push(SinkConfig {
            spec: SinkSpec {
                name: crate::config::JSONL_SINK.to_owned(),
                types: None,
            },
            target: Target::Jsonl(path.clone()),
            batch_size: 1000,
            batch_wait: Duration::from_millis(200),
            retry_for: Duration::from_secs(72 * 3600),
        });
    }
    Ok(out)
}

/// Where a `[[webhook]]` posts, with its credentials.
pub fn target_of(hook: &crate::config::Webhook) -> Result<Target, reqwest::Error> {
    use super::webhook::Auth;
    let auth = match (&hook.basic, &hook.bearer) {
        (Some(b), _) => Auth::Basic(b.clone()),
        (None, Some(t)) => Auth::Bearer(t.clone()),
        (None, None) => Auth::None,
    };
    Target::webhook(&hook.url, auth)
}

/// The sink name of a webhook made through the REST API.
pub fn api_sink_name(id: &str) -> String {
    format!("webhook:api:{id}")
}

/// A webhook made through the REST API as a sink (`None` when inactive or unusable):
/// SparkPost's object (`target`, `events`, `auth_type` none or basic with
/// `auth_credentials`, `custom_headers`), sent like a `[[webhook]]`.
///
/// It posts only where `reach` permits: a target that names an address it may not reach
/// is unusable (logged), a name is checked each time it resolves.
pub fn from_api(
    hook: &crate::store::query::StoredWebhook,
    reach: &Arc<crate::netguard::Reach>,
) -> Option<SinkConfig> {
    use super::webhook::Auth;
    use serde_json::Value;
    let spec: Value = serde_json::from_str(&hook.spec).ok()?;
    if spec.get("active").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let target = spec.get("target")?.as_str()?;
    if let Err(why) = reqwest::Url::parse(target)
        .map_err(|e| e.to_string())
        .and_then(|url| reach.check_literal(&url))
    {
        tracing::warn!(webhook = %hook.id, "webhook not used: {why}");
        return None;
    }
    let auth = match spec.get("auth_type").and_then(Value::as_str) {
        Some("basic") => {
            let c = spec.get("auth_credentials")?;
            let user = c
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let password = c
                .get("password")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Auth::Basic(format!("{user}:{password}"))
        }
        _ => Auth::None,
    };
    let headers = spec
        .get("custom_headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let types = spec.get("events").and_then(Value::as_array).map(|names| {
        names
            .iter()
            .filter_map(|n| super::EventType::parse(n.as_str()?))
            .collect()
    });
    Some(SinkConfig {
        spec: SinkSpec {
            name: api_sink_name(&hook.id),
            types,
        },
        target: Target::webhook_within(target, auth, Some(Arc::clone(reach)))
            .ok()?
            .with_headers(headers),
        batch_size: 100,
        batch_wait: Duration::from_millis(1000),
        retry_for: Duration::from_secs(72 * 3600),
    })
}

/// The configured sinks and the webhooks made through the REST API.
pub async fn all(
    config: &crate::Config,
    store: &dyn Store,
) -> Result<Vec<SinkConfig>, reqwest::Error> {
    let mut sinks = configured(config)?;
    match store.api_webhooks().await {
        Ok(hooks) => {
            let reach = Arc::new(crate::netguard::Reach::of(config));
            sinks.extend(hooks.iter().filter_map(|h| from_api(h, &reach)));
        }
        Err(e) => tracing::error!("cannot read the webhooks made through the API: {e}"),
    }
    Ok(sinks)
}

/// The running sink tasks; dropping it stops them (a batch in flight is retried later
/// under the same id).
pub struct Sinks {
    tasks: JoinSet<()>,
}

impl Sinks {
    /// Register the sinks with the store and start delivering.
    pub fn start(store: &Arc<dyn Store>, ids: &Arc<IdGenerator>, sinks: Vec<SinkConfig>) -> Sinks {
        store.set_sinks(sinks.iter().map(|s| s.spec.clone()).collect());
        let mut tasks = JoinSet::new();
        for sink in sinks {
            tasks.spawn(run(Arc::clone(store), Arc::clone(ids), sink));
        }
        Sinks { tasks }
    }

    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random number (the standard library's per-instance hasher keys are random).
fn random() -> u64 {
    std::hash::RandomState::new().build_hasher().finish()
}

/// Wait before attempt `attempts + 1`: 1 s doubling up to [`MAX_BACKOFF`], a random
/// part in [half, full] so many hosts do not retry in step.
pub fn backoff(attempts: u32) -> Duration {
    let full = Duration::from_secs(1u64 << attempts.min(10)).min(MAX_BACKOFF);
    let half = full / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(0).max(1);
    half + Duration::from_millis(random() % (spread + 1))
}

async fn run(store: Arc<dyn Store>, ids: Arc<IdGenerator>, sink: SinkConfig) {
    let name = sink.spec.name.as_str();
    let committed = store.committed();
    loop {
        let new_id = match ids.next() {
            Ok(id) => id.to_string(),
            Err(e) => {
                tracing::error!(sink = name, "no batch id: {e}");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let batch = match store
            .next_batch(name, sink.batch_size, &new_id, now())
            .await
        {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                // Nothing pending: wait for a commit, then let a batch fill up.
                let notified = committed.notified();
                let _ = tokio::time::timeout(POLL, notified).await;
                tokio::time::sleep(sink.batch_wait).await;
                continue;
            }
            Err(e) => {
                tracing::error!(sink = name, "cannot read the queue: {e}");
                tokio::time::sleep(POLL * 5).await;
                continue;
            }
        };
        if let Some(at) = batch.next_attempt {
            let wait = at.saturating_sub(now());
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        let started = std::time::Instant::now();
        match sink.target.deliver(&batch.batch_id, &batch.items).await {
            Ok(()) => {
                tracing::debug!(sink = name, batch_id = %batch.batch_id, events = batch.items.len(), ms = started.elapsed().as_millis() as u64, "batch delivered");
                crate::metrics::global().sink_delivered(name, batch.items.len());
                if let Err(e) = store.batch_delivered(name, &batch.batch_id).await {
                    // It will be sent again under the same id: consumers dedupe.
                    tracing::error!(sink = name, batch_id = %batch.batch_id, "delivered, but cannot record it: {e}");
                    tokio::time::sleep(POLL).await;
                } else if batch.items.len() < sink.batch_size {
                    // The queue is drained: let the next batch fill up rather than send
                    // a few events at a time (each batch costs the sink and the store
                    // two transactions and a request, whatever its size).
                    tokio::time::sleep(sink.batch_wait).await;
                }
            }
            Err(error) => {
                let now = now();
                let since = batch.failing_since.unwrap_or(now);
                let give_up = now.saturating_sub(since) >= sink.retry_for.as_secs();
                let wait = backoff(batch.attempts);
                crate::metrics::global().sink_failed(name);
                if give_up {
                    tracing::error!(sink = name, batch_id = %batch.batch_id, events = batch.items.len(), "giving up after {} attempts (kept as failed; `msys-milter events replay` sends it again): {error}", batch.attempts + 1);
                } else {
                    tracing::warn!(sink = name, batch_id = %batch.batch_id, attempt = batch.attempts + 1, retry_in_s = wait.as_secs(), "batch not delivered: {error}");
                }
                let next = now + wait.as_secs().max(1);
                if let Err(e) = store
                    .batch_failed(name, &batch.batch_id, &error, now, next, give_up)
                    .await
                {
                    tracing::error!(sink = name, "cannot record the failure: {e}");
                }
                if !give_up {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        for attempts in 0..40 {
            let d = backoff(attempts);
            let full = Duration::from_secs(1u64 << attempts.min(10)).min(MAX_BACKOFF);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
        assert!(backoff(30) <= MAX_BACKOFF);
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(8)).collect();
        assert!(spread.len() > 1, "jitter");
    }
}
