//! Following the MTA's log on a real store: delivery and delay events matched by queue
//! id, rotation followed, and a restart carries on where the last run stopped (each
//! line read once, none skipped).

use msys_milter::config::Config;
use msys_milter::events::{self, EventType, Recipient, Stamp, Transmission};
use msys_milter::feedback::follow::Follower;
use msys_milter::ids::IdGenerator;
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{Commit, SqliteStore, Store};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

fn line(qid: &str, rcpt: &str, status: &str) -> String {
    let text = match status {
        "sent" => "250 2.0.0 Ok: queued as X".to_owned(),
        _ => format!(
            "host mx.example.org[192.0.2.10] said: 452 4.2.2 <{rcpt}>: Recipient address rejected: Mailbox full (in reply to RCPT TO command)"
        ),
    };
    format!(
        "Dec  2 14:00:01 mta postfix/smtp[42]: {qid}: to=<{rcpt}>, relay=mx.example.org[192.0.2.10]:25, delay=1.5, delays=0.1/0/0.2/1.2, dsn=2.0.0, status={status} ({text})\n\
         Dec  2 14:00:01 mta postfix/qmgr[7]: {qid}: removed\n"
    )
}

async fn store_with_injections(dir: &std::path::Path) -> Arc<dyn Store> {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.join("s.db"), Durability::Normal).unwrap());
    let t = Transmission {
        transmission_id: "900".into(),
        campaign_id: Some("c".into()),
        msg_from: "bounces+900@bounces.example.net".into(),
        ..Transmission::default()
    };
    let mut commit = Commit {
        transmission: Some(t.clone()),
        ..Commit::default()
    };
    for (i, (qid, rcpt)) in [
        ("QA1", "A@example.org"),
        ("QB2", "b@example.org"),
        ("QC3", "c@example.org"),
    ]
    .iter()
    .enumerate()
    {
        commit.events.push(events::injection(
            Stamp {
                event_id: 10 + i as u64,
                timestamp: 1,
            },
            &t,
            &Recipient {
                raw: (*rcpt).into(),
                rcpt_type: (i == 1).then_some("bcc"),
                message_id: format!("m{i}"),
                queue_id: Some((*qid).into()),
                msg_size: Some(1234),
            },
        ));
    }
    store.commit(commit).await.unwrap();
    store
}

async fn wait_for_events(store: &dyn Store, count: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let got: Vec<serde_json::Value> = store
            .events_after(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, kind, _)| *kind != EventType::Injection)
            .map(|(_, kind, item)| {
                let v: serde_json::Value = serde_json::from_str(&item).unwrap();
                v["msys"][kind.category()].clone()
            })
            .collect();
        if got.len() >= count {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} events");
}

fn start(store: &Arc<dyn Store>, path: &std::path::Path) -> tokio::sync::oneshot::Sender<()> {
    let config = Config::parse(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let follower = Follower::new(
        path.to_owned(),
        Arc::clone(store),
        Arc::new(IdGenerator::new(2)),
        Arc::new(config),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(follower.run(async {
        let _ = stopped.await;
    }));
    stop
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn deliveries_delays_rotation_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_injections(dir.path()).await;
    let log = dir.path().join("maillog");
    // History before the first start is not replayed.
    append(&log, &line("QA1", "a@example.org", "sent"));
    let stop = start(&store, &log);
    tokio::time::sleep(Duration::from_millis(400)).await;
    append(&log, &line("QB2", "b@example.org", "deferred"));
    append(&log, &line("QB2", "b@example.org", "sent"));
    append(
        &log,
        "Dec  2 14:00:02 mta postfix/smtp[1]: QZZ: to=<nobody@example.org>, relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred (connect timed out)\n",
    );
    let got = wait_for_events(store.as_ref(), 2).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0]["type"], "delay");
    assert_eq!(got[0]["bounce_class"], "22");
    assert_eq!(got[0]["error_code"], "452");
    assert_eq!(got[1]["type"], "delivery");
    assert_eq!(got[1]["rcpt_to"], "b@example.org");
    assert_eq!(got[1]["rcpt_type"], "bcc");
    assert_eq!(got[1]["queue_id"], "QB2");
    assert_eq!(got[1]["message_id"], "m1");
    assert_eq!(got[1]["ip_address"], "192.0.2.10");
    assert_eq!(got[1]["queue_time"], "1500");
    assert_eq!(got[1]["num_retries"], "1");
    assert_eq!(got[1]["msg_size"], "1234");
    assert_eq!(got[1]["campaign_id"], "c");

    // logrotate: the file is renamed, a new one appears at the path.
    append(&log, &line("QC3", "c@example.org", "deferred"));
    std::fs::rename(&log, dir.path().join("maillog.1")).unwrap();
    append(&log, &line("QC3", "C@example.org", "sent"));
    let got = wait_for_events(store.as_ref(), 4).await;
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(
        (got[2]["type"].as_str(), got[3]["type"].as_str()),
        (Some("delay"), Some("delivery"))
    );
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Stopped: more lines come; a restart reads those, and nothing twice. A deferral
    // counted before the restart still counts after it (`num_retries` is stored).
    append(&log, &line("QA1", "a@example.org", "deferred"));
    let stop = start(&store, &log);
    let got = wait_for_events(store.as_ref(), 5).await;
    assert_eq!(got[4]["type"], "delay");
    assert_eq!(
        got[4]["num_retries"], "0",
        "no failed attempt before this one"
    );
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&log, &line("QA1", "a@example.org", "sent"));
    let _stop = start(&store, &log);
    let got = wait_for_events(store.as_ref(), 6).await;
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(got[5]["rcpt_to"], "a@example.org");
    assert_eq!(got[5]["type"], "delivery");
    assert_eq!(
        got[5]["num_retries"], "1",
        "the deferral before the restart"
    );
    // Events carry the time of the attempt (the line's), not the time it was read.
    let logged = msys_milter::feedback::follow::attempt_time(
        msys_milter::feedback::maillog::line_time(&line("QA1", "a@example.org", "sent")),
        msys_milter::ids::unix_secs(),
    );
    assert_eq!(got[5]["timestamp"], logged.to_string());
    assert_eq!(got[4]["ip_address"], "192.0.2.10");
    assert_eq!(got[4]["queue_time"], "1500");
}

/// A store with three injections and a follower started on an empty log.
async fn following_an_empty_log(
    dir: &std::path::Path,
) -> (
    Arc<dyn Store>,
    std::path::PathBuf,
    tokio::sync::oneshot::Sender<()>,
) {
    let store = store_with_injections(dir).await;
    let log = dir.join("maillog");
    append(&log, "");
    let stop = start(&store, &log);
    tokio::time::sleep(Duration::from_millis(400)).await;
    (store, log, stop)
}

/// A writer that never ends its line cannot make the follower hold it: a line over
/// `MAX_LINE` is skipped whole (even a delivery line at its end), and the lines after
/// it are read as usual.
#[tokio::test]
async fn a_line_without_end_is_skipped_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log, stop) = following_an_empty_log(dir.path()).await;
    // 3 MiB without a line end, in pieces, as a slow writer would; the line then ends
    // with what looks like a delivery.
    let junk = "x".repeat(1 << 20);
    for _ in 0..3 {
        append(&log, &junk);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    append(&log, &line("QA1", "a@example.org", "sent"));
    append(&log, &line("QC3", "c@example.org", "sent"));
    let events = wait_for_events(store.as_ref(), 1).await;
    let rcpts: Vec<&str> = events
        .iter()
        .map(|e| e["rcpt_to"].as_str().unwrap())
        .collect();
    assert_eq!(rcpts, ["c@example.org"], "{events:?}");
    let _ = stop.send(());
}

/// A copy's delivery can be logged before its message's commit indexes the copy's
/// queue id (the commit comes after the last copy is handed over): the line is kept and
/// matched once the queue id is known, surviving a restart meanwhile.
#[tokio::test]
async fn a_delivery_logged_before_its_queue_id_is_indexed_is_matched_later() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log, stop) = following_an_empty_log(dir.path()).await;
    append(&log, &line("QLATE", "late@example.org", "sent"));
    append(&log, &line("QNOTOURS", "other@example.org", "sent"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The follower restarts before the commit: the kept line is in the store.
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = start(&store, &log);
    let t = Transmission {
        transmission_id: "901".into(),
        msg_from: "bounces+901@bounces.example.net".into(),
        ..Transmission::default()
    };
    store
        .commit(Commit {
            transmission: Some(t.clone()),
            events: vec![events::injection(
                Stamp {
                    event_id: 99,
                    timestamp: msys_milter::ids::unix_secs(),
                },
                &t,
                &Recipient {
                    raw: "late@example.org".into(),
                    rcpt_type: Some("bcc"),
                    message_id: "m9".into(),
                    queue_id: Some("QLATE".into()),
                    msg_size: Some(99),
                },
            )],
            ..Commit::default()
        })
        .await
        .unwrap();
    let events = wait_for_events(store.as_ref(), 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "delivery");
    assert_eq!(events[0]["rcpt_to"], "late@example.org");
    assert_eq!(events[0]["transmission_id"], "901");
    let _ = stop.send(());
}
