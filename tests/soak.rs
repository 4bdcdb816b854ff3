//! The soak: N messages (to + cc + bcc, open and click tracking on) through the real
//! Postfix, sent by eight clients that retry a 4xx as real clients do, while the daemon
//! is SIGKILLed K times at random moments and the webhook receiver answers 503 for a
//! while. At the end it counts, per recipient and per event: messages lost, originals
//! doubled, copies doubled, injection and delivery events missing, events doubled
//! (two event ids for one recipient's injection or delivery). All must be 0.
//!
//! CI runs N = 1,000, K = 3, a 10 s outage. By hand: `MSYS_SOAK_N=10000 MSYS_SOAK_K=10
//! MSYS_SOAK_OUTAGE_SECS=600 cargo test --release --test soak -- --nocapture` (inside a
//! loopback-only namespace, as scripts/test.sh runs the tests).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::e2e::E2e;
use support::postfix::free_port;
use support::webhook::Webhook;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: random moments that a printed seed reproduces.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn message(i: usize) -> String {
    let api = format!(
        "{{\"cc\": [\"c{i}@example.org\"], \"bcc\": [\"b{i}@example.org\"], \"campaign_id\": \"soak\", \
         \"options\": {{\"open_tracking\": true, \"click_tracking\": true}}}}"
    );
    format!(
        "From: App <app@example.com>\nTo: t{i}@example.org\nSubject: soak {i}\n\
         Message-ID: <soak.{i}@example.com>\nDate: Sun, 6 Dec 2026 06:00:00 +0000\n\
         MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nX-MSYS-API: {api}\n\n\
         <html><body><p>Message {i}</p><a href=\"https://shop.example.com/{i}\">Offer</a></body></html>\n"
    )
}

/// Send message `i` until the MTA takes it, as a client does after a 4xx (or a dropped
/// connection): the same bytes again after a pause. Returns the attempts it took.
fn send_until_taken(port: u16, i: usize) -> usize {
    let to = format!("t{i}@example.org");
    let text = message(i);
    let deadline = Instant::now() + Duration::from_secs(300);
    for attempt in 1.. {
        match support::send(port, "app@example.com", &[&to], &text) {
            Ok(_) => return attempt,
            Err(e) if e.contains("permanent") => panic!("message {i} refused: {e}"),
            Err(e) => {
                assert!(Instant::now() < deadline, "message {i} never taken: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    unreachable!()
}

#[test]
fn soak_with_kills_and_a_webhook_outage_loses_and_doubles_nothing() {
    let n = setting("MSYS_SOAK_N", 1000) as usize;
    let kills = setting("MSYS_SOAK_K", 3) as usize;
    let outage = Duration::from_secs(setting("MSYS_SOAK_OUTAGE_SECS", 10));
    let seed = setting(
        "MSYS_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("soak: N={n} K={kills} outage={outage:?} seed={seed}");
    let mut random = Random(seed);
    let hook = Webhook::start(200);
    let http_port = free_port();
    let mut e2e = E2e::start_feedback(
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"soak-secret-0123456789\"]\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [[webhook]]\nurl = \"{}\"\nbatch_wait_ms = 100\n",
            hook.url()
        ),
        &[],
        "",
    );
    let smtp = e2e.mta.smtp_port();
    let started = Instant::now();

    // Eight clients take messages from a shared counter.
    let next = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (next, taken, retried) = (next.clone(), taken.clone(), retried.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let attempts = send_until_taken(smtp, i);
                    retried.fetch_add(attempts - 1, Ordering::SeqCst);
                    taken.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // K kills at random moments, one in each K-th of the run; the webhook down from a
    // third of the messages on, for `outage`.
    let mut kill_at: Vec<usize> = (0..kills)
        .map(|k| k * n / kills.max(1) + random.below((n / kills.max(1)) as u64) as usize)
        .collect();
    kill_at.sort();
    let mut killed = 0;
    let mut outage_since: Option<Instant> = None;
    let mut outage_over = false;
    while taken.load(Ordering::SeqCst) < n {
        let done = taken.load(Ordering::SeqCst);
        if killed < kill_at.len() && done >= kill_at[killed] {
            // A random moment within the next few milliseconds of traffic.
            std::thread::sleep(Duration::from_micros(random.below(20_000)));
            e2e.milter.kill9_and_restart();
            killed += 1;
            eprintln!("soak: SIGKILL {killed} after {done} messages");
        }
        if outage_since.is_none() && !outage_over && done >= n / 3 {
            hook.set_status(503);
            outage_since = Some(Instant::now());
        }
        if let Some(since) = outage_since
            && since.elapsed() >= outage
        {
            hook.set_status(200);
            outage_since = None;
            outage_over = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in clients {
        c.join().unwrap();
    }
    if let Some(since) = outage_since {
        std::thread::sleep(outage.saturating_sub(since.elapsed()));
        hook.set_status(200);
    }
    let sent_in = started.elapsed();

    // Every recipient's mail, counted.
    let expected: Vec<(String, &str)> = (0..n)
        .flat_map(|i| {
            [
                (format!("t{i}@example.org"), "original"),
                // With tracking on, every recipient but the first has a copy of its own.
                (format!("c{i}@example.org"), "copy"),
                (format!("b{i}@example.org"), "copy"),
            ]
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let received = loop {
        let mut per_rcpt: HashMap<String, usize> = HashMap::new();
        for r in e2e.capture.all() {
            for rcpt in &r.rcpts {
                *per_rcpt.entry(rcpt.to_lowercase()).or_default() += 1;
            }
        }
        let all_there = expected.iter().all(|(r, _)| per_rcpt.contains_key(r));
        if all_there && e2e.postfix().queue_is_empty() || Instant::now() > deadline {
            // Late duplicates would show up now.
            std::thread::sleep(Duration::from_secs(2));
            break per_rcpt;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Copies the MTA took as the daemon was killed (it never read their `250`): the
    // retry found them in the MTA's log (each copy has a sender of its own) and did
    // not hand them over again.
    let taken_at_kill = e2e
        .milter
        .log()
        .matches("copy taken by the MTA before a crash")
        .count();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    // A few recipients of each problem, to look them up in the logs.
    let mut examples: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut count = |problem: &'static str, rcpt: &str| {
        *counts.entry(problem).or_default() += 1;
        let some = examples.entry(problem).or_default();
        if some.len() < 5 {
            some.push(rcpt.to_owned());
        }
    };
    for (rcpt, kind) in &expected {
        match received.get(rcpt).copied().unwrap_or(0) {
            0 => count("messages lost", rcpt),
            1 => {}
            _ if *kind == "copy" => count("copies doubled", rcpt),
            _ => count("originals doubled", rcpt),
        }
    }

    // Every recipient's injection and delivery event, once each (by event id: the
    // webhook may get a batch twice, which consumers dedupe on event_id).
    let wanted: HashSet<(&str, &str)> = expected
        .iter()
        .flat_map(|(r, _)| [("injection", r.as_str()), ("delivery", r.as_str())])
        .collect();
    let tally = |items: &[serde_json::Value]| {
        let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for item in items {
            let e = &item["msys"]["message_event"];
            let (Some(kind), Some(rcpt), Some(id)) = (
                e["type"].as_str(),
                e["rcpt_to"].as_str(),
                e["event_id"].as_str(),
            ) else {
                continue;
            };
            ids.entry((kind.to_owned(), rcpt.to_lowercase()))
                .or_default()
                .insert(id.to_owned());
        }
        ids
    };
    // After a long outage the webhook's next try can be up to its longest back-off
    // (600 s) away.
    let deadline = Instant::now() + Duration::from_secs(180) + outage.min(Duration::from_secs(660));
    let events = loop {
        let ids = tally(&hook.delivered());
        let complete = wanted
            .iter()
            .all(|(k, r)| ids.contains_key(&(k.to_string(), r.to_string())));
        if complete || Instant::now() > deadline {
            std::thread::sleep(Duration::from_secs(2));
            break tally(&hook.delivered());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (kind, rcpt) in &wanted {
        match events
            .get(&(kind.to_string(), rcpt.to_string()))
            .map_or(0, HashSet::len)
        {
            0 if *kind == "injection" => count("injection events missing", rcpt),
            0 => count("delivery events missing", rcpt),
            1 => {}
            _ => count("events doubled", rcpt),
        }
    }
    eprintln!(
        "soak: {n} messages ({} recipients) sent in {:.1} s with {} client retries, {killed} kills, \
         a {outage:?} webhook outage; {} webhook posts; copies the MTA took as a kill came \
         (found in its log at the retry): {taken_at_kill}; problems: {counts:?}",
        expected.len(),
        sent_in.as_secs_f64(),
        retried.load(Ordering::SeqCst),
        hook.posts().len()
    );
    if let Ok(path) = std::env::var("MSYS_SOAK_REPORT") {
        std::fs::write(
            path,
            format!(
                "N={n} K={killed} outage={}s seed={seed} sent_in={:.1}s retries={} \
                 copies_taken_at_kill={taken_at_kill} problems={counts:?}\n",
                outage.as_secs(),
                sent_in.as_secs_f64(),
                retried.load(Ordering::SeqCst)
            ),
        )
        .unwrap();
    }
    if !counts.is_empty() {
        // What the store holds of the examples: did the event exist but not arrive?
        let conn = rusqlite::Connection::open(e2e.milter.store_path()).unwrap();
        for rcpt in examples.values().flatten() {
            let mut stmt = conn
                .prepare("SELECT type, event_id, created FROM events WHERE rcpt = ?1")
                .unwrap();
            let rows: Vec<(String, i64, i64)> = stmt
                .query_map([rcpt], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut stmt = conn
                .prepare("SELECT queue_id, created FROM queued WHERE rcpt = ?1")
                .unwrap();
            let queued: Vec<(String, i64)> = stmt
                .query_map([rcpt], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            eprintln!("soak: {rcpt}: stored events {rows:?}; queued {queued:?}");
        }
    }
    assert!(
        counts.is_empty(),
        "soak problems: {counts:?}, for example {examples:?}\n--- milter log ---\n{}",
        e2e.milter.log()
    );
}
