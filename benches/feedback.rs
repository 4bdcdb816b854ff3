//! Feedback benchmarks (part of bench/run.sh; prints Markdown for BENCHMARKS.md):
//! 1. DSNs processed per second through the LMTP listener into the store (each one a
//!    bounce event and a suppression entry, committed before the reply);
//! 2. MTA log lines followed per second;
//! 3. the bounce classifier's accuracy on the corpus in tests/data.

use msys_milter::config::Config;
use msys_milter::events::{self, Recipient, Stamp, Transmission};
use msys_milter::feedback::follow::{CURSOR, Follower};
use msys_milter::feedback::inbound::{Inbound, Keep, serve};
use msys_milter::ids::IdGenerator;
use msys_milter::milter::BoundSocket;
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{Commit, SqliteStore, Store};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TRANSMISSIONS: u64 = 1000;

fn config() -> Arc<Config> {
    Arc::new(
        Config::parse(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
            std::path::Path::new("bench.toml"),
        )
        .unwrap(),
    )
}

/// Transmissions 1..=TRANSMISSIONS, each with `per` injections under queue ids.
async fn seed(store: &dyn Store, per: u64) {
    for tid in 1..=TRANSMISSIONS {
        let t = Transmission {
            transmission_id: tid.to_string(),
            campaign_id: Some("bench".into()),
            msg_from: format!("bounces+{tid}@bounces.example.net"),
            ..Transmission::default()
        };
        let events = (0..per)
            .map(|i| {
                events::injection(
                    Stamp {
                        event_id: tid * 1000 + i,
                        timestamp: 1,
                    },
                    &t,
                    &Recipient {
                        raw: format!("r{i}@example.org"),
                        rcpt_type: None,
                        message_id: tid.to_string(),
                        queue_id: Some(format!("Q{tid}X{i}")),
                        msg_size: Some(3000),
                    },
                )
            })
            .collect();
        store
            .commit(Commit {
                events,
                transmission: Some(t),
                ..Commit::default()
            })
            .await
            .unwrap();
    }
}

fn dsn(tid: u64, n: usize) -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dsn/postfix-dsn-5.1.1.eml"
    ))
    .unwrap()
    .replace("1234567890123", &tid.to_string())
    .replace("dead@example.org", &format!("dead{n}@example.org"))
    .replace('\n', "\r\n")
}

async fn client(port: u16, messages: Vec<(u64, String)>) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    let mut reply = async |read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>| loop {
        line.clear();
        read.read_line(&mut line).await.unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.clone();
        }
    };
    reply(&mut read).await;
    write.write_all(b"LHLO bench\r\n").await.unwrap();
    reply(&mut read).await;
    for (tid, body) in messages {
        write
            .write_all(
                format!("MAIL FROM:<>\r\nRCPT TO:<bounces+{tid}@bounces.example.net>\r\nDATA\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        for _ in 0..3 {
            reply(&mut read).await;
        }
        write.write_all(body.as_bytes()).await.unwrap();
        write.write_all(b".\r\n").await.unwrap();
        let r = reply(&mut read).await;
        assert!(r.starts_with("250 2.0.0 Ok: 1 event"), "{r}");
    }
}

async fn lmtp(count: usize, connections: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("b.db"), Durability::Full).unwrap());
    seed(store.as_ref(), 1).await;
    let socket = BoundSocket::bind(&"inet:127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let inbound = Arc::new(Inbound {
        config: config(),
        store: Arc::clone(&store),
        ids: Arc::new(IdGenerator::new(1)),
        our_mtas: vec!["mta.e2e.test".into()],
        keep: Keep {
            dir: dir.path().join("kept"),
            max: 10,
        },
        log_reports_delays: false,
    });
    tokio::spawn(serve(
        socket,
        inbound,
        "lmtp.bench".into(),
        1 << 20,
        msys_milter::config::Feedback::default().max_connections.0,
        std::future::pending(),
    ));
    let mut work: Vec<Vec<(u64, String)>> = vec![Vec::new(); connections];
    for n in 0..count {
        let tid = (n as u64 % TRANSMISSIONS) + 1;
        work[n % connections].push((tid, dsn(tid, n)));
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for messages in work {
        tasks.spawn(client(port, messages));
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// A Postfix log of `lines` lines: per message a connect, cleanup, qmgr, a delivery
/// result and a removed line; a fifth of the results are for mail we sent.
fn write_log(path: &std::path::Path, lines: usize) -> u64 {
    let file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let mut f = std::io::BufWriter::new(file);
    let mut n = 0;
    let mut m = 0u64;
    while n < lines {
        let ours = m.is_multiple_of(5);
        let qid = if ours {
            format!("Q{}X0", (m / 5) % TRANSMISSIONS + 1)
        } else {
            format!("F{m:X}")
        };
        let status = if m.is_multiple_of(7) {
            "deferred"
        } else {
            "sent"
        };
        write!(
            f,
            "Dec  2 14:00:01 mta postfix/smtpd[100]: connect from app.example.com[192.0.2.5]\n\
             Dec  2 14:00:01 mta postfix/cleanup[101]: {qid}: message-id=<{m}@example.com>\n\
             Dec  2 14:00:01 mta postfix/qmgr[102]: {qid}: from=<bounces+1@bounces.example.net>, size=3000, nrcpt=1 (queue active)\n\
             Dec  2 14:00:02 mta postfix/smtp[103]: {qid}: to=<r0@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=2.0.0, status={status} (250 2.0.0 Ok: queued as ABC)\n\
             Dec  2 14:00:02 mta postfix/qmgr[102]: {qid}: removed\n"
        )
        .unwrap();
        n += 5;
        m += 1;
    }
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

async fn follow(lines: usize) -> (f64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("b.db"), Durability::Full).unwrap());
    seed(store.as_ref(), 1).await;
    let log = dir.path().join("maillog");
    // An empty log when the follower starts; then the lines arrive.
    std::fs::write(&log, b"").unwrap();
    let follower = Follower::new(
        log.clone(),
        Arc::clone(&store),
        Arc::new(IdGenerator::new(1)),
        config(),
    );
    tokio::spawn(follower.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let size = write_log(&log, lines);
    let start = Instant::now();
    loop {
        let done = store
            .cursor(CURSOR)
            .await
            .unwrap()
            .and_then(|c| c.rsplit(':').next().and_then(|o| o.parse::<u64>().ok()))
            == Some(size);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let events = store.events_after(0, 10_000_000).await.unwrap().len() - TRANSMISSIONS as usize;
    (lines as f64 / elapsed, events)
}

#[derive(serde::Deserialize)]
struct Sample {
    status: String,
    class: u8,
    text: String,
}

fn accuracy() -> (usize, usize) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/bounce-corpus.json"
    ))
    .unwrap();
    let samples: Vec<Sample> = serde_json::from_str(&text).unwrap();
    let right = samples
        .iter()
        .filter(|s| {
            let status = (!s.status.is_empty()).then_some(s.status.as_str());
            msys_milter::feedback::classify::classify(status, &s.text).code() == s.class
        })
        .count();
    (right, samples.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("### Feedback: DSNs through the LMTP listener, the MTA log, the classifier\n");
    println!(
        "Each DSN (Postfix's format, 5.1.1) is read, matched to its transmission, classified, and its `bounce` event and suppression entry committed (durability `full`) before the listener answers. Connections send one transaction after another.\n"
    );
    println!("| LMTP connections | DSNs | DSNs/s |");
    println!("|---|---|---|");
    for connections in [1, 8] {
        let count = 4000;
        let rate = lmtp(count, connections).await;
        println!("| {connections} | {count} | {rate:.0} |");
    }
    let lines = 1_000_000;
    let (rate, events) = follow(lines).await;
    println!(
        "\nFollowing a Postfix log: {lines} lines (per message: connect, cleanup, qmgr, the delivery result, removed; a fifth of the messages ours), read, matched by queue id and their events committed: **{rate:.0} lines/s** ({events} delivery and delay events)."
    );
    let (right, total) = accuracy();
    println!(
        "\nBounce classifier on the corpus (tests/data/bounce-corpus.json: {total} real-world replies from Gmail, Outlook/Hotmail, Yahoo, Exim, Postfix, Sendmail, qmail and Exchange, with the classes we expect): **{right}/{total} ({:.1}%)**.",
        right as f64 * 100.0 / total as f64
    );
}
