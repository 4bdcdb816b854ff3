//! The REST API over a large store: 1,000,000 suppression entries and
//! MSYS_BENCH_EVENTS events (default 2,000,000) spread over 30 days, written through the
//! store's own commit (so the counters are kept as in production). Then, over HTTP on
//! loopback with a keep-alive client: suppression GET latency, a cursor walk of the whole
//! list, events by recipient and by campaign, and a 30-day campaign report. Also the
//! store's commit rate with the counters on and off, side by side. Prints Markdown for
//! BENCHMARKS.md.

use msys_milter::events::{Event, EventType};
use msys_milter::store::sqlite::Durability;
use msys_milter::store::{Commit, SqliteStore, Store, SuppressionEntry, SuppressionType};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Instant;

const ENTRIES: usize = 1_000_000;
const RECIPIENTS: u64 = 200_000;
const CAMPAIGNS: u64 = 50;
const DAY: u64 = 86_400;
const KEY: &str = "bench-key-bench-key-bench-key-bench-key0";

fn events_wanted() -> u64 {
    std::env::var("MSYS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000)
}

/// Event `n` of the synthetic history ending at `now`: a message's life (injection,
/// delivery, open, click, or a bounce) to one of RECIPIENTS in one of CAMPAIGNS.
fn event(n: u64, total: u64, now: u64) -> Event {
    let kinds = [
        EventType::Injection,
        EventType::Delivery,
        EventType::Open,
        EventType::Click,
        EventType::Injection,
        EventType::Bounce,
    ];
    let kind = kinds[(n % kinds.len() as u64) as usize];
    let at = now - 30 * DAY + n * 30 * DAY / total;
    let rcpt = format!("user{}@example{}.org", n / 6 % RECIPIENTS, n % 97);
    let mut m = Map::new();
    m.insert("type".into(), json!(kind.as_str()));
    m.insert("event_id".into(), json!((n + 1).to_string()));
    m.insert("timestamp".into(), json!(at.to_string()));
    m.insert("transmission_id".into(), json!((n / 6).to_string()));
    m.insert("rcpt_to".into(), json!(rcpt));
    m.insert("raw_rcpt_to".into(), json!(rcpt));
    m.insert(
        "campaign_id".into(),
        json!(format!("campaign-{}", n / 6 % CAMPAIGNS)),
    );
    m.insert("sending_domain".into(), json!("news.example.com"));
    m.insert("subject".into(), json!("The spring sale starts today"));
    m.insert("msg_size".into(), json!("3000"));
    m.insert("customer_id".into(), json!("1"));
    m.insert("rcpt_meta".into(), json!({"user": n.to_string()}));
    m.insert("rcpt_tags".into(), json!(["news"]));
    if kind == EventType::Bounce {
        m.insert("bounce_class".into(), json!("10"));
        m.insert("reason".into(), json!("550 5.1.1 user unknown"));
    }
    Event {
        event_id: n + 1,
        kind,
        timestamp: at,
        transmission_id: (n / 6).to_string(),
        fields: m,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies (ms) of `paths` called in turn; (p50, p99).
async fn latencies(client: &reqwest::Client, base: &str, paths: &[String]) -> (f64, f64) {
    let mut ms = Vec::with_capacity(paths.len());
    for path in paths {
        let start = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header("Authorization", KEY)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.bytes().await.unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

/// Events committed per second, 1,000 events a commit, 4 writers at once.
async fn fill_events(store: &Arc<SqliteStore>, from: u64, count: u64, total: u64, now: u64) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let writers = 4;
    for w in 0..writers {
        let store = Arc::clone(store);
        tasks.spawn(async move {
            let mut n = from + w * 1000;
            while n < from + count {
                let events = (n..(n + 1000).min(from + count))
                    .map(|i| event(i, total, now))
                    .collect();
                store
                    .commit(Commit {
                        events,
                        ..Commit::default()
                    })
                    .await
                    .unwrap();
                n += writers * 1000;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    count as f64 / start.elapsed().as_secs_f64()
}

/// This process's CPU time so far (user + system), in microseconds.
fn cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// What the milter commits per accepted message (its transmission and 3 injection
/// events), from 32 writers at once: (messages/s, CPU microseconds per message).
async fn milter_commits(counting: bool, messages: u64) -> (f64, f64) {
    use msys_milter::events::{Recipient, Stamp, Transmission, injection};
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&d.path().join("m.db"), Durability::Full).unwrap());
    store.set_counting(counting);
    let (start, cpu) = (Instant::now(), cpu_us());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for m in 0..messages / 32 {
                let n = w * messages + m + 1;
                let mut t = Transmission {
                    transmission_id: n.to_string(),
                    campaign_id: Some("spring".into()),
                    sending_domain: Some("news.example.com".into()),
                    injection_ms: 1_796_135_107_000,
                    ..Transmission::default()
                };
                let events = (0..3)
                    .map(|i| {
                        let r = Recipient {
                            raw: format!("r{i}-{n}@example.org"),
                            message_id: n.to_string(),
                            msg_size: Some(3000),
                            ..Recipient::default()
                        };
                        t.add_recipient(&r);
                        injection(
                            Stamp {
                                event_id: n * 4 + i,
                                // Real time, as the milter stamps them.
                                timestamp: msys_milter::ids::unix_secs(),
                            },
                            &t,
                            &r,
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
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    (
        messages as f64 / secs,
        (cpu_us() - cpu) as f64 / messages as f64,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The counters' cost where it matters: the milter's commits, side by side.
    let (mut m_on, mut m_off) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        m_off.push(milter_commits(false, 20_000).await);
        m_on.push(milter_commits(true, 20_000).await);
    }
    for v in [&mut m_on, &mut m_off] {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if std::env::args().any(|a| a == "commits") {
        println!(
            "counters off: {:.0} msgs/s {:.0} us/msg; on: {:.0} msgs/s {:.0} us/msg",
            m_off[2].0, m_off[2].1, m_on[2].0, m_on[2].1
        );
        return;
    }
    let total = events_wanted();
    let now = msys_milter::ids::unix_secs();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("api.db");

    // The counters' cost at commit, side by side (fresh stores, alternating rounds).
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for counting in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let s = Arc::new(SqliteStore::open(&d.path().join("c.db"), Durability::Full).unwrap());
            s.set_counting(counting);
            let rate = fill_events(&s, round * 100_000, 100_000, 3_000_000, now).await;
            if counting { &mut on } else { &mut off }.push(rate);
        }
    }
    on.sort_by(f64::total_cmp);
    off.sort_by(f64::total_cmp);

    let store = Arc::new(SqliteStore::open(&path, Durability::Normal).unwrap());
    let start = Instant::now();
    for chunk in 0..ENTRIES / 20_000 {
        let suppress = (0..20_000)
            .map(|i| {
                let n = chunk * 20_000 + i;
                let mut e = SuppressionEntry::new(
                    &format!("user{n}@example{}.org", n % 97),
                    None,
                    if n % 3 == 0 {
                        SuppressionType::Transactional
                    } else {
                        SuppressionType::NonTransactional
                    },
                    ["Manually Added", "Bounce Rule", "Spam Complaint"][n % 3],
                    "",
                    now - 400 * DAY + n as u64 * 30,
                );
                e.updated = e.created;
                e
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
    let suppression_fill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let fill_rate = fill_events(&store, 0, total, total, now).await;
    let events_fill = start.elapsed().as_secs_f64();
    // The counters' log is folded once the writes pause (every 2 s under load).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let size_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let mut config = msys_milter::Config::default();
    use sha2::Digest as _;
    let hash: String = sha2::Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    config.api_keys = toml::from_str::<toml::Table>(&format!(
        "[[api_key]]\nname = \"bench\"\nkey_sha256 = \"{hash}\"\ngrants = [\"suppression_lists/manage\", \"message_events/view\", \"metrics/view\"]\n"
    ))
    .and_then(|t| t["api_key"].clone().try_into())
    .unwrap();
    config.api.rate_limit.0 = 1_000_000;
    let state = Arc::new(msys_milter::rest::ApiState::new(
        &config,
        Arc::clone(&store) as Arc<dyn Store>,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = msys_milter::http::Limits {
        max_body_bytes: 16 << 20,
        ..msys_milter::http::Limits::from_config(&config.http)
    };
    tokio::spawn(msys_milter::http::serve_router(
        listener,
        msys_milter::rest::router(state),
        limits,
        None,
        "api",
        std::future::pending(),
    ));
    let client = reqwest::Client::new();

    let gets: Vec<String> = (0..2000u64)
        .map(|i| {
            let n = i * 7919 % ENTRIES as u64;
            format!("/api/v1/suppression-list/user{n}@example{}.org", n % 97)
        })
        .collect();
    let (get50, get99) = latencies(&client, &base, &gets).await;

    let start = Instant::now();
    let mut walked = 0u64;
    let mut next = Some("/api/v1/suppression-list?cursor=initial&per_page=10000".to_owned());
    while let Some(path) = next {
        let bytes = client
            .get(format!("{base}{path}"))
            .header("Authorization", KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        walked += body["results"].as_array().map_or(0, Vec::len) as u64;
        next = body["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["rel"] == "next"))
            .and_then(|l| l["href"].as_str())
            .map(str::to_owned);
    }
    let walk_rate = walked as f64 / start.elapsed().as_secs_f64();
    assert_eq!(walked, ENTRIES as u64);

    let from_30 = msys_milter::rest::common::format_time(now - 30 * DAY);
    let by_rcpt: Vec<String> = (0..500u64)
        .map(|i| {
            let r = i * 104_729 % RECIPIENTS;
            format!(
                "/api/v1/events/message?recipients=user{r}@example{}.org&from={}",
                (r * 6) % 97,
                &from_30[..16]
            )
        })
        .collect();
    let (rcpt50, rcpt99) = latencies(&client, &base, &by_rcpt).await;
    let by_campaign: Vec<String> = (0..200u64)
        .map(|i| {
            format!(
                "/api/v1/events/message?campaigns=campaign-{}&per_page=1000",
                i % CAMPAIGNS
            )
        })
        .collect();
    let (camp50, camp99) = latencies(&client, &base, &by_campaign).await;
    let metrics = "count_targeted,count_injected,count_delivered,count_bounce,count_hard_bounce,count_rendered,count_unique_rendered,count_clicked,count_unique_clicked";
    let reports: Vec<String> = (0..200u64)
        .map(|i| {
            format!(
                "/api/v1/metrics/deliverability/campaign?from={}&metrics={metrics}&campaigns=campaign-{}",
                &from_30[..16],
                i % CAMPAIGNS
            )
        })
        .collect();
    let (rep50, rep99) = latencies(&client, &base, &reports).await;
    let all: Vec<String> = (0..50)
        .map(|_| {
            format!(
                "/api/v1/metrics/deliverability/campaign?from={}&metrics={metrics}",
                &from_30[..16]
            )
        })
        .collect();
    let (all50, all99) = latencies(&client, &base, &all).await;

    println!("### The REST API over a large store\n");
    println!(
        "{ENTRIES} suppression entries and {total} events (30 days, {RECIPIENTS} recipients, {CAMPAIGNS} campaigns) in one SQLite file of {size_mb:.0} MB (`normal` durability), written through the store's commit in {suppression_fill:.0} s and {events_fill:.0} s ({fill_rate:.0} events/s with the counters kept). Requests one at a time over loopback HTTP/1.1 keep-alive (the API's own listener, no TLS).\n"
    );
    println!("| request | p50 | p99 | target |");
    println!("|---|---|---|---|");
    println!(
        "| `GET /suppression-list/{{recipient}}` (2,000 lookups) | {get50:.2} ms | {get99:.2} ms | p99 <= 5 ms |"
    );
    println!(
        "| cursor walk of the whole list, `per_page=10000` | {walk_rate:.0} entries/s | | >= 50,000/s |"
    );
    println!(
        "| `events/message?recipients=` over 30 days (500 recipients) | {rcpt50:.1} ms | {rcpt99:.1} ms | p99 <= 50 ms |"
    );
    println!(
        "| `events/message?campaigns=` last 24 h, first page of 1,000 (200 calls) | {camp50:.1} ms | {camp99:.1} ms | p99 <= 200 ms |"
    );
    println!(
        "| `metrics/deliverability/campaign` one campaign, 30 days, 9 metrics (200 calls) | {rep50:.1} ms | {rep99:.1} ms | p99 <= 100 ms |"
    );
    println!(
        "| `metrics/deliverability/campaign` every campaign, 30 days (50 calls) | {all50:.1} ms | {all99:.1} ms | |"
    );
    println!(
        "\nThe counters' cost at commit, side by side (fresh `full` stores, alternating rounds, medians):\n"
    );
    println!("| commits | counters off | counters kept | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| the milter's: a transmission and 3 injection events a message, 32 writers, 5 rounds of 20,000 messages | {:.0} msgs/s, {:.0} us CPU/msg | {:.0} msgs/s, {:.0} us CPU/msg | {:.2} |",
        m_off[2].0,
        m_off[2].1,
        m_on[2].0,
        m_on[2].1,
        m_on[2].0 / m_off[2].0
    );
    println!(
        "| bulk: 1,000 mixed events a commit (a third opens and clicks, each checked for uniqueness), 4 writers, 3 rounds of 100,000 | {:.0} events/s | {:.0} events/s | {:.2} |",
        off[1],
        on[1],
        on[1] / off[1]
    );
}
