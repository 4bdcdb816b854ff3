//! Several hosts on one real PostgreSQL (a private throwaway cluster): what each host
//! commits locally is shipped once however often it is sent; a suppression change on
//! one host reaches the other's replica within a second, also after its connections
//! were cut; a host finds the transmissions it never saw; with PostgreSQL down, local
//! commits go on and the backlog drains when it is back; a node id a live host uses is
//! refused.

mod support;

use msys_milter::store::postgres::{Pg, PgError, SharedStore};
use msys_milter::store::{SqliteStore, Store, SuppressionFilter, SuppressionType};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pg::Pg as Cluster;
use support::shared::{host, local, message, unsubscribe};

async fn is_suppressed(store: &dyn Store, rcpt: &str) -> bool {
    !store
        .suppressed(None, SuppressionType::NonTransactional, &[rcpt.to_owned()])
        .await
        .unwrap()
        .is_empty()
}

/// How long until `store` sees `rcpt` as `want`; panics after `limit`.
async fn until(store: &dyn Store, rcpt: &str, want: bool, limit: Duration) -> Duration {
    let start = Instant::now();
    while is_suppressed(store, rcpt).await != want {
        assert!(start.elapsed() < limit, "{rcpt} not {want} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn drained(store: &SqliteStore, limit: Duration) {
    let start = Instant::now();
    loop {
        let b = store.ship_backlog().await.unwrap();
        if b.events + b.transmissions + b.suppression == 0 {
            return;
        }
        assert!(start.elapsed() < limit, "backlog left: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_twice_counts_once() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = local(dir.path(), "a.db");
    a.commit(message("501", 5010)).await.unwrap();
    a.commit(unsubscribe("gone@example.org")).await.unwrap();
    let pg = Pg::new(&cluster.url(), 1, "a.test").unwrap();
    pg.prepare().await.unwrap();
    let batch = a.ship_batch(100).await.unwrap();
    assert_eq!(
        (
            batch.transmissions.len(),
            batch.events.len(),
            batch.suppression.len()
        ),
        (1, 3, 1)
    );
    // Shipped, then the host died before it could forget the batch: sent again.
    pg.ship(&batch, "origin-a").await.unwrap();
    pg.ship(&batch, "origin-a").await.unwrap();
    a.shipped(batch).await.unwrap();
    assert!(a.ship_batch(100).await.unwrap().is_empty());
    assert_eq!(cluster.sql("SELECT count(*) FROM events"), "3");
    assert_eq!(cluster.sql("SELECT count(*) FROM transmissions"), "1");
    assert_eq!(cluster.sql("SELECT count(*) FROM suppression_log"), "1");
    assert_eq!(
        cluster.sql("SELECT recipient, source FROM suppression"),
        "gone@example.org|List Unsubscribe"
    );
    // A removal ships as a change too.
    a.suppression_remove(SuppressionFilter {
        recipient: Some("gone@example.org".into()),
        ..SuppressionFilter::default()
    })
    .await
    .unwrap();
    let batch = a.ship_batch(100).await.unwrap();
    pg.ship(&batch, "origin-a").await.unwrap();
    assert_eq!(cluster.sql("SELECT count(*) FROM suppression"), "0");
    assert_eq!(cluster.sql("SELECT count(*) FROM suppression_log"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_host_reaches_the_other_within_a_second() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), &cluster, 1);
    let b = host(dir.path(), &cluster, 2);
    // Both registered and listening.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut took = Vec::new();
    for i in 0..5 {
        let rcpt = format!("user{i}@example.org");
        a.commit(unsubscribe(&rcpt)).await.unwrap();
        took.push(until(&b, &rcpt, true, Duration::from_secs(5)).await);
    }
    // And back: a removal on B lifts it on A.
    b.suppression_remove(SuppressionFilter {
        recipient: Some("user0@example.org".into()),
        ..SuppressionFilter::default()
    })
    .await
    .unwrap();
    took.push(until(&a, "user0@example.org", false, Duration::from_secs(5)).await);
    took.sort();
    eprintln!("propagation: {took:?}");
    assert!(
        took[took.len() - 1] < Duration::from_secs(1),
        "every change within a second: {took:?}"
    );
    assert_eq!(cluster.sql("SELECT count(*) FROM nodes"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_catches_up_after_its_connections_are_cut() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), &cluster, 1);
    let b = host(dir.path(), &cluster, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.commit(unsubscribe("first@example.org")).await.unwrap();
    until(&b, "first@example.org", true, Duration::from_secs(5)).await;
    // Every session of ours is cut: notifications sent meanwhile are lost to B.
    cluster.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'msys-milter'",
    );
    for i in 0..3 {
        a.commit(unsubscribe(&format!("later{i}@example.org")))
            .await
            .unwrap();
    }
    for i in 0..3 {
        until(
            &b,
            &format!("later{i}@example.org"),
            true,
            Duration::from_secs(15),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_finds_a_transmission_it_never_saw() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), &cluster, 1);
    let b = host(dir.path(), &cluster, 2);
    a.commit(message("777001", 7_770_010)).await.unwrap();
    drained(&a.local, Duration::from_secs(10)).await;
    assert!(b.local.transmission("777001").await.unwrap().is_none());
    let t = b.transmission("777001").await.unwrap().unwrap();
    assert_eq!(t.campaign_id.as_deref(), Some("shared"));
    assert!(b.transmission("404").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_commits_go_on_and_the_backlog_drains_when_it_is_back() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), &cluster, 1);
    a.commit(message("1", 10)).await.unwrap();
    drained(&a.local, Duration::from_secs(10)).await;
    cluster.stop();
    let start = Instant::now();
    for n in 0..100u64 {
        a.commit(message(&(1000 + n).to_string(), 100_000 + n * 10))
            .await
            .unwrap();
    }
    a.commit(unsubscribe("while-down@example.org"))
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "commits never wait on PostgreSQL: {took:?}"
    );
    assert!(is_suppressed(&a, "while-down@example.org").await);
    let backlog = a.local.ship_backlog().await.unwrap();
    assert_eq!((backlog.events, backlog.transmissions), (300, 100));
    cluster.restart();
    drained(&a.local, Duration::from_secs(30)).await;
    assert_eq!(cluster.sql("SELECT count(*) FROM events"), "303");
    assert_eq!(cluster.sql("SELECT count(*) FROM transmissions"), "101");
    assert_eq!(cluster.sql("SELECT count(*) FROM suppression"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_that_a_live_host_uses_is_refused() {
    let cluster = Cluster::start();
    let first = Pg::new(&cluster.url(), 7, "mx1.example.net").unwrap();
    first.prepare().await.unwrap();
    let second = Pg::new(&cluster.url(), 7, "mx2.example.net").unwrap();
    match second.prepare().await {
        Err(PgError::NodeTaken { node_id, host, .. }) => {
            assert_eq!((node_id, host.as_str()), (7, "mx1.example.net"));
        }
        other => panic!("{other:?}"),
    }
    // Another node id is fine, and so is the same one once the first is gone.
    Pg::new(&cluster.url(), 8, "mx2.example.net")
        .unwrap()
        .prepare()
        .await
        .unwrap();
    cluster.sql("UPDATE nodes SET heartbeat = now() - interval '1 minute' WHERE node_id = 7");
    second.prepare().await.unwrap();
}

/// A claimed batch is one host's while its lease runs; then another host claims the
/// same batch (same id, a new token), and the first host's late acknowledgement is
/// refused by the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_claimed_renewed_and_a_stale_token_refused() {
    use msys_milter::store::SinkSpec;
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a_local = local(dir.path(), "a.db");
    let a = Arc::new(
        Pg::new(&cluster.url(), 1, "a.test")
            .unwrap()
            .with_lease(Duration::from_secs(1)),
    );
    let b = Pg::new(&cluster.url(), 2, "b.test")
        .unwrap()
        .with_lease(Duration::from_secs(1));
    a.prepare().await.unwrap();
    b.prepare().await.unwrap();
    let shared = SharedStore::new(Arc::clone(&a_local), Arc::clone(&a));
    shared.set_sinks(vec![SinkSpec {
        name: "webhook:http://hook.test/".into(),
        types: None,
    }]);
    a_local.commit(message("900", 9000)).await.unwrap();
    let batch = a_local.ship_batch(100).await.unwrap();
    a.ship(&batch, "a").await.unwrap();
    let sink = "webhook:http://hook.test/";
    let (first, token_a) = a.claim(sink, 10, "B1", 0).await.unwrap().unwrap();
    assert_eq!((first.batch_id.as_str(), first.items.len()), ("B1", 3));
    // Held: the other host finds nothing to send (it seals nothing new either: every
    // event is in B1).
    assert!(b.claim(sink, 10, "B2", 0).await.unwrap().is_none());
    assert!(a.renew(sink, "B1", token_a).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Expired: the other host takes the same batch, under a new token.
    let (again, token_b) = b.claim(sink, 10, "B3", 0).await.unwrap().unwrap();
    assert_eq!(again.batch_id, "B1");
    assert_eq!(again.items, first.items);
    assert!(token_b > token_a);
    assert!(!a.renew(sink, "B1", token_a).await.unwrap());
    assert!(
        !a.ack(sink, "B1", token_a).await.unwrap(),
        "the late ack is refused"
    );
    assert_eq!(cluster.sql("SELECT count(*) FROM webhook_queue"), "3");
    assert!(b.ack(sink, "B1", token_b).await.unwrap());
    assert_eq!(cluster.sql("SELECT count(*) FROM webhook_queue"), "0");
    assert_eq!(cluster.sql("SELECT count(*) FROM webhook_batches"), "0");
}

/// Two hosts, one webhook: every event of both hosts reaches the consumer exactly
/// once, each in exactly one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_every_event_of_both_hosts_exactly_once() {
    use msys_milter::events::sink::{SinkConfig, Sinks};
    use msys_milter::events::webhook::{Auth, Target};
    use msys_milter::ids::IdGenerator;
    use msys_milter::store::SinkSpec;
    let hook = support::webhook::Webhook::start(200);
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut running = Vec::new();
    let mut hosts = Vec::new();
    for node in [1u16, 2] {
        let host: Arc<dyn Store> = Arc::new(host(dir.path(), &cluster, node));
        let sink = SinkConfig {
            spec: SinkSpec {
                name: format!("webhook:{}", hook.url()),
                types: None,
            },
            target: Target::webhook(&hook.url(), Auth::None).unwrap(),
            batch_size: 50,
            batch_wait: Duration::from_millis(50),
            retry_for: Duration::from_secs(3600),
        };
        running.push(Sinks::start(
            &host,
            &Arc::new(IdGenerator::new(node)),
            vec![sink],
        ));
        hosts.push(host);
    }
    for n in 0..100u64 {
        let host = &hosts[(n % 2) as usize];
        host.commit(message(&(5000 + n).to_string(), 50_000 + n * 10))
            .await
            .unwrap();
    }
    let items = tokio::task::spawn_blocking(move || {
        let items = hook.wait_until(60, |items| items.len() >= 300);
        std::thread::sleep(Duration::from_secs(2));
        (hook.delivered(), hook.posts(), items.len())
    })
    .await
    .unwrap();
    let (delivered, posts, _) = items;
    let mut ids = support::webhook::ids_of(&delivered);
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!((all, ids.len()), (300, 300), "each event once");
    let mut batches: Vec<&str> = posts.iter().map(|p| p.batch_id.as_str()).collect();
    batches.sort();
    let sent = batches.len();
    batches.dedup();
    assert_eq!(sent, batches.len(), "each batch once");
    drop(running);
}

/// The admin verbs on a host of a group: a suppression entry added with the CLI's
/// store reaches the other host (the daemon ships it), `webhooks status` shows the
/// group's webhook backlog, `events replay` queues the group's events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_verbs_act_on_the_shared_data() {
    use msys_milter::store::SinkSpec;
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = host(dir.path(), &cluster, 1);
    let b = host(dir.path(), &cluster, 2);
    let sink = "webhook:http://hook.test/";
    a.set_sinks(vec![SinkSpec {
        name: sink.into(),
        types: None,
    }]);
    let config = msys_milter::Config::parse(
        &format!(
            "node_id = 1\n[store]\npath = \"{}\"\npostgres = \"{}\"\n",
            dir.path().join("host1.db").display(),
            cluster.url()
        ),
        std::path::Path::new("admin.toml"),
    )
    .unwrap();
    let admin = msys_milter::open_admin_store(&config, "host1.test").unwrap();
    msys_milter::admin::suppression_add(
        admin.as_ref(),
        &["cli@example.org".to_owned()],
        SuppressionType::NonTransactional,
        None,
        "asked by phone",
    )
    .await
    .unwrap();
    until(&b, "cli@example.org", true, Duration::from_secs(5)).await;

    a.commit(message("4242", 42_420)).await.unwrap();
    drained(&a.local, Duration::from_secs(10)).await;
    let mut out = Vec::new();
    msys_milter::admin::webhooks_status(admin.as_ref(), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(sink) && text.contains('3'), "{text}");
    assert!(
        text.contains("node 1 host1.test: 0 waiting to be shipped")
            && text.contains("node 2 host2.test"),
        "which host holds what: {text}"
    );
    let queued = admin.replay(0, &[sink.to_owned()]).await.unwrap();
    assert_eq!(queued, 0, "still queued: nothing to add");
    cluster.sql("DELETE FROM webhook_queue");
    assert_eq!(admin.replay(0, &[sink.to_owned()]).await.unwrap(), 3);
}

/// `sslmode=require` over TCP: TLS with rustls, the server's certificate checked
/// against `[store] postgres_ca`; without that CA the connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_checks_the_servers_certificate() {
    let cluster = Cluster::start_tls();
    let trusted = Pg::with_ca(&cluster.tls_url(), 1, "tls.test", Some(&cluster.ca())).unwrap();
    trusted.prepare().await.unwrap();
    assert_eq!(
        cluster.sql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'msys-milter'"),
        "1",
        "the pool's connection is encrypted"
    );
    let untrusted = Pg::new(&cluster.tls_url(), 2, "tls.test").unwrap();
    let refused = untrusted.prepare().await.unwrap_err();
    assert!(
        matches!(refused, PgError::Pool(_) | PgError::Db(_)),
        "{refused}"
    );
    // A file that holds no certificate is a configuration error, said at once.
    let empty = tempfile::NamedTempFile::new().unwrap();
    assert!(matches!(
        Pg::with_ca(&cluster.tls_url(), 3, "tls.test", Some(empty.path())),
        Err(PgError::Config(_))
    ));
}
