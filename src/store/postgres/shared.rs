//! The store a host of a group uses: its local SQLite store, with the group's
//! transmissions and webhook batches in PostgreSQL behind it.

use super::*;

/// The local store, with the group's shared data in PostgreSQL behind it: its
/// transmissions, and the webhook batches, which any host of the group sends.
pub struct SharedStore {
    pub local: Arc<SqliteStore>,
    pub pg: Arc<Pg>,
    /// The webhook batches this host holds: their lease token and the task renewing it.
    leases: std::sync::Mutex<HashMap<BatchKey, Held>>,
}

/// A webhook batch: (sink, batch id).
type BatchKey = (String, String);
/// A batch this host holds: its lease token and the task renewing the lease.
type Held = (i64, tokio::task::JoinHandle<()>);

/// The local file sink's events never leave the host; webhooks' are the group's.
fn is_local_sink(sink: &str) -> bool {
    sink == crate::config::JSONL_SINK
}

impl SharedStore {
    pub fn new(local: Arc<SqliteStore>, pg: Arc<Pg>) -> SharedStore {
        SharedStore {
            local,
            pg,
            leases: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn take_lease(&self, sink: &str, batch_id: &str) -> Option<i64> {
        let held = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(sink.to_owned(), batch_id.to_owned()));
        held.map(|(token, renewing)| {
            renewing.abort();
            token
        })
    }

    /// Hold `batch` while it is sent: renew its lease every third of its time.
    fn hold(&self, sink: &str, batch_id: &str, token: i64) {
        let pg = Arc::clone(&self.pg);
        let (s, b) = (sink.to_owned(), batch_id.to_owned());
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(pg.lease / 3).await;
                match pg.renew(&s, &b, token).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(sink = %s, batch_id = %b, "lost the lease of a webhook batch: another host sends it now");
                        return;
                    }
                    // Tried again; if it cannot be renewed in time another host takes
                    // the batch, and this host's acknowledgement is then refused.
                    Err(e) => pg.warn("cannot renew a webhook batch's lease", &e),
                }
            }
        });
        if let Some((_, old)) = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((sink.to_owned(), batch_id.to_owned()), (token, renewing))
        {
            old.abort();
        }
    }
}

fn shared_error(e: PgError) -> crate::store::StoreError {
    crate::store::StoreError::Shared(e.to_string())
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
        let (local, shared): (Vec<SinkSpec>, Vec<SinkSpec>) =
            sinks.into_iter().partition(|s| is_local_sink(&s.name));
        self.local.set_sinks(local);
        match self.pg.sinks.write() {
            Ok(mut s) => *s = shared,
            Err(p) => *p.into_inner() = shared,
        }
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
        if is_local_sink(sink) {
            return self.local.next_batch(sink, max, new_batch_id, now);
        }
        Box::pin(async move {
            let claimed = self
                .pg
                .claim(sink, max, new_batch_id, now)
                .await
                .map_err(shared_error)?;
            Ok(claimed.map(|(batch, token)| {
                self.hold(sink, &batch.batch_id, token);
                batch
            }))
        })
    }

    fn batch_delivered<'a>(&'a self, sink: &'a str, batch_id: &'a str) -> StoreFuture<'a, ()> {
        if is_local_sink(sink) {
            return self.local.batch_delivered(sink, batch_id);
        }
        Box::pin(async move {
            let Some(token) = self.take_lease(sink, batch_id) else {
                return Ok(());
            };
            if !self
                .pg
                .ack(sink, batch_id, token)
                .await
                .map_err(shared_error)?
            {
                tracing::warn!(
                    sink,
                    batch_id,
                    "a late acknowledgement was refused: this host's lease of the batch had expired and another host took it over"
                );
            }
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
        if is_local_sink(sink) {
            return self
                .local
                .batch_failed(sink, batch_id, error, now, next_attempt, give_up);
        }
        Box::pin(async move {
            let Some(token) = self.take_lease(sink, batch_id) else {
                return Ok(());
            };
            self.pg
                .fail(sink, batch_id, token, error, now, next_attempt, give_up)
                .await
                .map_err(shared_error)?;
            Ok(())
        })
    }

    fn sink_status(&self) -> StoreFuture<'_, Vec<SinkStatus>> {
        Box::pin(async move {
            let mut status = self.local.sink_status().await?;
            status.retain(|s| is_local_sink(&s.sink));
            status.extend(self.pg.sink_status().await.map_err(shared_error)?);
            Ok(status)
        })
    }

    fn replay<'a>(&'a self, since: u64, sinks: &'a [String]) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let (local, shared): (Vec<String>, Vec<String>) =
                sinks.iter().cloned().partition(|s| is_local_sink(s));
            let mut n = self.local.replay(since, &local).await?;
            if !shared.is_empty() {
                n += self.pg.replay(since, &shared).await.map_err(shared_error)?;
            }
            Ok(n)
        })
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

    // The suppression list is the group's in the local replica; events and counters
    // are this host's own.
    fn suppression_search(
        &self,
        q: crate::store::query::SuppressionQuery,
    ) -> StoreFuture<'_, crate::store::query::SuppressionPage> {
        self.local.suppression_search(q)
    }

    fn suppression_summary(
        &self,
        account: Option<crate::store::Account>,
    ) -> StoreFuture<'_, Vec<(String, u64)>> {
        self.local.suppression_summary(account)
    }

    fn event_search(
        &self,
        q: crate::store::query::EventQuery,
    ) -> StoreFuture<'_, crate::store::query::EventPage> {
        self.local.event_search(q)
    }

    fn metrics(
        &self,
        q: crate::store::query::MetricsQuery,
    ) -> StoreFuture<'_, Vec<crate::store::query::MetricsRow>> {
        self.local.metrics(q)
    }

    fn dimension_values(
        &self,
        dim: crate::store::query::Dimension,
        range: (u64, u64),
        matching: Option<String>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<String>> {
        self.local.dimension_values(dim, range, matching, limit)
    }

    // The host's own MTA log.
    fn log_pending_matched(
        &self,
        since: u64,
    ) -> StoreFuture<'_, Vec<crate::store::PendingAttempt>> {
        self.local.log_pending_matched(since)
    }

    fn prune_log_pending(&self, before: u64) -> StoreFuture<'_, u64> {
        self.local.prune_log_pending(before)
    }

    // Each host keeps its own ledger: a retry through another host is not recognised.
    fn ledger<'a>(&'a self, message: &'a str) -> StoreFuture<'a, crate::store::Ledger> {
        self.local.ledger(message)
    }

    fn prune_ledger(&self, before: u64) -> StoreFuture<'_, u64> {
        self.local.prune_ledger(before)
    }

    fn mta_queued<'a>(&'a self, senders: &'a [String]) -> StoreFuture<'a, Vec<(String, String)>> {
        self.local.mta_queued(senders)
    }

    fn prune_counters(&self, before: u64) -> StoreFuture<'_, u64> {
        self.local.prune_counters(before)
    }

    fn prune(&self, events_before: u64, transmissions_before: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let local = self
                .local
                .prune(events_before, transmissions_before)
                .await?;
            let shared = match self.pg.prune(events_before, transmissions_before).await {
                Ok(n) => n,
                Err(e) => {
                    self.pg.warn("cannot prune the shared store", &e);
                    0
                }
            };
            Ok(local + shared)
        })
    }

    fn hosts(&self) -> StoreFuture<'_, Vec<crate::store::HostStatus>> {
        Box::pin(async move { self.pg.hosts().await.map_err(shared_error) })
    }
}
