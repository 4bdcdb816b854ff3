//! Several hosts on one PostgreSQL (a private throwaway cluster, as the tests use):
//! events shipped per second from a host's local store, suppression propagation from
//! one host to another (p50, p99), and webhook events delivered per second from
//! PostgreSQL with two hosts sending to a local receiver. Prints Markdown for
//! BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use msys_milter::events::sink::{SinkConfig, Sinks};
use msys_milter::events::webhook::{Auth, Target};
use msys_milter::ids::IdGenerator;
use msys_milter::store::postgres::ship_forever;
use msys_milter::store::{SinkSpec, SqliteStore, Store, SuppressionType};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pg::Pg as Cluster;
use support::shared::{host, idle_host, message, unsubscribe};

async fn backlog_empty(store: &SqliteStore) {
    loop {
        let b = store.ship_backlog().await.unwrap();
        if b.events + b.transmissions + b.suppression == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    println!("### Several hosts (PostgreSQL)\n");
    println!(
        "A private PostgreSQL 15 cluster on a UNIX socket (fsync off, as in the tests), on the same 2 cores as the hosts.\n"
    );

    // 1. Shipping: 30,000 messages (90,000 events) committed locally first, then
    // shipped; the time until the backlog is empty.
    let a = idle_host(dir.path(), &cluster, 1);
    for chunk in 0..300u64 {
        let mut commits = Vec::new();
        for n in 0..100 {
            let n = 1_000_000 + chunk * 100 + n;
            commits.push(a.local.commit(message(&n.to_string(), n * 4)));
        }
        for c in commits {
            c.await.unwrap();
        }
    }
    let started = Instant::now();
    tokio::spawn(ship_forever(Arc::clone(&a.local), Arc::clone(&a.pg)));
    backlog_empty(&a.local).await;
    let shipped = 90_000.0 / started.elapsed().as_secs_f64();
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| events shipped to PostgreSQL (90,000 events and 30,000 transmissions from a backlog) | {shipped:.0} events/s | >= 20,000/s |"
    );

    // 2. Propagation: a change on one host until the other host's replica has it.
    let b = host(dir.path(), &cluster, 2);
    let c = host(dir.path(), &cluster, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut took = Vec::new();
    for i in 0..200 {
        let rcpt = format!("bench{i}@example.org");
        let start = Instant::now();
        b.commit(unsubscribe(&rcpt)).await.unwrap();
        while c
            .suppressed(
                None,
                SuppressionType::NonTransactional,
                std::slice::from_ref(&rcpt),
            )
            .await
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(start.elapsed());
    }
    took.sort();
    println!(
        "| suppression change on one host until another host's replica has it (200 changes) | p50 {:.1} ms, p99 {:.1} ms | p99 <= 1 s |",
        percentile(&took, 0.5).as_secs_f64() * 1000.0,
        percentile(&took, 0.99).as_secs_f64() * 1000.0
    );

    // 3. Webhooks from PostgreSQL: the 90,000 events above, two hosts sending batches
    // of 1,000 to a local receiver that answers at once.
    let hook = support::webhook::Webhook::start(200);
    let mut running = Vec::new();
    let started = Instant::now();
    for (node, store) in [(1u16, Arc::new(a) as Arc<dyn Store>), (2, Arc::new(b))] {
        let sink = SinkConfig {
            spec: SinkSpec {
                name: "webhook:bench".into(),
                types: None,
            },
            target: Target::webhook(&hook.url(), Auth::None).unwrap(),
            batch_size: 1000,
            batch_wait: Duration::from_millis(10),
            retry_for: Duration::from_secs(3600),
        };
        running.push(Sinks::start(
            &store,
            &Arc::new(IdGenerator::new(node)),
            vec![sink],
        ));
    }
    // The sinks were registered after the events were shipped: queue them as a host
    // does at shipping time.
    cluster.sql(
        "INSERT INTO webhook_queue (sink, event_id) SELECT 'webhook:bench', event_id FROM events",
    );
    while cluster.sql("SELECT count(*) FROM webhook_queue") != "0" {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = 90_000;
    assert!(hook.posts().len() >= 90, "{} posts", hook.posts().len());
    let rate = delivered as f64 / started.elapsed().as_secs_f64();
    println!(
        "| webhook events delivered from PostgreSQL, two hosts sending (90,000 events, batches of 1,000) | {rate:.0} events/s | >= 10,000/s |"
    );
    drop(running);
    drop(c);
}
