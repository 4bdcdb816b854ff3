//! Security claims of the feedback side (RELIABILITY.md, "Claims without a test yet"):
//! the LMTP listener's line and time limits, a forged `mailto:` unsubscribe, and the log
//! follower never suppressing on a deferral nor on a bounced line of VERP mail.
//!
//! The two timeout tests wait out `IDLE` (300 s) and `DATA_TIMEOUT` (600 s) on tokio's
//! paused clock, in no real time.

mod support;

use msys_milter::config::Config;
use msys_milter::events::{self, EventType, Recipient, Stamp, Transmission};
use msys_milter::feedback::follow::{self, Follower};
use msys_milter::feedback::inbound::{Inbound, Keep};
use msys_milter::feedback::lmtp;
use msys_milter::ids::IdGenerator;
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{Commit, SqliteStore, Store, SuppressionFilter};
use msys_milter::tracking::token::{self, Keys, Kind, TokenData};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;
use support::lmtp::{Recording, converse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Read until what was read so far contains `want`; panics on EOF first.
async fn read_until<R: AsyncRead + Unpin>(read: &mut R, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = read.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "EOF before {want:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

// ---------------------------------------------------------------------------------
// Claim 1: LMTP line and time limits.
// ---------------------------------------------------------------------------------

/// A DATA line over 1 MiB (`MAX_DATA_LINE`, the CRLF counted) refuses the message with
/// `500 5.5.2 line too long in message` for each recipient, delivers nothing, and the
/// session goes on; a line of exactly 1 MiB is still delivered.
#[tokio::test]
async fn a_data_line_over_one_mebibyte_is_refused_500_5_5_2() {
    const MIB: usize = 1 << 20;
    let deliver = Arc::new(Recording::default());
    let message = |line_len: usize| {
        // `line_len` bytes, CRLF included.
        let long = "a".repeat(line_len - 2);
        format!(
            "LHLO m\r\nMAIL FROM:<>\r\nRCPT TO:<a@ok.example>\r\nRCPT TO:<b@ok.example>\r\n\
             DATA\r\nSubject: long\r\n\r\n{long}\r\nshort\r\n.\r\nNOOP\r\nQUIT\r\n"
        )
    };
    // Size limit far above the line: only the line length can refuse it.
    let out = converse(Arc::clone(&deliver), message(MIB + 1).as_bytes(), 8 * MIB).await;
    assert_eq!(
        out.matches("500 5.5.2 line too long in message\r\n")
            .count(),
        2,
        "{out}"
    );
    // Not the too-large reply, not a delivery; the session carries on (NOOP, QUIT).
    assert!(!out.contains("552"), "{out}");
    assert!(
        out.ends_with(
            "500 5.5.2 line too long in message\r\n250 2.0.0 Ok\r\n221 2.0.0 lmtp.test closing\r\n"
        ),
        "{out}"
    );
    assert!(deliver.messages.lock().unwrap().is_empty());

    // The boundary: a line of exactly 1 MiB is taken.
    let out = converse(Arc::clone(&deliver), message(MIB).as_bytes(), 8 * MIB).await;
    assert!(!out.contains("line too long"), "{out}");
    let messages = deliver.messages.lock().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].2.len(),
        "Subject: long\r\n\r\n".len() + MIB + "short\r\n".len()
    );
}

/// A client that goes silent (here after LHLO) gets `421 4.4.2 idle too long, closing`
/// after `IDLE` (300 s), not before, and the connection is closed.
#[tokio::test(start_paused = true)]
async fn a_silent_client_gets_421_4_4_2_after_300_s() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let deliver = Arc::new(Recording::default());
    let task =
        tokio::spawn(async move { lmtp::serve(server, "lmtp.test", 1 << 20, deliver).await });
    let (mut read, mut write) = tokio::io::split(client);
    read_until(&mut read, "220 lmtp.test").await;
    write.write_all(b"LHLO c.example\r\n").await.unwrap();
    read_until(&mut read, "250 SIZE").await;
    let silent = Instant::now();
    let mut rest = String::new();
    read.read_to_string(&mut rest).await.unwrap();
    let waited = silent.elapsed();
    assert_eq!(rest, "421 4.4.2 idle too long, closing\r\n");
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_secs(305),
        "{waited:?}"
    );
    task.await.unwrap();
}

/// A client that trickles its message (a line every 70 s, so never idle for `IDLE`) is
/// cut `DATA_TIMEOUT` (600 s) after the 354: no reply at all, nothing delivered.
#[tokio::test(start_paused = true)]
async fn a_trickled_message_is_cut_after_600_s() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let deliver = Arc::new(Recording::default());
    let server_deliver = Arc::clone(&deliver);
    let task =
        tokio::spawn(
            async move { lmtp::serve(server, "lmtp.test", 1 << 20, server_deliver).await },
        );
    let (mut read, mut write) = tokio::io::split(client);
    write
        .write_all(b"LHLO c.example\r\nMAIL FROM:<>\r\nRCPT TO:<a@ok.example>\r\nDATA\r\n")
        .await
        .unwrap();
    read_until(&mut read, "354 End data").await;
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut lines = 0u32;
        loop {
            tokio::time::sleep(Duration::from_secs(70)).await;
            if write.write_all(b"still coming\r\n").await.is_err() {
                return lines;
            }
            lines += 1;
        }
    });
    let mut rest = String::new();
    read.read_to_string(&mut rest).await.unwrap();
    let cut = started.elapsed();
    assert_eq!(rest, "", "no reply after the cut");
    assert!(
        cut >= Duration::from_secs(600) && cut < Duration::from_secs(605),
        "{cut:?}"
    );
    task.await.unwrap();
    // Lines at 70 s, 140 s, ... 560 s were written; the one at 630 s found it closed.
    assert_eq!(trickle.await.unwrap(), 8);
    assert!(deliver.messages.lock().unwrap().is_empty());
}

/// A client that goes silent inside a message (after the 354 and one line) is cut at
/// `IDLE` (300 s), not held until `DATA_TIMEOUT` (600 s): no reply, nothing delivered.
#[tokio::test(start_paused = true)]
async fn a_client_silent_inside_a_message_is_cut_after_300_s() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let deliver = Arc::new(Recording::default());
    let server_deliver = Arc::clone(&deliver);
    let task =
        tokio::spawn(
            async move { lmtp::serve(server, "lmtp.test", 1 << 20, server_deliver).await },
        );
    let (mut read, mut write) = tokio::io::split(client);
    write
        .write_all(b"LHLO c.example\r\nMAIL FROM:<>\r\nRCPT TO:<a@ok.example>\r\nDATA\r\n")
        .await
        .unwrap();
    read_until(&mut read, "354 End data").await;
    write.write_all(b"Subject: half\r\n").await.unwrap();
    let silent = Instant::now();
    let mut rest = String::new();
    read.read_to_string(&mut rest).await.unwrap();
    let cut = silent.elapsed();
    assert_eq!(rest, "", "no reply after the cut");
    assert!(
        cut >= Duration::from_secs(300) && cut < Duration::from_secs(305),
        "{cut:?}"
    );
    task.await.unwrap();
    assert!(deliver.messages.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------
// Claim 2: a forged mailto: unsubscribe does nothing.
// ---------------------------------------------------------------------------------

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("s.db"), Durability::Normal).unwrap())
}

fn lmtp_message(rcpt: &str, message: &[u8]) -> Vec<u8> {
    let mut input =
        format!("LHLO mta.test\r\nMAIL FROM:<reader@example.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n")
            .into_bytes();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            input.push(b'.');
        }
        input.extend_from_slice(line);
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");
    input
}

fn unsubscribe_token(secret: &str, kind: Kind, tid: u64, expires: u32) -> String {
    let keys = Keys::new(&[secret]).unwrap();
    token::sign(
        &keys,
        &TokenData {
            kind,
            transmission_id: tid,
            recipient: "reader@example.org".into(),
            link_index: 0,
            url: String::new(),
            link_name: String::new(),
            expires,
        },
    )
}

/// A mail to `unsub+TID@<bounce domain>` whose subject token is forged (another key),
/// garbage, expired, of another kind, for another transmission, or missing is accepted
/// and kept for inspection: no event, no suppression entry. The same mail with the
/// genuine token unsubscribes (so the test can tell the two apart).
#[tokio::test]
async fn a_forged_mailto_unsubscribe_is_kept_and_suppresses_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    let mut t = Transmission {
        transmission_id: "555".into(),
        msg_from: "bounces+555@bounces.example.net".into(),
        ..Transmission::default()
    };
    t.add_recipient(&Recipient {
        raw: "reader@example.org".into(),
        ..Recipient::default()
    });
    store
        .commit(Commit {
            transmission: Some(t),
            ..Commit::default()
        })
        .await
        .unwrap();
    let config = Config::parse(
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n[tracking]\nsecrets = [\"{SECRET}\"]\n"
        ),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let kept_dir = dir.path().join("kept");
    let inbound = Arc::new(Inbound {
        config: Arc::new(config),
        store: Arc::clone(&store),
        ids: Arc::new(IdGenerator::new(1)),
        our_mtas: vec!["mta.test".into()],
        keep: Keep {
            dir: kept_dir.clone(),
            max: 100,
        },
        log_reports_delays: false,
    });
    let now = msys_milter::ids::unix_secs() as u32;
    let later = now + 86_400;
    let forged = [
        (
            "signed with another key",
            unsubscribe_token(
                "another-secret-of-32-characters!",
                Kind::Unsubscribe,
                555,
                later,
            ),
        ),
        (
            "not a token",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        ),
        (
            "expired",
            unsubscribe_token(SECRET, Kind::Unsubscribe, 555, now - 60),
        ),
        (
            "a click token",
            unsubscribe_token(SECRET, Kind::Click, 555, later),
        ),
        (
            "another transmission's token",
            unsubscribe_token(SECRET, Kind::Unsubscribe, 556, later),
        ),
    ];
    let subjects: Vec<(&str, String)> = forged
        .iter()
        .map(|(why, token)| (*why, format!("unsubscribe:{token}")))
        .chain([("no token", "please unsubscribe me".to_owned())])
        .collect();
    for (i, (why, subject)) in subjects.iter().enumerate() {
        let message = format!(
            "From: reader@example.org\r\nTo: unsub+555@bounces.example.net\r\nSubject: {subject}\r\n\r\nbye\r\n"
        );
        let out = converse(
            Arc::clone(&inbound),
            &lmtp_message("unsub+555@bounces.example.net", message.as_bytes()),
            1 << 20,
        )
        .await;
        assert!(
            out.contains(
                "\r\n250 2.0.0 Ok: kept for inspection (unsubscribe without a valid token)\r\n"
            ),
            "{why}: {out}"
        );
        let kept: Vec<String> = std::fs::read_dir(&kept_dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(kept.len(), i + 1, "{why}");
        assert!(kept.iter().any(|k| k.contains(subject.as_str())), "{why}");
    }
    assert!(store.events_after(0, 100).await.unwrap().is_empty());
    let entries = store
        .suppression_list(SuppressionFilter::default())
        .await
        .unwrap();
    assert!(entries.is_empty(), "{entries:?}");

    // The genuine token, same mail: unsubscribed, one entry.
    let genuine = unsubscribe_token(SECRET, Kind::Unsubscribe, 555, later);
    let message = format!(
        "From: reader@example.org\r\nTo: unsub+555@bounces.example.net\r\nSubject: Re: unsubscribe:{genuine}\r\n\r\nbye\r\n"
    );
    let out = converse(
        Arc::clone(&inbound),
        &lmtp_message("unsub+555@bounces.example.net", message.as_bytes()),
        1 << 20,
    )
    .await;
    assert!(out.contains("\r\n250 2.0.0 Ok: unsubscribed\r\n"), "{out}");
    let events = store.events_after(0, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, EventType::ListUnsubscribe);
    let entries = store
        .suppression_list(SuppressionFilter::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].recipient, "reader@example.org");
    assert_eq!(entries[0].source, "List Unsubscribe");
    assert_eq!(
        std::fs::read_dir(&kept_dir).unwrap().count(),
        subjects.len()
    );
}

// ---------------------------------------------------------------------------------
// Claim 3: the log follower never suppresses on a deferral, nor on a bounced line of
// mail that carries our VERP bounce address (its DSN comes through LMTP).
// ---------------------------------------------------------------------------------

/// Store transmission `tid` sent from `msg_from`, with one injection per (queue id,
/// recipient).
async fn inject(
    store: &dyn Store,
    tid: &str,
    msg_from: &str,
    copies: &[(&str, &str)],
    first_id: u64,
) {
    let t = Transmission {
        transmission_id: tid.into(),
        msg_from: msg_from.into(),
        ..Transmission::default()
    };
    let mut commit = Commit {
        transmission: Some(t.clone()),
        ..Commit::default()
    };
    for (i, (qid, rcpt)) in copies.iter().enumerate() {
        commit.events.push(events::injection(
            Stamp {
                event_id: first_id + i as u64,
                timestamp: 1,
            },
            &t,
            &Recipient {
                raw: (*rcpt).into(),
                rcpt_type: None,
                message_id: format!("m-{qid}"),
                queue_id: Some((*qid).into()),
                msg_size: Some(100),
            },
        ));
    }
    store.commit(commit).await.unwrap();
}

fn postfix_line(qid: &str, rcpt: &str, dsn: &str, status: &str, reply: &str) -> String {
    format!(
        "Dec  2 14:00:01 mta postfix/smtp[42]: {qid}: to=<{rcpt}>, relay=mx.example.org[192.0.2.10]:25, delay=1.5, delays=0.1/0/0.2/1.2, dsn={dsn}, status={status} (host mx.example.org[192.0.2.10] said: {reply} (in reply to RCPT TO command))\n"
    )
}

#[tokio::test]
async fn deferred_lines_and_bounced_verp_lines_never_suppress() {
    use msys_milter::feedback::classify::classify;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path());
    // Mail with our VERP bounce address: its bounces come back as DSNs.
    inject(
        store.as_ref(),
        "901",
        "bounces+901@bounces.example.net",
        &[("QV1", "verp@example.org")],
        10,
    )
    .await;
    // Mail with someone else's sender: the log is all we hear of it.
    inject(
        store.as_ref(),
        "902",
        "news@example.com",
        &[
            ("QD1", "soft@example.org"),
            ("QD2", "hard@example.org"),
            ("QD3", "sm@example.org"),
            ("QN1", "gone@example.org"),
        ],
        20,
    )
    .await;
    let config = Config::parse(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let log = dir.path().join("maillog");
    std::fs::write(&log, "").unwrap();
    let follower = Follower::new(
        log.clone(),
        Arc::clone(&store),
        Arc::new(IdGenerator::new(2)),
        Arc::new(config),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(follower.run(async {
        let _ = stopped.await;
    }));
    // The first start reads from the end and says where: wait for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.cursor(follow::CURSOR).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the follower never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let user_unknown = "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown";
    // Postfix with soft_bounce = yes: a 550 deferred, its dsn made 4.1.1.
    let soft = postfix_line("QD1", "soft@example.org", "4.1.1", "deferred", user_unknown);
    // A deferral whose own status says permanent: classified hard, lowered by the follower.
    let hard = postfix_line("QD2", "hard@example.org", "5.1.1", "deferred", user_unknown);
    assert!(classify(Some("5.1.1"), user_unknown).is_hard());
    let sendmail = format!(
        "Dec  2 14:00:02 mta sm-mta[812]: QD3: to=<sm@example.org>, delay=00:00:01, xdelay=00:00:01, mailer=esmtp, pri=120432, relay=mx.example.org. [192.0.2.10], dsn=5.1.1, stat=Deferred: {user_unknown}\n"
    );
    // Bounced, VERP mail: the DSN will report it; the log line is skipped.
    let verp = postfix_line("QV1", "verp@example.org", "5.1.1", "bounced", user_unknown);
    // Bounced, not VERP: the control, which does suppress.
    let control = postfix_line("QN1", "gone@example.org", "5.1.1", "bounced", user_unknown);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for line in [&soft, &hard, &sendmail, &verp, &control] {
        f.write_all(line.as_bytes()).unwrap();
    }
    drop(f);
    assert!(follow::caught_up(store.as_ref(), &log, Duration::from_secs(10)).await);
    let _ = stop.send(());
    running.await.unwrap();

    let got: Vec<(String, String, String)> = store
        .events_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, kind, _)| *kind != EventType::Injection)
        .map(|(_, kind, item)| {
            let v: serde_json::Value = serde_json::from_str(&item).unwrap();
            let e = &v["msys"][kind.category()];
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["rcpt_to"].as_str().unwrap_or("").to_owned(),
                e["bounce_class"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("delay", "soft@example.org", "20"),
        ("delay", "hard@example.org", "20"),
        ("delay", "sm@example.org", "20"),
        ("bounce", "gone@example.org", "10"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(got, want, "no event for verp@example.org");
    let suppressed: Vec<String> = store
        .suppression_list(SuppressionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.recipient)
        .collect();
    assert_eq!(suppressed, ["gone@example.org"]);
}
