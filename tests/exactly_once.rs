//! Exactly-once copies: a client that sends a message again after a tempfail, a crash or
//! a lost answer gets no copy handed over twice and no injection event counted twice.
//! In process (a hand-over that fails part-way) and with the real daemon aborted at each
//! window of the end-of-message (debug builds' crash points, `MSYS_MILTER_FAILPOINT`).

use indymilter_test::{MacroStage, Status, TestConnection};
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A sendmail(1) stand-in: appends each copy it is given to `dir/msg.RCPT` and a line to
/// `dir/count.RCPT`; exits 75 (tempfail) for a recipient while `dir/fail.RCPT` exists,
/// and first sleeps while `dir/slow.RCPT` exists.
fn fake_sendmail(dir: &Path) -> PathBuf {
    support::script(
        dir,
        "sendmail",
        &format!(
            "#!/bin/sh\nd={d}\nwhile [ -e $d/slow.$5 ]; do sleep 0.05; done\n\
             if [ -e $d/fail.$5 ]; then cat >/dev/null; exit 75; fi\n\
             cat >> $d/msg.$5\necho x >> $d/count.$5\n",
            d = dir.display()
        ),
    )
}

/// Copies each recipient was handed.
fn handed(dir: &Path) -> BTreeMap<String, usize> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let rcpt = name.strip_prefix("count.")?.to_owned();
            let lines = std::fs::read_to_string(dir.join(&name))
                .unwrap()
                .lines()
                .count();
            Some((rcpt, lines))
        })
        .collect()
}

const BCC: [&str; 3] = ["b1@example.com", "b2@example.com", "b3@example.com"];

fn config(sendmail: &Path, store: Option<&Path>) -> String {
    let mut toml = format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [reinject]\nsendmail = \"{}\"\nconcurrency = 1\n",
        sendmail.display()
    );
    if let Some(store) = store {
        toml.push_str(&format!("[store]\npath = \"{}\"\n", store.display()));
    }
    toml
}

/// One message with three bcc recipients, always the same bytes; the MTA's queue id
/// is `queue_id` (a retry gets a new one, and a new Received header).
async fn send(conn: &mut TestConnection, queue_id: &str) -> Status {
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    let received = format!("from app by mta (Postfix) with ESMTP id {queue_id}");
    let api = format!("{{\"bcc\": {BCC:?}, \"campaign_id\": \"once\"}}");
    for (name, value) in [
        ("Received", received.as_str()),
        ("From", "App <app@example.com>"),
        ("To", "to@example.org"),
        ("Message-ID", "<once@example.com>"),
        ("Date", "Sun, 6 Dec 2026 06:00:00 +0000"),
        ("X-MSYS-API", api.as_str()),
        ("Subject", "Once"),
    ] {
        conn.header(name, value).await.unwrap();
    }
    conn.body(b"Hello\r\n".to_vec()).await.unwrap();
    conn.macros(MacroStage::Eom, [("i", queue_id)])
        .await
        .unwrap();
    let (_, status) = conn.eom().await.unwrap();
    status
}

/// Injection events in the store, per recipient; the distinct transmission ids; the
/// queue ids the MTA's log can be matched by.
fn injections(store: &Path) -> (BTreeMap<String, usize>, Vec<String>, Vec<String>) {
    let conn = rusqlite::Connection::open(store).unwrap();
    // A commit reaches the events table from the store's journal within 50 ms: read once
    // the journal is applied (read from another process, as here).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while conn
        .query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0))
        .unwrap()
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal is never applied"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut per_rcpt = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT rcpt FROM events WHERE type = 'injection'")
        .unwrap();
    for rcpt in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        *per_rcpt.entry(rcpt.unwrap()).or_insert(0) += 1;
    }
    let column = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let tids = column("SELECT DISTINCT transmission_id FROM events ORDER BY 1");
    let queue_ids = column("SELECT DISTINCT queue_id FROM queued ORDER BY 1");
    (per_rcpt, tids, queue_ids)
}

fn once_each() -> BTreeMap<String, usize> {
    BCC.iter()
        .chain(&["to@example.org"])
        .map(|r| (r.to_string(), 1))
        .collect()
}

#[tokio::test]
async fn a_retry_after_a_failed_hand_over_sends_only_the_copies_not_yet_handed() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let store = dir.path().join("store.db");
    let addr = support::start_in_process(&config(&sendmail, Some(&store))).await;
    // The second copy is refused: the first was handed over, the message tempfails.
    std::fs::write(dir.path().join("fail.b2@example.com"), "").unwrap();
    let mut conn = support::connect_in_process(addr).await;
    let status = send(&mut conn, "4QA").await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    let first = handed(dir.path());
    assert_eq!(first.get("b1@example.com"), Some(&1), "{first:?}");
    assert_eq!(first.get("b2@example.com"), None);
    assert_eq!(
        injections(&store).0,
        BTreeMap::new(),
        "no event of a tempfailed message"
    );

    // The client retries: b1 is not handed over again.
    std::fs::remove_file(dir.path().join("fail.b2@example.com")).unwrap();
    let mut conn = support::connect_in_process(addr).await;
    assert_eq!(send(&mut conn, "4QB").await, Status::Continue);
    let expected: BTreeMap<String, usize> = BCC.iter().map(|r| (r.to_string(), 1)).collect();
    assert_eq!(handed(dir.path()), expected);
    let (events, tids, _) = injections(&store);
    assert_eq!(events, once_each());
    assert_eq!(tids.len(), 1, "one transmission across attempts: {tids:?}");

    // The answer was lost and the client sends it once more: nothing is handed over and
    // no event is doubled, but the new queue id is indexed for the MTA's log.
    let mut conn = support::connect_in_process(addr).await;
    assert_eq!(send(&mut conn, "4QC").await, Status::Continue);
    assert_eq!(handed(dir.path()), expected);
    let (events, tids, queue_ids) = injections(&store);
    assert_eq!(events, once_each());
    assert_eq!(tids.len(), 1);
    assert!(queue_ids.contains(&"4QC".to_owned()), "{queue_ids:?}");

    // A different message (another body) is not a retry.
    let mut conn = support::connect_in_process(addr).await;
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    let api = format!("{{\"bcc\": {BCC:?}}}");
    conn.header("Message-ID", "<other@example.com>")
        .await
        .unwrap();
    conn.header("X-MSYS-API", api.as_str()).await.unwrap();
    conn.body(b"Another\r\n".to_vec()).await.unwrap();
    assert_eq!(conn.eom().await.unwrap().1, Status::Continue);
    assert!(handed(dir.path()).values().all(|&n| n == 2));
}

#[tokio::test]
async fn with_dedupe_hours_zero_a_retry_hands_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let toml =
        config(&sendmail, None).replace("concurrency = 1\n", "concurrency = 1\ndedupe_hours = 0\n");
    let addr = support::start_in_process(&toml).await;
    for queue_id in ["4QA", "4QB"] {
        let mut conn = support::connect_in_process(addr).await;
        assert_eq!(send(&mut conn, queue_id).await, Status::Continue);
    }
    assert!(
        handed(dir.path()).values().all(|&n| n == 2),
        "{:?}",
        handed(dir.path())
    );
}

/// One message to the daemon at `port`, as the MTA's attempt `queue_id`: its answer, or
/// `None` when the connection dropped (the daemon died).
fn send_to(port: u16, queue_id: &'static str) -> Option<Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut conn = TestConnection::configure()
            .read_timeout(Duration::from_secs(20))
            .available_actions(indymilter_test::Actions::all())
            .open_tcp(("127.0.0.1", port))
            .await
            .unwrap();
        let status = tokio::spawn(async move { send(&mut conn, queue_id).await }).await;
        status.ok()
    })
}

/// The real daemon aborts at `point` during the first attempt; the MTA's connection
/// drops (Postfix then tempfails the client). Restarted, it takes the client's retry:
/// every recipient has exactly one copy and one injection event.
fn crash_at(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let mut milter = support::Milter::start_with_env(
        support::postfix::free_port(),
        &config(&sendmail, None),
        &[("MSYS_MILTER_FAILPOINT", point)],
    );
    let port = milter.port;
    let attempt = |queue_id: &'static str| send_to(port, queue_id);
    assert_eq!(
        attempt("4QA"),
        None,
        "the crash point {point} was not reached"
    );
    assert!(
        milter.wait_exit(Duration::from_secs(10)),
        "{point}: still running"
    );
    let before = handed(dir.path());
    milter.set_env(&[]);
    milter.restart();
    assert_eq!(attempt("4QB"), Some(Status::Continue), "{point}");
    let expected: BTreeMap<String, usize> = BCC.iter().map(|r| (r.to_string(), 1)).collect();
    assert_eq!(
        handed(dir.path()),
        expected,
        "{point}: handed before the crash: {before:?}"
    );
    let (events, tids, queue_ids) = injections(&milter.store_path());
    assert_eq!(events, once_each(), "{point}");
    assert_eq!(tids.len(), 1, "{point}: {tids:?}");
    assert!(
        queue_ids.contains(&"4QB".to_owned()),
        "{point}: {queue_ids:?}"
    );
}

#[test]
fn a_crash_before_any_copy_is_handed_over() {
    crash_at("before_copies");
}

#[test]
fn a_crash_between_two_copies() {
    crash_at("between_copies");
}

#[test]
fn a_crash_after_the_copies_before_the_commit() {
    crash_at("after_copies");
}

#[test]
fn a_crash_after_the_commit_before_the_answer() {
    crash_at("after_commit");
}

/// The daemon answers once the commit is in the store's journal, and aborts as it
/// brings the tables up to date behind it: restarted, it applies the journal, and the
/// accepted message's events are all there, once.
#[test]
fn a_crash_while_the_journal_is_applied_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let mut milter = support::Milter::start_with_env(
        support::postfix::free_port(),
        &config(&sendmail, None),
        &[("MSYS_MILTER_FAILPOINT", "store_apply")],
    );
    assert_eq!(send_to(milter.port, "4QA"), Some(Status::Continue));
    assert!(
        milter.wait_exit(Duration::from_secs(10)),
        "the crash point store_apply was not reached"
    );
    milter.set_env(&[]);
    milter.restart();
    let (events, tids, queue_ids) = injections(&milter.store_path());
    assert_eq!(events, once_each());
    assert_eq!(tids.len(), 1, "{tids:?}");
    assert!(queue_ids.contains(&"4QA".to_owned()), "{queue_ids:?}");
}

#[test]
fn copies_over_the_ceiling_are_refused_before_any_is_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let toml = config(&sendmail, None).replace(
        "concurrency = 1\n",
        "concurrency = 1\nmax_copies_bytes = \"2KiB\"\n",
    );
    let milter = support::Milter::start(&toml);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, actions) = runtime.block_on(async {
        let mut conn = TestConnection::configure()
            .read_timeout(Duration::from_secs(20))
            .available_actions(indymilter_test::Actions::all())
            .open_tcp(("127.0.0.1", milter.port))
            .await
            .unwrap();
        conn.mail(["<app@example.com>"]).await.unwrap();
        conn.rcpt(["<to@example.org>"]).await.unwrap();
        let api = format!("{{\"bcc\": {BCC:?}}}");
        conn.header("X-MSYS-API", api.as_str()).await.unwrap();
        conn.body("x".repeat(1000).into_bytes()).await.unwrap();
        let (actions, status) = conn.eom().await.unwrap();
        (status, actions)
    });
    let Status::Reject {
        message: Some(reply),
    } = &status
    else {
        panic!("{status:?} {actions:?}");
    };
    assert_eq!(
        reply.to_str().unwrap(),
        "552 5.3.4 message too big for this many personalised copies (together over 2048 bytes)"
    );
    assert!(handed(dir.path()).is_empty());
}

/// The one window the ledger cannot see: the MTA has queued a copy and sent its `250`
/// when the daemon dies, before it reads the reply. Each copy has a sender of its own,
/// which the MTA logs once the copy is queued; the retry finds it in the log the
/// daemon follows, and does not hand that copy over again. Through the real Postfix.
#[test]
fn a_copy_the_mta_took_as_the_daemon_died_is_not_handed_over_again() {
    use support::e2e::E2e;
    let mut e2e = E2e::start_feedback(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        &[],
        "",
    );
    e2e.milter
        .set_env(&[("MSYS_MILTER_FAILPOINT", "copy_taken")]);
    e2e.milter.restart();
    let message = "From: App <app@example.com>\nTo: to@example.org\nSubject: once\n\
                   Message-ID: <taken@example.com>\nDate: Sun, 6 Dec 2026 06:00:00 +0000\n\
                   X-MSYS-API: {\"bcc\": [\"b1@example.org\"]}\n\nHello\n";
    let first = e2e.send("app@example.com", &["to@example.org"], message);
    assert!(
        first.is_err(),
        "the daemon died at the copy's 250: {first:?}"
    );
    assert!(e2e.milter.wait_exit(Duration::from_secs(10)));
    e2e.milter.set_env(&[]);
    e2e.milter.restart();
    // The client sends the same message again.
    let retry = e2e.send("app@example.com", &["to@example.org"], message);
    assert!(retry.is_ok(), "{retry:?}\n{}", e2e.milter.log());
    e2e.wait_for_exactly(2);
    let mut per_rcpt: BTreeMap<String, usize> = BTreeMap::new();
    for r in e2e.capture.all() {
        for rcpt in r.rcpts {
            *per_rcpt.entry(rcpt).or_default() += 1;
        }
    }
    assert_eq!(
        per_rcpt,
        BTreeMap::from([
            ("b1@example.org".to_owned(), 1),
            ("to@example.org".to_owned(), 1)
        ]),
        "{}",
        e2e.milter.log()
    );
    assert!(
        e2e.milter
            .log()
            .contains("copy taken by the MTA before a crash"),
        "{}",
        e2e.milter.log()
    );
}
