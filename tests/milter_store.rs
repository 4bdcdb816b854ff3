//! The milter with its store, driven over a socket by indymilter-test: suppressed
//! recipients are taken out of the message and get their events, an all-suppressed
//! message gets SparkPost's 554, the list of the message's type and account applies,
//! `skip_suppression` skips it, and a store that fails tempfails the message.

use indymilter_test::{EomAction, MacroStage, Status, TestConnection};
use msys_milter::config::{Config, SocketSpec};
use msys_milter::events::{EventType, Transmission};
use msys_milter::ids::IdGenerator;
use msys_milter::milter::BoundSocket;
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{
    Account, Batch, Commit, Queued, SinkSpec, SinkStatus, SqliteStore, Store, StoreError,
    StoreFuture, SuppressionEntry, SuppressionFilter, SuppressionType,
};
use serde_json::Value;
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

async fn start(toml: &str, store: Arc<dyn Store>) -> TestConnection {
    let mut config = Config::parse(toml, Path::new("test.toml")).unwrap();
    config.socket = SocketSpec::Inet("127.0.0.1:0".into());
    let socket = BoundSocket::bind(&config.socket).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (listener, _guard) = socket.into_parts();
    let daemon =
        msys_milter::Daemon::with_store(config, store, Arc::new(IdGenerator::new(3))).unwrap();
    tokio::spawn(async move {
        daemon
            .run(listener, std::future::pending::<()>())
            .await
            .unwrap()
    });
    TestConnection::configure()
        .read_timeout(std::time::Duration::from_secs(10))
        .available_actions(indymilter_test::Actions::all())
        .open_tcp(addr)
        .await
        .unwrap()
}

fn sqlite() -> Arc<SqliteStore> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(SqliteStore::open(&dir.join("store.db"), Durability::Normal).unwrap())
}

async fn suppress(store: &dyn Store, rcpt: &str, account: Account, kind: SuppressionType) {
    store
        .commit(Commit {
            suppress: vec![SuppressionEntry::new(
                rcpt,
                account,
                kind,
                "Manually Added",
                "test",
                1,
            )],
            ..Commit::default()
        })
        .await
        .unwrap();
}

async fn send(
    conn: &mut TestConnection,
    rcpts: &[&str],
    api: Option<&str>,
    auth: Option<&str>,
) -> (Vec<EomAction>, Status) {
    if let Some(auth) = auth {
        conn.macros(MacroStage::Mail, [("{auth_authen}", auth)])
            .await
            .unwrap();
    }
    conn.mail(["<app@example.com>"]).await.unwrap();
    for rcpt in rcpts {
        conn.rcpt([*rcpt]).await.unwrap();
    }
    conn.header("From", "App <app@example.com>").await.unwrap();
    conn.header("Subject", "=?utf-8?q?Caf=C3=A9?=")
        .await
        .unwrap();
    if let Some(api) = api {
        conn.header("X-MSYS-API", api).await.unwrap();
    }
    conn.macros(MacroStage::Eom, [("i", "4QUEUEID")])
        .await
        .unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status)
}

/// Every stored event's inner object, oldest first.
async fn events(store: &dyn Store) -> Vec<(EventType, Value)> {
    store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, kind, item)| {
            let v: Value = serde_json::from_str(&item).unwrap();
            let inner = v["msys"][kind.category()].clone();
            (kind, inner)
        })
        .collect()
}

fn added(actions: &[EomAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            EomAction::AddRecipient { rcpt, .. } => Some(rcpt.to_str().unwrap().to_owned()),
            _ => None,
        })
        .collect()
}

fn deleted(actions: &[EomAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            EomAction::DeleteRecipient { rcpt } => Some(rcpt.to_str().unwrap().to_owned()),
            _ => None,
        })
        .collect()
}

const SUPPRESSED: &str = "554 5.7.1 recipient address was suppressed due to customer policy";

#[tokio::test]
async fn suppressed_recipients_are_removed_with_their_events() {
    let store = sqlite();
    suppress(
        store.as_ref(),
        "Sup@Example.org",
        None,
        SuppressionType::NonTransactional,
    )
    .await;
    suppress(
        store.as_ref(),
        "sup2@example.org",
        None,
        SuppressionType::NonTransactional,
    )
    .await;
    let mut conn = start(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        store.clone(),
    )
    .await;
    let (actions, status) = send(
        &mut conn,
        &["<to@example.org>", "<sup@example.org>"],
        Some(r#"{"campaign_id":"spring","tags":["t1"],"metadata":{"n":1},"cc":["cc@example.org","SUP2@example.org"]}"#),
        None,
    )
    .await;
    assert_eq!(status, Status::Continue);
    assert_eq!(added(&actions), ["<cc@example.org>"]);
    assert_eq!(deleted(&actions), ["<sup@example.org>"]);

    let events = events(store.as_ref()).await;
    let summary: Vec<(EventType, String, Option<String>)> = events
        .iter()
        .map(|(k, e)| {
            (
                *k,
                e["rcpt_to"].as_str().unwrap().to_owned(),
                e.get("rcpt_type").map(|t| t.as_str().unwrap().to_owned()),
            )
        })
        .collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        summary,
        [
            (EventType::Injection, s("to@example.org"), None),
            (EventType::Injection, s("cc@example.org"), Some(s("cc"))),
            (EventType::Injection, s("sup@example.org"), None),
            (EventType::Bounce, s("sup@example.org"), None),
            (EventType::Injection, s("sup2@example.org"), Some(s("cc"))),
            (EventType::Bounce, s("sup2@example.org"), Some(s("cc"))),
        ]
    );
    let bounce = &events[3].1;
    assert_eq!(bounce["bounce_class"], "25");
    assert_eq!(bounce["error_code"], "554");
    assert_eq!(bounce["reason"], SUPPRESSED);
    let injection = &events[0].1;
    assert_eq!(injection["campaign_id"], "spring");
    assert_eq!(injection["rcpt_tags"], serde_json::json!(["t1"]));
    assert_eq!(injection["rcpt_meta"], serde_json::json!({"n": 1}));
    assert_eq!(injection["subject"], "Café");
    assert_eq!(injection["friendly_from"], "app@example.com");
    assert_eq!(injection["queue_id"], "4QUEUEID");
    assert_eq!(injection["raw_rcpt_to"], "to@example.org");
    assert!(
        injection["msg_from"]
            .as_str()
            .unwrap()
            .starts_with("bounces+")
    );
    // Every scalar is a string but the four flags SparkPost sends as booleans; ids are
    // unique.
    let mut ids = std::collections::HashSet::new();
    for (_, e) in &events {
        for (k, v) in e.as_object().unwrap() {
            match k.as_str() {
                "rcpt_meta" | "rcpt_tags" => {}
                "click_tracking" | "open_tracking" | "initial_pixel" | "amp_enabled" => {
                    assert!(v.is_boolean(), "{k}: {v}")
                }
                _ => assert!(v.is_string(), "{k}: {v}"),
            }
        }
        assert!(ids.insert(e["event_id"].as_str().unwrap().to_owned()));
    }
    // The transmission's facts are kept for events from the tracking endpoint.
    let tid = injection["transmission_id"].as_str().unwrap();
    let t: Transmission = store.transmission(tid).await.unwrap().unwrap();
    assert_eq!(t.campaign_id.as_deref(), Some("spring"));
    // And every recipient's own message, for the events that come later.
    let cc = t.recipient("CC@example.org");
    assert_eq!(cc.rcpt_type, Some("cc"));
    assert_eq!(cc.message_id, events[1].1["message_id"].as_str().unwrap());
    assert_eq!(cc.queue_id.as_deref(), Some("4QUEUEID"));
    let sup2 = t.recipient("sup2@example.org");
    assert_eq!(sup2.rcpt_type, Some("cc"));
    assert_eq!(t.recipient("nobody@example.org").message_id, "");
}

#[tokio::test]
async fn every_recipient_suppressed_is_refused_with_the_exact_reply() {
    let store = sqlite();
    suppress(
        store.as_ref(),
        "sup@example.org",
        None,
        SuppressionType::NonTransactional,
    )
    .await;
    let mut conn = start("", store.clone()).await;
    let (_, status) = send(&mut conn, &["<SUP@example.org>"], None, None).await;
    assert_eq!(
        status,
        Status::Reject {
            message: Some(CString::new(SUPPRESSED).unwrap())
        }
    );
    let kinds: Vec<EventType> = events(store.as_ref())
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(kinds, [EventType::Injection, EventType::Bounce]);
}

#[tokio::test]
async fn the_list_of_the_messages_type_and_account_applies_unless_skipped() {
    let store = sqlite();
    suppress(
        store.as_ref(),
        "nt@example.org",
        None,
        SuppressionType::NonTransactional,
    )
    .await;
    suppress(
        store.as_ref(),
        "tr@example.org",
        None,
        SuppressionType::Transactional,
    )
    .await;
    suppress(
        store.as_ref(),
        "sub@example.org",
        Some(7),
        SuppressionType::NonTransactional,
    )
    .await;
    let mut conn = start("", store.clone()).await;
    let refused = Status::Reject {
        message: Some(CString::new(SUPPRESSED).unwrap()),
    };
    let transactional = Some(r#"{"options":{"transactional":true}}"#);
    let skip = Some(r#"{"options":{"skip_suppression":true}}"#);
    let sub = Some("SMTP_Injection:X-MSYS-SUBACCOUNT=7");
    for (rcpt, api, auth, expected) in [
        ("<nt@example.org>", None, None, refused.clone()),
        ("<nt@example.org>", transactional, None, Status::Continue),
        ("<tr@example.org>", transactional, None, refused.clone()),
        ("<tr@example.org>", None, None, Status::Continue),
        ("<nt@example.org>", skip, None, Status::Continue),
        // A subaccount's entry binds that subaccount only.
        ("<sub@example.org>", None, None, Status::Continue),
        ("<sub@example.org>", None, sub, refused.clone()),
        ("<nt@example.org>", None, sub, Status::Continue),
    ] {
        let (_, status) = send(&mut conn, &[rcpt], api, auth).await;
        assert_eq!(status, expected, "{rcpt} {api:?} {auth:?}");
    }
}

/// A store whose every call fails, as a full disk or a broken database would.
struct FailingStore(Arc<tokio::sync::Notify>);

fn broken<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(async { Err(StoreError::Stopped) })
}

impl Store for FailingStore {
    fn commit(&self, _: Commit) -> StoreFuture<'_, ()> {
        broken()
    }
    fn suppressed<'a>(
        &'a self,
        _: Account,
        _: SuppressionType,
        _: &'a [String],
    ) -> StoreFuture<'a, Vec<String>> {
        broken()
    }
    fn transmission<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Transmission>> {
        broken()
    }
    fn queued<'a>(&'a self, _: &'a [String]) -> StoreFuture<'a, Vec<Queued>> {
        broken()
    }
    fn cursor<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<String>> {
        broken()
    }
    fn set_sinks(&self, _: Vec<SinkSpec>) {}
    fn committed(&self) -> Arc<tokio::sync::Notify> {
        self.0.clone()
    }
    fn next_batch<'a>(
        &'a self,
        _: &'a str,
        _: usize,
        _: &'a str,
        _: u64,
    ) -> StoreFuture<'a, Option<Batch>> {
        broken()
    }
    fn batch_delivered<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        broken()
    }
    fn batch_failed<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: u64,
        _: u64,
        _: bool,
    ) -> StoreFuture<'a, ()> {
        broken()
    }
    fn sink_status(&self) -> StoreFuture<'_, Vec<SinkStatus>> {
        broken()
    }
    fn replay<'a>(&'a self, _: u64, _: &'a [String]) -> StoreFuture<'a, u64> {
        broken()
    }
    fn events_after(&self, _: u64, _: usize) -> StoreFuture<'_, Vec<(u64, EventType, String)>> {
        broken()
    }
    fn suppression_list(&self, _: SuppressionFilter) -> StoreFuture<'_, Vec<SuppressionEntry>> {
        broken()
    }
    fn suppression_remove(&self, _: SuppressionFilter) -> StoreFuture<'_, u64> {
        broken()
    }
    fn prune(&self, _: u64, _: u64) -> StoreFuture<'_, u64> {
        broken()
    }
}

#[tokio::test]
async fn a_store_that_fails_tempfails_the_message() {
    let store: Arc<dyn Store> = Arc::new(FailingStore(Arc::default()));
    let mut conn = start("", store).await;
    let tempfail = Status::Tempfail {
        message: Some(CString::new("451 4.3.0 event store unavailable, try again later").unwrap()),
    };
    // At the suppression lookup, and (skipped lookup) at the commit of the events.
    let (_, status) = send(&mut conn, &["<to@example.org>"], None, None).await;
    assert_eq!(status, tempfail);
    let skip = Some(r#"{"options":{"skip_suppression":true}}"#);
    let (_, status) = send(&mut conn, &["<to@example.org>"], skip, None).await;
    assert_eq!(status, tempfail);
}

#[tokio::test]
async fn the_store_survives_reopening_and_group_commits_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let store = Arc::new(SqliteStore::open(&path, Durability::Full).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                suppress(
                    store.as_ref(),
                    &format!("r{i}@example.org"),
                    None,
                    SuppressionType::Transactional,
                )
                .await
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    let store = SqliteStore::open(&path, Durability::Full).unwrap();
    let all = store
        .suppression_list(SuppressionFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    let hits = store
        .suppressed(
            None,
            SuppressionType::Transactional,
            &["R7@Example.org".into(), "x@example.org".into()],
        )
        .await
        .unwrap();
    assert_eq!(hits, ["r7@example.org"]);
}

/// Mail for the bounce domains is inbound feedback: passed untouched (no MAIL FROM
/// rewrite, no suppression check, no events), never refused as an unconfigured sending
/// domain. Mixed with an outside recipient it is ordinary outbound mail.
#[tokio::test]
async fn feedback_for_the_bounce_domains_passes_untouched() {
    let store = sqlite();
    let verp = "bounces+123@bounces.example.net";
    suppress(
        store.as_ref(),
        verp,
        None,
        SuppressionType::NonTransactional,
    )
    .await;
    let toml = "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
                [[sending_domain]]\nname = \"shop.example\"\n";
    let mut conn = start(toml, store.clone()).await;
    let (actions, status) = send(
        &mut conn,
        &[&format!("<{verp}>")],
        Some(r#"{"campaign_id": "x"}"#),
        None,
    )
    .await;
    assert_eq!(status, Status::Continue);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(events(store.as_ref()).await.is_empty());

    let mut conn = start(toml, store.clone()).await;
    let (_, status) = send(
        &mut conn,
        &[&format!("<{verp}>"), "<user@example.org>"],
        None,
        None,
    )
    .await;
    let Status::Reject {
        message: Some(reply),
    } = status
    else {
        panic!("{status:?}")
    };
    let reply = reply.to_string_lossy();
    assert!(reply.contains("Unconfigured Sending Domain"), "{reply}");
}

/// The daemon and a CLI verb may open a new store at the same moment: each waits for
/// the other's migration instead of running it again ("table already exists").
#[test]
fn stores_opened_at_once_on_a_new_file_migrate_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let openers: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                SqliteStore::open(&path, Durability::Full).map(|_| ())
            })
        })
        .collect();
    for opener in openers {
        opener.join().unwrap().unwrap();
    }
}

/// The MTA's own name (the `j` macro) is remembered in the store at its first message,
/// so the feedback listener knows that MTA's DSNs as in-band bounces, also after a
/// restart; a second MTA name is added beside it, and repeats change nothing.
#[tokio::test]
async fn the_mtas_own_name_is_remembered_in_the_store() {
    use msys_milter::feedback::MTA_NAMES_CURSOR;
    let store = sqlite();
    let mut conn = start(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        store.clone(),
    )
    .await;
    assert_eq!(store.cursor(MTA_NAMES_CURSOR).await.unwrap(), None);
    for name in ["mx1.example.net", "mx1.example.net", "mx2.example.net"] {
        conn.macros(MacroStage::Mail, [("j", name), ("v", "Postfix 3.7.11")])
            .await
            .unwrap();
        let (_, status) = send(&mut conn, &["<to@example.org>"], None, None).await;
        assert_eq!(status, Status::Continue);
    }
    // Noted off the message's path: give it a moment.
    let mut names = None;
    for _ in 0..100 {
        names = store.cursor(MTA_NAMES_CURSOR).await.unwrap();
        if names.as_deref() == Some("mx1.example.net mx2.example.net") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(names.as_deref(), Some("mx1.example.net mx2.example.net"));
}
