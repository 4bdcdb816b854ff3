//! The LMTP listener in process: the dialogue (many recipients, pipelining, bad input,
//! dot-unstuffing, size limit) against a recording delivery, and the real feedback
//! delivery on a real store: a DSN becomes events and a suppression entry, what cannot
//! be read is kept, a store that fails answers 451.

mod support;

use msys_milter::config::Config;
use msys_milter::events::{EventType, Transmission};
use msys_milter::feedback::inbound::{Inbound, Keep};
use msys_milter::ids::IdGenerator;
use msys_milter::store::{Commit, SqliteStore, Store, SuppressionFilter, SuppressionType};
use std::sync::Arc;
use support::lmtp::{Recording, converse};

#[tokio::test]
async fn pipelined_transaction_with_many_recipients_gets_one_reply_each() {
    let deliver = Arc::new(Recording::default());
    let mut input = String::from("LHLO mta.test\r\nMAIL FROM:<>\r\n");
    for i in 0..50 {
        input.push_str(&format!("RCPT TO:<r{i}@ok.example>\r\n"));
    }
    input.push_str(
        "RCPT TO:<x@elsewhere.example>\r\nDATA\r\nSubject: t\r\n\r\n..dot line\r\n.\r\nQUIT\r\n",
    );
    let out = converse(Arc::clone(&deliver), input.as_bytes(), 1 << 20).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("220 lmtp.test"), "{out}");
    assert!(out.contains("250-PIPELINING") && out.contains("250-ENHANCEDSTATUSCODES"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("250 2.1.5")).count(),
        50
    );
    assert!(out.contains("550 5.1.1 <x@elsewhere.example>: no"), "{out}");
    for i in 0..50 {
        assert!(out.contains(&format!("250 2.0.0 Ok {i}\r\n")), "{out}");
    }
    assert!(lines.last().unwrap().starts_with("221"), "{out}");
    let messages = deliver.messages.lock().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, "");
    assert_eq!(messages[0].1.len(), 50);
    assert_eq!(
        messages[0].2, b"Subject: t\r\n\r\n.dot line\r\n",
        "dot-unstuffed"
    );
}

#[tokio::test]
async fn bad_input_gets_clear_replies_and_no_delivery() {
    let deliver = Arc::new(Recording::default());
    let long = "X".repeat(10_000);
    let input = format!(
        "EHLO mta.test\r\nMAIL FROM:<a@b.example>\r\nLHLO\r\nLHLO mta.test\r\nRCPT TO:<a@ok.example>\r\nDATA\r\n\
         MAIL FROM:a@b.example\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n{long}\r\nBOGUS\r\n\
         RSET\r\nNOOP\r\nVRFY x\r\n\u{fffd}\u{1}\r\nQUIT\r\n"
    );
    let out = converse(Arc::clone(&deliver), input.as_bytes(), 1 << 20).await;
    let expected = [
        "500 5.5.1 this is LMTP: use LHLO",
        "503 5.5.1 LHLO first",
        "501 5.5.4 LHLO needs a host name",
        "503 5.5.1 MAIL first",
        "503 5.5.1 MAIL first",
        "501 5.5.4 syntax: MAIL FROM:<address>",
        "250 2.1.0 Ok",
        "503 5.5.1 nested MAIL command",
        "503 5.5.1 no valid recipients",
        "500 5.5.2 line too long",
        "500 5.5.2 command not recognised",
        "250 2.0.0 Ok",
        "252 2.5.0",
        "221 2.0.0",
    ];
    let mut rest = out.as_str();
    for e in expected {
        let at = rest
            .find(e)
            .unwrap_or_else(|| panic!("{e:?} missing, in order, from:\n{out}"));
        rest = &rest[at + e.len()..];
    }
    assert!(deliver.messages.lock().unwrap().is_empty());
}

#[tokio::test]
async fn too_large_and_truncated_messages_are_not_delivered() {
    let deliver = Arc::new(Recording::default());
    let body = "a".repeat(200);
    let input = format!(
        "LHLO m\r\nMAIL FROM:<>\r\nRCPT TO:<a@ok.example>\r\nRCPT TO:<b@ok.example>\r\nDATA\r\n{body}\r\n.\r\nQUIT\r\n"
    );
    let out = converse(Arc::clone(&deliver), input.as_bytes(), 100).await;
    assert_eq!(out.matches("552 5.3.4 message too big").count(), 2, "{out}");
    // The connection ends inside DATA: nothing is delivered, nothing is answered.
    let out = converse(
        Arc::clone(&deliver),
        b"LHLO m\r\nMAIL FROM:<>\r\nRCPT TO:<a@ok.example>\r\nDATA\r\nSubject: half",
        1 << 20,
    )
    .await;
    assert!(
        out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{out}"
    );
    assert!(deliver.messages.lock().unwrap().is_empty());
}

/// Random bytes never panic the server, and it always closes.
#[tokio::test]
async fn random_input_never_panics() {
    let deliver = Arc::new(Recording::default());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        let mut input = Vec::new();
        let words: [&[u8]; 9] = [
            b"LHLO x\r\n",
            b"MAIL FROM:<>\r\n",
            b"RCPT TO:<a@ok.example>\r\n",
            b"DATA\r\n",
            b".\r\n",
            b"\r\n",
            b"..\r\n",
            b"RSET\r\n",
            b"\x00\xff<>:@\n",
        ];
        for _ in 0..(round % 40) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            input.extend_from_slice(words[(seed % 9) as usize]);
        }
        let _ = converse(Arc::clone(&deliver), &input, 4096).await;
    }
}

fn config() -> Arc<Config> {
    Arc::new(
        Config::parse(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
            std::path::Path::new("test.toml"),
        )
        .unwrap(),
    )
}

/// The LMTP side of the feedback loop on `store`, keeping at most `keep_max` unread
/// messages in `keep_dir`.
fn inbound(store: Arc<dyn Store>, keep_dir: &std::path::Path, keep_max: usize) -> Arc<Inbound> {
    Arc::new(Inbound {
        config: config(),
        store,
        ids: Arc::new(IdGenerator::new(1)),
        our_mtas: vec!["mta.e2e.test".into()],
        keep: Keep {
            dir: keep_dir.to_owned(),
            max: keep_max,
        },
        log_reports_delays: false,
    })
}

fn dsn(tid: &str) -> Vec<u8> {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dsn/postfix-dsn-5.1.1.eml"
    ))
    .unwrap()
    .replace("1234567890123", tid)
    .replace('\n', "\r\n")
    .into_bytes()
}

fn sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(
            &dir.join("s.db"),
            msys_milter::store::sqlite::Durability::Normal,
        )
        .unwrap(),
    )
}

fn lmtp_message(rcpt: &str, message: &[u8]) -> Vec<u8> {
    let mut input =
        format!("LHLO mta.e2e.test\r\nMAIL FROM:<>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").into_bytes();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            input.push(b'.');
        }
        input.extend_from_slice(line);
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");
    input
}

#[tokio::test]
async fn a_dsn_becomes_a_bounce_event_and_a_suppression_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    store
        .commit(Commit {
            transmission: Some(Transmission {
                transmission_id: "777".into(),
                campaign_id: Some("winter".into()),
                subaccount_id: Some(5),
                msg_from: "bounces+777@bounces.example.net".into(),
                ..Transmission::default()
            }),
            ..Commit::default()
        })
        .await
        .unwrap();
    let inbound = inbound(Arc::clone(&store), &dir.path().join("kept"), 2);
    let out = converse(
        Arc::clone(&inbound),
        &lmtp_message("bounces+777@bounces.example.net", &dsn("777")),
        1 << 20,
    )
    .await;
    assert!(
        out.contains("250 2.0.0 Ok: 1 event(s), 1 suppressed"),
        "{out}"
    );
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, EventType::Bounce);
    let item: serde_json::Value = serde_json::from_str(&events[0].2).unwrap();
    let bounce = &item["msys"]["message_event"];
    assert_eq!(bounce["bounce_class"], "10");
    assert_eq!(bounce["rcpt_to"], "dead@example.org");
    assert_eq!(bounce["campaign_id"], "winter");
    assert_eq!(bounce["subaccount_id"], "5");
    let entries = store
        .suppression_list(SuppressionFilter::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].recipient, "dead@example.org");
    assert_eq!(entries[0].account, Some(5));
    assert_eq!(entries[0].kind, SuppressionType::NonTransactional);
    assert_eq!(entries[0].source, "Bounce Rule");
    assert!(entries[0].description.contains("User unknown"));

    // Not ours (unknown transmission), and not a report at all: accepted, kept, bounded.
    for message in [
        dsn("999"),
        b"Subject: hello\r\n\r\nhi\r\n".to_vec(),
        b"Subject: again\r\n\r\nhi\r\n".to_vec(),
    ] {
        let out = converse(
            Arc::clone(&inbound),
            &lmtp_message("bounces+999@bounces.example.net", &message),
            1 << 20,
        )
        .await;
        assert!(out.contains("250 2.0.0 Ok: kept for inspection"), "{out}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("kept")).unwrap().count(),
        2
    );
    // Another domain's address is refused at RCPT.
    let out = converse(
        Arc::clone(&inbound),
        &lmtp_message("user@example.org", b"x\r\n"),
        1 << 20,
    )
    .await;
    assert!(
        out.contains("550 5.1.1 <user@example.org>: not a feedback address here"),
        "{out}"
    );
}

#[tokio::test]
async fn a_store_that_fails_answers_451() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(
            &dir.path().join("s.db"),
            msys_milter::store::sqlite::Durability::Normal,
        )
        .unwrap(),
    );
    sqlite
        .commit(Commit {
            transmission: Some(Transmission {
                transmission_id: "777".into(),
                ..Transmission::default()
            }),
            ..Commit::default()
        })
        .await
        .unwrap();
    // Reads still work, writes fail: the worst moment.
    sqlite.close();
    let inbound = inbound(sqlite, &dir.path().join("kept"), 10);
    let out = converse(
        inbound,
        &lmtp_message("bounces+777@bounces.example.net", &dsn("777")),
        1 << 20,
    )
    .await;
    assert!(
        out.contains("451 4.3.0 feedback store unavailable, try again later"),
        "{out}"
    );
}

/// With no name configured, a DSN is in-band (`bounce`) once the milter has learnt the
/// MTA's name (kept in the store, so it holds after a restart); before, or from another
/// MTA, it is `out_of_band`. The events name the attempt: the remote server's address
/// (from the report's text when Remote-MTA is a name) and the report's time.
#[tokio::test]
async fn a_dsn_from_the_mta_the_milter_learnt_is_in_band() {
    use msys_milter::feedback::MTA_NAMES_CURSOR;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    for tid in ["771", "772"] {
        store
            .commit(Commit {
                transmission: Some(Transmission {
                    transmission_id: tid.into(),
                    msg_from: format!("bounces+{tid}@bounces.example.net"),
                    ..Transmission::default()
                }),
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    let inbound = Arc::new(Inbound {
        our_mtas: Vec::new(),
        ..Arc::into_inner(inbound(Arc::clone(&store), &dir.path().join("kept"), 2)).unwrap()
    });
    let kinds = |store: Arc<dyn Store>| async move {
        store
            .events_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, kind, item)| (kind, item))
            .collect::<Vec<_>>()
    };
    converse(
        Arc::clone(&inbound),
        &lmtp_message("bounces+771@bounces.example.net", &dsn("771")),
        1 << 20,
    )
    .await;
    assert_eq!(kinds(Arc::clone(&store)).await[0].0, EventType::OutOfBand);
    // The milter saw `j` = mta.e2e.test (the DSN's Reporting-MTA).
    store
        .commit(Commit {
            cursor: Some((
                MTA_NAMES_CURSOR.into(),
                "mx0.example.net mta.e2e.test".into(),
            )),
            ..Commit::default()
        })
        .await
        .unwrap();
    converse(
        Arc::clone(&inbound),
        &lmtp_message("bounces+772@bounces.example.net", &dsn("772")),
        1 << 20,
    )
    .await;
    let events = kinds(store).await;
    assert_eq!(events[1].0, EventType::Bounce);
    let item: serde_json::Value = serde_json::from_str(&events[1].1).unwrap();
    let bounce = &item["msys"]["message_event"];
    assert_eq!(bounce["ip_address"], "192.0.2.10");
    // The report's Date: (Mon, 30 Nov 2026 09:00:03 +0000), not the time it was read.
    assert_eq!(bounce["timestamp"], "1796029203");
    assert_eq!(
        bounce["reason"],
        "550 5.1.1 <...@...>: Recipient address rejected: User unknown in local recipient table"
    );
}

/// Anyone can send a DSN to a bounce address (every recipient sees it as Return-Path)
/// and name whom they like: an address the transmission did not go to gets no event and
/// no suppression entry; the report is kept for inspection.
#[tokio::test]
async fn a_forged_dsn_naming_a_stranger_suppresses_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    let mut t = Transmission {
        transmission_id: "778".into(),
        subaccount_id: Some(5),
        msg_from: "bounces+778@bounces.example.net".into(),
        ..Transmission::default()
    };
    t.add_recipient(&msys_milter::events::Recipient {
        raw: "reader@example.org".into(),
        ..Default::default()
    });
    store
        .commit(Commit {
            transmission: Some(t),
            ..Commit::default()
        })
        .await
        .unwrap();
    let inbound = inbound(Arc::clone(&store), &dir.path().join("kept"), 2);
    // The sample DSN names dead@example.org, whom transmission 778 never mailed.
    let out = converse(
        Arc::clone(&inbound),
        &lmtp_message("bounces+778@bounces.example.net", &dsn("778")),
        1 << 20,
    )
    .await;
    assert!(out.contains("250 2.0.0 Ok: kept for inspection"), "{out}");
    // Nor does a complaint (no signed X-MSFBL) naming complainer@example.org.
    let arf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dsn/arf-abuse.eml"
    ))
    .unwrap()
    .replace("1234567890123", "778")
    .replace('\n', "\r\n");
    let out = converse(
        Arc::clone(&inbound),
        &lmtp_message("bounces+778@bounces.example.net", arf.as_bytes()),
        1 << 20,
    )
    .await;
    assert!(out.contains("250 2.0.0 Ok: kept for inspection"), "{out}");
    assert!(store.events_after(0, 10).await.unwrap().is_empty());
    let entries = store
        .suppression_list(SuppressionFilter::default())
        .await
        .unwrap();
    assert!(entries.is_empty(), "{entries:?}");
}

/// The listener's own limits, whatever the client sends: the 1,001st recipient of a
/// message gets 452 4.5.3 (and the message goes to the first 1,000 only), and the 20th
/// bad command ends the session with 421 4.7.0.
#[tokio::test]
async fn recipients_and_errors_are_capped() {
    let deliver = Arc::new(Recording::default());
    let mut input = String::from("LHLO c.example\r\nMAIL FROM:<>\r\n");
    for i in 0..1001 {
        input.push_str(&format!("RCPT TO:<r{i}@ok.example>\r\n"));
    }
    input.push_str("DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let out = converse(Arc::clone(&deliver), input.as_bytes(), 1 << 20).await;
    assert_eq!(
        out.matches("452 4.5.3 too many recipients").count(),
        1,
        "{out}"
    );
    let delivered = deliver.messages.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].1.len(), 1000);

    let deliver = Arc::new(Recording::default());
    let mut input = String::from("LHLO c.example\r\n");
    for _ in 0..30 {
        input.push_str("BOGUS\r\n");
    }
    let out = converse(Arc::clone(&deliver), input.as_bytes(), 1 << 20).await;
    assert!(
        out.ends_with("421 4.7.0 too many errors, closing\r\n"),
        "{out}"
    );
    // Each of the first 20 errors answered, then closed: the rest is never read.
    assert_eq!(out.matches("\r\n5").count(), 20, "{out}");
}
