//! Several hosts in one process: local stores that ship, hosts on a private cluster,
//! and the commits the tests and benchmarks make on them.

use super::pg::Pg as Cluster;
use msys_milter::events::{self, Recipient, Stamp, Transmission};
use msys_milter::store::postgres::{Pg, SharedStore, replicate_forever, ship_forever};
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{Commit, SqliteStore, SuppressionEntry, SuppressionType};
use std::sync::Arc;

/// A local store at `dir/name` that queues what it commits for shipping.
pub fn local(dir: &std::path::Path, name: &str) -> Arc<SqliteStore> {
    let s = Arc::new(SqliteStore::open(&dir.join(name), Durability::Normal).unwrap());
    s.set_shipping(true);
    s
}

/// One host: its local store, shipping and replicating, behind the shared store.
pub fn host(dir: &std::path::Path, cluster: &Cluster, node: u16) -> SharedStore {
    let host = idle_host(dir, cluster, node);
    tokio::spawn(ship_forever(Arc::clone(&host.local), Arc::clone(&host.pg)));
    tokio::spawn(replicate_forever(
        Arc::clone(&host.local),
        Arc::clone(&host.pg),
    ));
    host
}

/// One host whose shipper and replica are not started (yet).
pub fn idle_host(dir: &std::path::Path, cluster: &Cluster, node: u16) -> SharedStore {
    let local = local(dir, &format!("host{node}.db"));
    let pg = Arc::new(Pg::new(&cluster.url(), node, &format!("host{node}.test")).unwrap());
    SharedStore::new(local, pg)
}

/// One accepted message: its transmission `tid` and three injection events, the
/// first with id `first_event`.
pub fn message(tid: &str, first_event: u64) -> Commit {
    let t = Transmission {
        transmission_id: tid.into(),
        campaign_id: Some("shared".into()),
        msg_from: format!("bounces+{tid}@bounces.example.net"),
        injection_ms: 1_796_135_107_000,
        ..Transmission::default()
    };
    let events = (0..3)
        .map(|i| {
            events::injection(
                Stamp {
                    event_id: first_event + i,
                    timestamp: 1_796_135_107,
                },
                &t,
                &Recipient {
                    raw: format!("r{i}@example.org"),
                    message_id: first_event.to_string(),
                    ..Recipient::default()
                },
            )
        })
        .collect();
    Commit {
        events,
        transmission: Some(t),
        ..Commit::default()
    }
}

/// A one-click unsubscribe of `rcpt`.
pub fn unsubscribe(rcpt: &str) -> Commit {
    Commit {
        suppress: vec![SuppressionEntry::new(
            rcpt,
            None,
            SuppressionType::NonTransactional,
            "List Unsubscribe",
            "test",
            msys_milter::ids::unix_secs(),
        )],
        ..Commit::default()
    }
}
