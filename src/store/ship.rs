//! The local side of several hosts sharing one PostgreSQL (`store/postgres.rs`): what a
//! commit queues for the shipper (in the same SQLite transaction, so nothing committed
//! is ever left out), the batches the shipper reads and forgets once PostgreSQL has
//! committed them, and the suppression changes of other hosts applied to this host's
//! replica without being queued again. The mail path never waits on PostgreSQL: it
//! only writes these few rows.

use super::sqlite::{account_key, account_of, int, upsert_suppression};
use super::{Commit, SqliteStore, StoreFuture, StoreResult, SuppressionEntry, SuppressionType};
use rusqlite::{Connection, params};
use std::sync::atomic::Ordering;

/// An event as shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShipEvent {
    pub event_id: i64,
    pub created: i64,
    pub kind: String,
    pub transmission_id: Option<String>,
    pub item: String,
}

/// A transmission's facts as shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShipTransmission {
    pub transmission_id: String,
    pub created: i64,
    pub facts: String,
}

/// One change of the suppression list: an entry added or updated, or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressionChange {
    /// The local queue's order (shipping); PostgreSQL's log order (replica).
    pub seq: i64,
    pub entry: SuppressionEntry,
    pub deleted: bool,
}

/// What the shipper sends in one go, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipBatch {
    pub transmissions: Vec<ShipTransmission>,
    pub events: Vec<ShipEvent>,
    pub suppression: Vec<SuppressionChange>,
}

impl ShipBatch {
    pub fn is_empty(&self) -> bool {
        self.transmissions.is_empty() && self.events.is_empty() && self.suppression.is_empty()
    }
}

/// What waits to be shipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShipBacklog {
    pub transmissions: u64,
    pub events: u64,
    pub suppression: u64,
}

/// Queue what `commit` wrote (inside its transaction).
pub(super) fn queue_commit(conn: &Connection, commit: &Commit) -> rusqlite::Result<()> {
    let mut event =
        conn.prepare_cached("INSERT OR IGNORE INTO ship_events (event_id) VALUES (?1)")?;
    for e in commit.events.iter().filter(|_| !commit.index_only) {
        event.execute(params![int(e.event_id)])?;
    }
    if let Some(t) = &commit.transmission {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO ship_transmissions (transmission_id) VALUES (?1)",
        )?
        .execute(params![t.transmission_id])?;
    }
    for s in &commit.suppress {
        queue_change(conn, s, false)?;
    }
    Ok(())
}

fn queue_change(conn: &Connection, s: &SuppressionEntry, deleted: bool) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO ship_suppression (recipient, account, type, source, description, created, updated, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        s.recipient.to_lowercase(),
        account_key(s.account),
        s.kind.as_str(),
        s.source,
        s.description,
        int(s.created),
        int(s.updated),
        deleted
    ])?;
    Ok(())
}

/// Queue the removal of the entries `clause` selects (before they are deleted).
pub(super) fn queue_removal(
    conn: &Connection,
    clause: &str,
    values: &[rusqlite::types::Value],
) -> rusqlite::Result<()> {
    let now = int(crate::ids::unix_secs());
    conn.execute(
        &format!(
            "INSERT INTO ship_suppression (recipient, account, type, source, description, created, updated, deleted)
             SELECT recipient, account, type, source, description, created, {now}, 1 FROM suppression{clause}"
        ),
        rusqlite::params_from_iter(values.iter()),
    )?;
    Ok(())
}

fn read_batch(conn: &Connection, max: usize) -> rusqlite::Result<ShipBatch> {
    let limit = int(max as u64);
    // A transmission pruned before it was shipped has nothing left to ship: its marker
    // comes back with no facts and is forgotten with the batch.
    let transmissions = conn
        .prepare_cached(
            "SELECT s.transmission_id, t.created, t.facts FROM ship_transmissions s
             LEFT JOIN transmissions t USING (transmission_id)
             ORDER BY s.transmission_id LIMIT ?1",
        )?
        .query_map(params![limit], |r| {
            Ok(ShipTransmission {
                transmission_id: r.get(0)?,
                created: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                facts: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let events = conn
        .prepare_cached(
            "SELECT s.event_id, e.created, e.type, e.transmission_id, e.item FROM ship_events s
             LEFT JOIN events e USING (event_id) ORDER BY s.event_id LIMIT ?1",
        )?
        .query_map(params![limit], |r| {
            Ok(ShipEvent {
                event_id: r.get(0)?,
                created: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                kind: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                transmission_id: r.get(3)?,
                item: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let suppression = conn
        .prepare_cached(
            "SELECT seq, recipient, account, type, source, description, created, updated, deleted
             FROM ship_suppression ORDER BY seq LIMIT ?1",
        )?
        .query_map(params![limit], change_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ShipBatch {
        transmissions,
        events,
        suppression,
    })
}

fn change_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SuppressionChange> {
    let kind: String = r.get(3)?;
    Ok(SuppressionChange {
        seq: r.get(0)?,
        entry: SuppressionEntry {
            recipient: r.get(1)?,
            account: account_of(r.get(2)?),
            kind: SuppressionType::parse(&kind).unwrap_or(SuppressionType::NonTransactional),
            source: r.get(4)?,
            description: r.get(5)?,
            created: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
            updated: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
        },
        deleted: r.get(8)?,
    })
}

impl SqliteStore {
    /// Queue every commit for the shipper from now on (`[store] postgres` is set).
    pub fn set_shipping(&self, on: bool) {
        self.shipping.store(on, Ordering::Relaxed);
    }

    /// The oldest `max` of each kind waiting to be shipped (the journal applied first).
    pub async fn ship_batch(&self, max: usize) -> StoreResult<ShipBatch> {
        self.read_applied(move |conn| read_batch(conn, max)).await
    }

    /// Forget `batch`: PostgreSQL has committed it.
    pub fn shipped(&self, batch: ShipBatch) -> StoreFuture<'_, ()> {
        self.write(move |conn, _| {
            let mut t =
                conn.prepare_cached("DELETE FROM ship_transmissions WHERE transmission_id = ?1")?;
            for x in &batch.transmissions {
                t.execute(params![x.transmission_id])?;
            }
            let mut e = conn.prepare_cached("DELETE FROM ship_events WHERE event_id = ?1")?;
            for x in &batch.events {
                e.execute(params![x.event_id])?;
            }
            let mut s = conn.prepare_cached("DELETE FROM ship_suppression WHERE seq = ?1")?;
            for x in &batch.suppression {
                s.execute(params![x.seq])?;
            }
            Ok(())
        })
    }

    /// How much waits to be shipped (the journal applied first).
    pub async fn ship_backlog(&self) -> StoreResult<ShipBacklog> {
        self.read_applied(|conn| {
            let count = |table: &str| -> rusqlite::Result<u64> {
                conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| u64::try_from(n).unwrap_or(0))
            };
            Ok(ShipBacklog {
                transmissions: count("ship_transmissions")?,
                events: count("ship_events")?,
                suppression: count("ship_suppression")?,
            })
        })
        .await
    }

    /// Apply other hosts' suppression changes to the local replica, and save how far
    /// the replica has read (`cursor`) in the same transaction. Nothing is queued for
    /// shipping: these came from PostgreSQL.
    pub fn apply_remote(
        &self,
        changes: Vec<SuppressionChange>,
        cursor: (String, String),
    ) -> StoreFuture<'_, ()> {
        self.write(move |conn, _| {
            let mut delete = conn.prepare_cached(
                "DELETE FROM suppression WHERE recipient = ?1 AND account = ?2 AND type = ?3",
            )?;
            for c in &changes {
                let s = &c.entry;
                if c.deleted {
                    delete.execute(params![
                        s.recipient.to_lowercase(),
                        account_key(s.account),
                        s.kind.as_str()
                    ])?;
                } else {
                    upsert_suppression(conn, s)?;
                }
            }
            conn.prepare_cached("INSERT OR REPLACE INTO cursors (name, value) VALUES (?1, ?2)")?
                .execute(params![cursor.0, cursor.1])?;
            Ok(())
        })
    }
}
