//! Shipping what a host committed to the group's PostgreSQL, and following the
//! shared suppression change log into the host's replica.

use super::*;

impl Pg {
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
            // Every host queues what it ships for every webhook; each event once.
            for sink in self.webhook_sinks() {
                let wanted: Vec<i64> = events
                    .iter()
                    .filter(|e| EventType::parse(&e.kind).is_some_and(|k| sink.wants(k)))
                    .map(|e| e.event_id)
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                tx.execute(
                    "INSERT INTO webhook_queue (sink, event_id) SELECT $1, unnest($2::bigint[])
                     ON CONFLICT DO NOTHING",
                    &[&sink.name, &wanted],
                )
                .await?;
            }
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
                let account = crate::store::sqlite::account_key(s.account);
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
                        account: crate::store::sqlite::account_of(r.get(2)),
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
}

/// This store's name in the shared log, made once and kept in the store.
async fn origin(local: &SqliteStore) -> Result<String, crate::store::StoreError> {
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

/// How long the shipper lets events gather before it ships them: what keeps
/// PostgreSQL's work per message small. Suppression changes do not wait.
const GATHER: Duration = Duration::from_millis(200);

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
    let mut gathered = false;
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
            let backlog = local
                .ship_backlog()
                .await
                .map(|b| b.events + b.transmissions + b.suppression)
                .unwrap_or(0);
            if let Err(e) = pg.heartbeat(backlog).await {
                pg.warn("heartbeat failed", &e);
            }
        }
        let batch = match local.ship_batch(BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot read what to ship: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Ok(backlog) = local.ship_backlog().await {
            crate::metrics::global().ship_backlog(backlog);
        }
        if batch.is_empty() {
            pause = Duration::from_millis(200);
            gathered = false;
            let _ = tokio::time::timeout(Duration::from_secs(1), committed.notified()).await;
            continue;
        }
        let full = batch.events.len() >= BATCH
            || batch.transmissions.len() >= BATCH
            || batch.suppression.len() >= BATCH;
        // Events wait a moment for more to gather: one transaction in PostgreSQL for
        // many messages, not one each (it may share the mail's cores). A suppression
        // change goes at once: the other hosts must stop mailing that recipient.
        if !full && batch.suppression.is_empty() && !gathered {
            gathered = true;
            tokio::time::sleep(GATHER).await;
            continue;
        }
        gathered = false;
        match pg.ship(&batch, &origin).await {
            Ok(()) => {
                pause = Duration::from_millis(200);
                if let Err(e) = local.shipped(batch).await {
                    tracing::error!(
                        "shipped, but cannot mark it (it will be shipped again, harmlessly): {e}"
                    );
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
