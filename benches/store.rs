//! The store on its own: events committed per second (group commit, many writers at
//! once, as many milter connections are), suppression lookups with 1,000,000 entries,
//! and `msys-milter suppression import` of a 1,000,000-row CSV. Prints Markdown for
//! BENCHMARKS.md.

use msys_milter::events::{self, Recipient, Stamp, Transmission};
use msys_milter::ids::IdGenerator;
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{Commit, SqliteStore, Store, SuppressionEntry, SuppressionType};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

const ENTRIES: usize = 1_000_000;
/// Events stored before the timed commits of the `history` row.
const HISTORY: usize = 1_500_000;

/// One accepted message's commit: its transmission and three injection events; with
/// `recipients`, the transmission keeps each recipient's message (as the milter writes
/// it since later events name the copy they are about). Keys as the milter makes them:
/// transmission and event ids time-ordered (`ids`), the clock's timestamp, a queue id
/// as random as Postfix's short ones and recipients as random as real ones (`n` is the
/// commit's number; the random parts are a hash of it).
fn message_commit(ids: &IdGenerator, n: u64, recipients: bool) -> Commit {
    let scatter = |x: u64| x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    let now_ms = msys_milter::ids::unix_millis();
    let mut t = Transmission {
        transmission_id: ids.next().unwrap().to_string(),
        campaign_id: Some("bench".into()),
        msg_from: "bounces+1@bounces.example.net".into(),
        injection_ms: now_ms,
        ..Transmission::default()
    };
    let queue_id = format!("{:010X}", scatter(n) >> 24);
    let events = (0..3)
        .map(|i| {
            let r = Recipient {
                raw: format!("u{:x}@example{}.org", scatter(n * 3 + i), i),
                rcpt_type: (i > 0).then_some("cc"),
                message_id: t.transmission_id.clone(),
                queue_id: Some(queue_id.clone()),
                msg_size: Some(3000),
            };
            if recipients {
                t.add_recipient(&r);
            }
            events::injection(
                Stamp {
                    event_id: ids.next().unwrap(),
                    timestamp: now_ms / 1000,
                },
                &t,
                &r,
            )
        })
        .collect();
    Commit {
        events,
        transmission: Some(t),
        ..Commit::default()
    }
}

async fn events_per_second(durability: Durability, writers: usize, messages: usize) -> (f64, u64) {
    events_per_second_with(durability, writers, messages, true, 0).await
}

/// `messages` committed by `writers` at once, after `history` messages committed (and
/// applied) untimed, as a store that has run for a while holds. Also the bytes the
/// process wrote per timed message.
async fn events_per_second_with(
    durability: Durability,
    writers: usize,
    messages: usize,
    recipients: bool,
    history: usize,
) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let ids = Arc::new(IdGenerator::new(1));
    let next = Arc::new(AtomicU64::new(0));
    let run = |store: Arc<SqliteStore>, messages: usize| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers {
            let (store, ids, next) = (store.clone(), ids.clone(), next.clone());
            tasks.spawn(async move {
                for _ in 0..messages / writers {
                    let n = next.fetch_add(1, Relaxed);
                    store
                        .commit(message_commit(&ids, n, recipients))
                        .await
                        .unwrap();
                }
            });
        }
        tasks
    };
    if history > 0 {
        let store = Arc::new(SqliteStore::open(&path, durability).unwrap());
        let mut tasks = run(store.clone(), history);
        while tasks.join_next().await.is_some() {}
        store.close();
    }
    let store = Arc::new(SqliteStore::open(&path, durability).unwrap());
    let (start, written) = (Instant::now(), written_bytes());
    let mut tasks = run(store.clone(), messages);
    while tasks.join_next().await.is_some() {}
    // Counted once the tables hold everything too: closing applies the journal.
    store.close();
    let rate = (messages * 3) as f64 / start.elapsed().as_secs_f64();
    (rate, (written_bytes() - written) / messages as u64)
}

/// Bytes this process has written (write and pwrite calls), from /proc.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("### The store (SQLite, WAL, group commit)\n");
    println!(
        "Each commit is one accepted message: its transmission and 3 injection events, as the milter writes them before answering. `full` fsyncs every transaction (the default); `normal` survives `kill -9` but not a power loss.\n"
    );
    println!("| durability | concurrent writers | events committed/s |");
    println!("|---|---|---|");
    // `MSYS_BENCH_CASE=normal/256`: that cell alone (for profiling), with the bytes the
    // process wrote per message.
    let only = std::env::var("MSYS_BENCH_CASE").ok();
    for durability in [Durability::Full, Durability::Normal] {
        for writers in [1, 32, 256] {
            let case = format!("{durability:?}/{writers}").to_lowercase();
            if only.as_ref().is_some_and(|o| *o != case) {
                continue;
            }
            let messages = if writers == 1 { 2_000 } else { 30_000 };
            let (rate, per_message) = events_per_second(durability, writers, messages).await;
            println!("| {durability:?} | {writers} | {rate:.0} |");
            if only.is_some() {
                println!("\n{per_message} bytes written per message");
                return;
            }
        }
    }
    // A store that has run for a while: its indexes are far larger than a
    // transaction's share of them (`MSYS_BENCH_CASE=history`: this row alone).
    if only.as_deref().is_none_or(|o| o == "history") {
        let (rate, per_message) =
            events_per_second_with(Durability::Full, 256, 30_000, true, HISTORY / 3).await;
        println!("| Full, {HISTORY} events stored before | 256 | {rate:.0} |");
        if only.is_some() {
            println!("\n{per_message} bytes written per message");
            return;
        }
    }
    // `cargo bench --bench store -- events`: this table alone.
    if std::env::args().skip(1).any(|a| a == "events") {
        return;
    }

    // What keeping each recipient's message with its transmission costs (every later
    // event of a recipient names its copy from it): side by side, alternating rounds.
    println!(
        "\nRecipients' messages kept with the transmission (3 recipients; `normal`, 32 writers, median of 5 alternating rounds):\n"
    );
    println!("| transmission row | events committed/s |");
    println!("|---|---|");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(
            events_per_second_with(Durability::Normal, 32, 30_000, false, 0)
                .await
                .0,
        );
        with.push(
            events_per_second_with(Durability::Normal, 32, 30_000, true, 0)
                .await
                .0,
        );
    }
    for v in [&mut with, &mut without] {
        v.sort_by(f64::total_cmp);
    }
    println!("| without recipients | {:.0} |", without[2]);
    println!(
        "| with recipients (as written now) | {:.0} ({:.2}x) |",
        with[2],
        with[2] / without[2]
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path, Durability::Full).unwrap();
    let start = Instant::now();
    for chunk in 0..ENTRIES / 20_000 {
        let suppress = (0..20_000)
            .map(|i| {
                SuppressionEntry::new(
                    &format!("user{}@example{}.org", chunk * 20_000 + i, i % 100),
                    None,
                    SuppressionType::NonTransactional,
                    "Manually Added",
                    "",
                    1,
                )
            })
            .collect();
        store
            .commit(Commit {
                suppress,
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    let fill = start.elapsed().as_secs_f64();
    // Lookups as the milter makes them: 3 recipients a message, half of them hits.
    let mut samples = Vec::with_capacity(100_000);
    for n in 0..100_000usize {
        let rcpts = [
            format!(
                "user{}@example{}.org",
                (n * 7919) % ENTRIES,
                ((n * 7919) % ENTRIES) % 20_000 % 100
            ),
            format!("nobody{n}@example.net"),
            format!(
                "User{}@Example{}.org",
                (n * 104_729) % ENTRIES,
                ((n * 104_729) % ENTRIES) % 20_000 % 100
            ),
        ];
        let t = Instant::now();
        let hits = store
            .suppressed(None, SuppressionType::NonTransactional, &rcpts)
            .await
            .unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(hits.len(), 2, "{rcpts:?}");
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!("\n### Suppression lookups with {ENTRIES} entries\n");
    println!(
        "One lookup = the 3 recipients of a message (2 on the list, 1 not, mixed case), as at end of message; 100,000 lookups.\n"
    );
    println!("| p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} us | {:.1} us | {:.1} us | {:.0} us |",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples[samples.len() - 1]
    );
    println!("\nFilling the list through the store API: {ENTRIES} entries in {fill:.1} s.");
    drop(store);

    // The admin verb, as an operator runs it: a 1,000,000-row CSV into a fresh store.
    let csv = dir.path().join("list.csv");
    let mut text = String::from("recipient,type,description\n");
    for i in 0..ENTRIES {
        text.push_str(&format!(
            "person{i}@example.org,non_transactional,imported\n"
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let state = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msys-milter"))
        .env("STATE_DIRECTORY", state.path())
        .args(["suppression", "import"])
        .arg(&csv)
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "`msys-milter suppression import` of a {ENTRIES}-row CSV: {secs:.1} s (target <= 30 s)."
    );
}
