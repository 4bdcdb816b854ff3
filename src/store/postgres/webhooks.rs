//! Webhook batches made once for the group: sealed in PostgreSQL, sent by any host
//! under a lease whose token every renewal and acknowledgement must match.

use super::*;

impl Pg {
    /// Claim `sink`'s oldest pending batch whose lease has expired (another host died
    /// or stalled while sending it: it goes out again under the same id), else seal a
    /// new one of at most `max` events under `new_batch_id`. The batch and its lease
    /// token; `None` when nothing is due.
    pub async fn claim(
        &self,
        sink: &str,
        max: usize,
        new_batch_id: &str,
        now: u64,
    ) -> Result<Option<(Batch, i64)>, PgError> {
        let lease = self.lease.as_secs_f64();
        let now = int(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .query_opt(
                "UPDATE webhook_batches b SET lease_until = now() + $2 * interval '1 second',
                   lease_token = b.lease_token + 1, holder = $3
                 WHERE (b.sink, b.batch_id) = (
                   SELECT sink, batch_id FROM webhook_batches
                   WHERE sink = $1 AND state = 'pending'
                     AND (lease_until IS NULL OR lease_until < now())
                     AND (next_attempt IS NULL OR next_attempt <= $4)
                   ORDER BY created, batch_id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING b.batch_id, b.lease_token, b.attempts, b.first_failure, b.next_attempt",
                &[&sink, &lease, &self.instance, &now],
            )
            .await?;
        if let Some(row) = claimed {
            let batch_id: String = row.get(0);
            let items: Vec<String> = tx
                .query(
                    "SELECT e.item FROM webhook_queue q JOIN events e USING (event_id)
                     WHERE q.sink = $1 AND q.batch_id = $2 ORDER BY q.event_id",
                    &[&sink, &batch_id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if items.is_empty() {
                tx.execute(
                    "DELETE FROM webhook_batches WHERE sink = $1 AND batch_id = $2",
                    &[&sink, &batch_id],
                )
                .await?;
                tx.commit().await?;
                return Ok(None);
            }
            tx.commit().await?;
            let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
            return Ok(Some((
                Batch {
                    sink: sink.to_owned(),
                    batch_id,
                    items,
                    attempts: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                    failing_since: unsigned(row.get(3)),
                    next_attempt: unsigned(row.get(4)),
                },
                row.get(1),
            )));
        }
        // A failing sink gets no new batches until its oldest one goes through: one
        // batch is retried at a time, as on a single host.
        let failing: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM webhook_batches
                   WHERE sink = $1 AND state = 'pending' AND attempts > 0)",
                &[&sink],
            )
            .await?
            .get(0);
        if failing {
            return Ok(None);
        }
        let rows = tx
            .query(
                "SELECT q.event_id, e.item FROM webhook_queue q JOIN events e USING (event_id)
                 WHERE q.sink = $1 AND q.batch_id IS NULL
                 ORDER BY q.event_id LIMIT $2 FOR UPDATE OF q SKIP LOCKED",
                &[&sink, &(max as i64)],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        tx.execute(
            "INSERT INTO webhook_batches (sink, batch_id, lease_until, lease_token, holder)
             VALUES ($1, $2, now() + $3 * interval '1 second', 1, $4)",
            &[&sink, &new_batch_id, &lease, &self.instance],
        )
        .await?;
        tx.execute(
            "UPDATE webhook_queue SET batch_id = $2 WHERE sink = $1 AND event_id = ANY($3)",
            &[&sink, &new_batch_id, &ids],
        )
        .await?;
        tx.commit().await?;
        Ok(Some((
            Batch {
                sink: sink.to_owned(),
                batch_id: new_batch_id.to_owned(),
                items: rows.iter().map(|r| r.get(1)).collect(),
                attempts: 0,
                failing_since: None,
                next_attempt: None,
            },
            1,
        )))
    }

    /// Keep holding a batch; false when the lease was lost (another host took it).
    pub async fn renew(&self, sink: &str, batch_id: &str, token: i64) -> Result<bool, PgError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE webhook_batches SET lease_until = now() + $4 * interval '1 second'
                 WHERE sink = $1 AND batch_id = $2 AND lease_token = $3",
                &[&sink, &batch_id, &token, &self.lease.as_secs_f64()],
            )
            .await?;
        Ok(n == 1)
    }

    /// The consumer took the batch: done, for the whole group. False (and nothing
    /// changed) when this host's lease was lost meanwhile: its acknowledgement is
    /// refused, the host that holds the batch now decides.
    pub async fn ack(&self, sink: &str, batch_id: &str, token: i64) -> Result<bool, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM webhook_batches WHERE sink = $1 AND batch_id = $2 AND lease_token = $3",
                &[&sink, &batch_id, &token],
            )
            .await?;
        if n == 1 {
            tx.execute(
                "DELETE FROM webhook_queue WHERE sink = $1 AND batch_id = $2",
                &[&sink, &batch_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// An attempt failed: retry at `next_attempt` (any host), or keep it as failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn fail(
        &self,
        sink: &str,
        batch_id: &str,
        token: i64,
        error: &str,
        now: u64,
        next_attempt: u64,
        give_up: bool,
    ) -> Result<bool, PgError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE webhook_batches SET attempts = attempts + 1,
                   first_failure = coalesce(first_failure, $4), next_attempt = $5,
                   last_error = $6, lease_until = NULL,
                   state = CASE WHEN $7 THEN 'failed' ELSE 'pending' END
                 WHERE sink = $1 AND batch_id = $2 AND lease_token = $3",
                &[
                    &sink,
                    &batch_id,
                    &token,
                    &int(now),
                    &int(next_attempt),
                    &error,
                    &give_up,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Each webhook's backlog in the group.
    pub async fn sink_status(&self) -> Result<Vec<SinkStatus>, PgError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT q.sink,
                   count(*) FILTER (WHERE b.state IS DISTINCT FROM 'failed'),
                   count(DISTINCT b.batch_id) FILTER (WHERE b.state = 'failed'),
                   count(*) FILTER (WHERE b.state = 'failed'),
                   min(b.first_failure) FILTER (WHERE b.state = 'pending'),
                   max(b.last_error),
                   min(b.next_attempt) FILTER (WHERE b.state = 'pending')
                 FROM webhook_queue q LEFT JOIN webhook_batches b USING (sink, batch_id)
                 GROUP BY q.sink ORDER BY q.sink",
                &[],
            )
            .await?;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|r| SinkStatus {
                sink: r.get(0),
                pending: unsigned(r.get(1)),
                failed_batches: unsigned(r.get(2)),
                failed_events: unsigned(r.get(3)),
                failing_since: r.get::<_, Option<i64>>(4).map(unsigned),
                last_error: r.get(5),
                next_attempt: r.get::<_, Option<i64>>(6).map(unsigned),
            })
            .collect())
    }

    /// Queue again for `sinks` the group's events created at or after `since`, failed
    /// batches' included (as `events replay` does on one host). The number queued.
    pub async fn replay(&self, since: u64, sinks: &[String]) -> Result<u64, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut total = 0;
        for sink in sinks {
            // Events in a batch given up on go back to the queue; the rest are queued
            // unless they still wait in it.
            tx.execute(
                "UPDATE webhook_queue SET batch_id = NULL WHERE sink = $1 AND batch_id IN
                   (SELECT batch_id FROM webhook_batches WHERE sink = $1 AND state = 'failed')",
                &[sink],
            )
            .await?;
            tx.execute(
                "DELETE FROM webhook_batches WHERE sink = $1 AND state = 'failed'",
                &[sink],
            )
            .await?;
            total += tx
                .execute(
                    "INSERT INTO webhook_queue (sink, event_id)
                     SELECT $1, event_id FROM events WHERE created >= $2
                     ON CONFLICT DO NOTHING",
                    &[sink, &int(since)],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(total)
    }
}
