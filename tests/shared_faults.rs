//! Webhooks once per group, under faults, with the real daemons on one real PostgreSQL
//! (a private throwaway cluster) and a webhook receiver that can hold a POST open:
//! a host killed with SIGKILL in the middle of a batch leaves it to another host, which
//! sends it with the same batch id once the lease has expired; a host paused (SIGSTOP)
//! past its lease loses the batch to another host, and when it resumes its late
//! acknowledgement is refused by the fencing token and it does not send the batch
//! again. No event is lost.

mod support;

use std::time::Duration;
use support::pg::Pg;
use support::postfix::free_port;
use support::webhook::Webhook;
use support::{Milter, milter_transaction};

/// Seconds a host holds a batch without renewing it, here.
const LEASE: u64 = 2;

fn daemon(node: u16, pg: &Pg, hook: &Webhook) -> Milter {
    Milter::start_on(
        free_port(),
        &format!(
            "node_id = {node}\n\
             [envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [http]\nlisten = \"127.0.0.1:{}\"\n\
             [store]\npostgres = \"{}\"\ndurability = \"normal\"\nwebhook_lease_seconds = {LEASE}\n\
             [[webhook]]\nurl = \"{}\"\nbatch_wait_ms = 100\n",
            free_port(),
            pg.url(),
            hook.url()
        ),
    )
}

fn sent(hook: &Webhook, batch_id: &str) -> usize {
    hook.posts()
        .iter()
        .filter(|p| p.batch_id == batch_id)
        .count()
}

#[test]
fn a_host_killed_mid_batch_leaves_it_to_another_under_the_same_id() {
    let pg = Pg::start();
    let hook = Webhook::start(200);
    hook.hold_next();
    let mut a = daemon(1, &pg, &hook);
    for _ in 0..3 {
        assert_eq!(
            milter_transaction(a.port),
            indymilter_test::Status::Continue
        );
    }
    let held = hook.wait_held(30);
    a.kill9();
    hook.release();
    let _b = daemon(2, &pg, &hook);
    // B takes the batch once A's lease has run out, and sends it under its id.
    hook.wait_until(30, |items| items.len() >= 3);
    assert!(
        hook.posts()
            .iter()
            .any(|p| p.batch_id == held[0] && p.status == 200),
        "the held batch went out again under its id: {:?}",
        hook.posts().iter().map(|p| &p.batch_id).collect::<Vec<_>>()
    );
    let mut ids = hook.event_ids();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((all, ids.len()), (3, 3), "every event once");
}

#[test]
fn a_paused_host_loses_its_lease_and_its_late_ack_is_refused() {
    let pg = Pg::start();
    let hook = Webhook::start(200);
    let a = daemon(1, &pg, &hook);
    let b = daemon(2, &pg, &hook);
    hook.hold_next();
    for _ in 0..2 {
        assert_eq!(
            milter_transaction(a.port),
            indymilter_test::Status::Continue
        );
    }
    let held = hook.wait_held(30)[0].clone();
    // Which host is sending it?
    let holder = pg.sql(&format!(
        "SELECT n.node_id FROM webhook_batches w JOIN nodes n ON n.instance = w.holder WHERE w.batch_id = '{held}'"
    ));
    let (paused, other) = if holder == "1" { (&a, &b) } else { (&b, &a) };
    let pid = paused.pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    // Past its lease, the other host sends the batch (answered at once).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !hook
        .posts()
        .iter()
        .any(|p| p.batch_id == held && p.status == 200)
    {
        assert!(std::time::Instant::now() < deadline, "{}", other.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    hook.release();
    // The resumed host's acknowledgement comes too late: refused, and nothing resent.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !paused.log().contains("late acknowledgement was refused") {
        assert!(std::time::Instant::now() < deadline, "{}", paused.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(LEASE + 2));
    assert_eq!(
        sent(&hook, &held),
        2,
        "the paused host's POST and the other host's, never a third"
    );
    let mut ids = hook.event_ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "both events, once each by id");
    assert_eq!(pg.sql("SELECT count(*) FROM webhook_queue"), "0");
}
