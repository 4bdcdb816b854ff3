//! Benchmarks through a real Postfix (private instances, loopback-only network
//! namespace: run with bench/run.sh). Prints Markdown tables for BENCHMARKS.md.
//!
//! 1. Throughput: smtp-source -> Postfix -> smtp-sink, 5,000 messages with an X-MSYS-API
//!    header carrying a cc list, 20 sessions; alternating rounds (BENCH_ROUNDS, 5) of
//!    Postfix without a milter, with the lean do-nothing milter (end-of-message only),
//!    the do-nothing indymilter milter (every stage), and msys-milter with the store off,
//!    on, on with a webhook, on with two worker threads, and with tracking; then the
//!    header path alone (the message without cc).
//! 2. Personalised copies: messages with 0, 10 and 100 bcc recipients, one session:
//!    SMTP transaction latency (end of DATA includes the milter's end of message, which
//!    hands over every copy before answering) and the milter's CPU per copy.

#[allow(dead_code)] // Each benchmark uses its own subset.
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::cpu::cpu_ticks;
use common::{
    Killed, bench_messages, campaign_message, lean_milter, median, null_milter, smtp_sink, submit,
    wait_for_port,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::Milter;
use support::postfix::{Postfix, free_port};

/// One round: smtp-source sends `count` messages in `sessions` sessions; the time until
/// Postfix's queue is empty again (everything delivered to the sink).
fn round(postfix: &Postfix, message: &std::path::Path, count: usize, sessions: usize) -> f64 {
    submit(postfix.smtp_port, message, count, sessions, || {
        postfix.queue_is_empty()
    })
}

/// A private Postfix whose milter is msys-milter with `toml`, delivering to `sink_port`.
fn behind_postfix(sink_port: u16, toml: &str) -> (Postfix, Milter) {
    let port = free_port();
    let postfix = Postfix::start(Some(port), sink_port);
    let milter = Milter::start_on(port, toml);
    (postfix, milter)
}

/// One way of running Postfix in the throughput table: its rounds' rates and the
/// milter's CPU.
struct Setup {
    name: &'static str,
    postfix: Postfix,
    milter_pid: Option<u32>,
    rates: Vec<f64>,
    ticks: u64,
}

fn throughput() {
    let count = bench_messages().unwrap_or(5000);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (_sink, sink_port) = smtp_sink();
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message.txt");
    campaign_message(&message);
    let base = "[envelope]\nbounce_domain = \"bounces.example.net\"\n";
    let hook = support::webhook::Webhook::start(200);

    let mut keep_alive: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut setups: Vec<Setup> = Vec::new();
    let mut add = |name, postfix, milter_pid| {
        setups.push(Setup {
            name,
            postfix,
            milter_pid,
            rates: Vec::new(),
            ticks: 0,
        })
    };
    add("no milter", Postfix::start(None, sink_port), None);
    let port = free_port();
    let lean = lean_milter(port);
    add(
        "lean do-nothing milter (end-of-message only)",
        Postfix::start(Some(port), sink_port),
        Some(lean.0.id()),
    );
    keep_alive.push(Box::new(lean));
    let port = free_port();
    let null = null_milter(port);
    add(
        "do-nothing indymilter milter (every stage)",
        Postfix::start(Some(port), sink_port),
        Some(null.0.id()),
    );
    keep_alive.push(Box::new(null));
    for (name, toml) in [
        (
            "msys-milter, store off",
            format!("{base}[store]\nenabled = false\n"),
        ),
        ("msys-milter, default (store on)", base.to_owned()),
        (
            "msys-milter, store on + a webhook",
            format!("{base}[[webhook]]\nurl = \"{}\"\n", hook.url()),
        ),
    ] {
        let (postfix, milter) = behind_postfix(sink_port, &toml);
        add(name, postfix, Some(milter.pid()));
        keep_alive.push(Box::new(milter));
    }
    // The runtime shape before: two async workers.
    let (postfix, milter) = behind_postfix(sink_port, &format!("worker_threads = 2\n{base}"));
    add(
        "msys-milter, default but 2 worker threads (the shape before)",
        postfix,
        Some(milter.pid()),
    );
    keep_alive.push(Box::new(milter));
    let tracking_port = free_port();
    let with_tracking = Postfix::start(Some(tracking_port), sink_port);
    let tracking = Milter::start_on(
        tracking_port,
        &format!(
            "{base}[reinject]\nsmtp = \"127.0.0.1:{}\"\n\
             [tracking]\nopen = true\nclick = true\nbase_url = \"https://track.example.com\"\nsecrets = [\"bench-secret-0123456789\"]\n\
             [http]\nlisten = \"127.0.0.1:{}\"\n",
            with_tracking.reinject_port,
            free_port()
        ),
    );
    add(
        "msys-milter, open and click tracking on (the 2 cc become personalised copies, re-injected)",
        with_tracking,
        Some(tracking.pid()),
    );
    keep_alive.push(Box::new(tracking));
    run_throughput(setups, count, rounds, &message, &hook);
}

fn run_throughput(
    mut setups: Vec<Setup>,
    count: usize,
    rounds: usize,
    message: &std::path::Path,
    hook: &support::webhook::Webhook,
) {
    let message = message.to_owned();
    // BENCH_ONLY=4 runs setup 4 alone (e.g. under perf), printing its milter's pid.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let keep: Vec<usize> = only.split(',').filter_map(|i| i.parse().ok()).collect();
        let mut i = 0;
        setups.retain(|_| {
            i += 1;
            keep.contains(&(i - 1))
        });
        for s in &setups {
            eprintln!("setup {} pid {:?}", s.name, s.milter_pid);
        }
        for _ in 0..rounds {
            for s in &setups {
                round(&s.postfix, &message, count, 20);
            }
        }
        return;
    }
    // A warm-up round each, not counted; then alternating rounds.
    for s in &setups {
        round(&s.postfix, &message, count / 10, 20);
    }
    for _ in 0..rounds {
        for s in &mut setups {
            let t = s.milter_pid.map(cpu_ticks);
            s.rates.push(round(&s.postfix, &message, count, 20));
            if let (Some(pid), Some(t)) = (s.milter_pid, t) {
                s.ticks += cpu_ticks(pid) - t;
            }
        }
    }
    let per_msg = |ticks: u64| ticks as f64 * 10_000.0 / (count * rounds) as f64;
    // Ratios per round, then their median: the rounds of one setup and its baseline ran
    // next to each other, so the noise of the moment cancels.
    let ratio =
        |a: &Setup, b: &Setup| median(a.rates.iter().zip(&b.rates).map(|(x, y)| x / y).collect());
    println!("### Through Postfix: smtp-source -> Postfix -> smtp-sink\n");
    println!(
        "{count} messages a round (3 KB: a text part and an HTML part with 10 links; X-MSYS-API with 2 cc: msys-milter adds 2 recipients, a Cc: header and a bounce address), 20 sessions, {rounds} alternating rounds; msgs/s (messages submitted) from the first message sent until Postfix's queue is empty (the median round); ratios are the median of the per-round ratios.\n"
    );
    println!(
        "| Postfix with | msgs/s | vs no milter | vs lean milter | vs do-nothing milter | milter CPU per message |"
    );
    println!("|---|---|---|---|---|---|");
    let (plain, lean, null) = (&setups[0], &setups[1], &setups[2]);
    for s in &setups {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            s.name,
            median(s.rates.clone()),
            ratio(s, plain),
            ratio(s, lean),
            ratio(s, null),
            s.milter_pid
                .map_or("-".to_owned(), |_| format!("{:.0} us", per_msg(s.ticks)))
        );
    }
    let (off, on, hooked) = (&setups[3], &setups[4], &setups[5]);
    let rounds_vs_lean: Vec<String> = on
        .rates
        .iter()
        .zip(&lean.rates)
        .map(|(x, y)| format!("{:.2}", x / y))
        .collect();
    println!(
        "\nmsys-milter (default) vs the lean milter, round by round: {}. The state layer (store on + a webhook vs store off): {:.2}; the store alone (default vs store off): {:.2}.",
        rounds_vs_lean.join(" "),
        ratio(hooked, off),
        ratio(on, off)
    );
    let delivered = hook.delivered().len();
    println!("\nThe webhook acknowledged {delivered} events during the run.");

    // The header path alone: the same message without cc, so Postfix delivers it to one
    // recipient whatever the milter (the lean milter adds no recipient either).
    let plain_message = message.with_file_name("header-only.txt");
    header_only_message(&plain_message);
    let picked = [0, 1, 2, 3, 4, 6];
    let mut rates = vec![Vec::new(); picked.len()];
    let mut ticks = vec![0u64; picked.len()];
    for &i in &picked {
        round(&setups[i].postfix, &plain_message, count / 10, 20);
    }
    for _ in 0..rounds {
        for (k, &i) in picked.iter().enumerate() {
            let s = &setups[i];
            let t = s.milter_pid.map(cpu_ticks);
            rates[k].push(round(&s.postfix, &plain_message, count, 20));
            if let (Some(pid), Some(t)) = (s.milter_pid, t) {
                ticks[k] += cpu_ticks(pid) - t;
            }
        }
    }
    let vs =
        |a: usize, b: usize| median(rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect());
    println!(
        "\nThe header path alone: the same message with `X-MSYS-API: {{\"campaign_id\": \"bench\", \"metadata\": {{\"user\": \"42\"}}}}` (no cc: one recipient whatever the milter; msys-milter validates the header, plans, rewrites MAIL FROM, deletes the header and commits an injection event), same rounds:\n"
    );
    println!("| Postfix with | msgs/s | vs no milter | vs lean milter | milter CPU per message |");
    println!("|---|---|---|---|---|");
    for (k, &i) in picked.iter().enumerate() {
        let s = &setups[i];
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |",
            s.name,
            median(rates[k].clone()),
            vs(k, 0),
            vs(k, 1),
            s.milter_pid
                .map_or("-".to_owned(), |_| format!("{:.0} us", per_msg(ticks[k])))
        );
    }
    let by_round: Vec<String> = rates[4]
        .iter()
        .zip(&rates[1])
        .map(|(x, y)| format!("{:.2}", x / y))
        .collect();
    println!(
        "\nmsys-milter (default) vs the lean milter on the header path, round by round: {}.",
        by_round.join(" ")
    );
}

/// The throughput message without cc: the header path alone.
fn header_only_message(path: &std::path::Path) {
    campaign_message(path);
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("X-MSYS-API:").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    let header = "X-MSYS-API: {\"campaign_id\": \"bench\", \"metadata\": {\"user\": \"42\"}}";
    std::fs::write(path, format!("{}{header}{}", &text[..start], &text[end..])).unwrap();
}

fn copies() {
    let (_sink, sink_port) = smtp_sink();
    let milter_port = free_port();
    let postfix = Postfix::start(Some(milter_port), sink_port);
    let milter = Milter::start_on(
        milter_port,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n[reinject]\nsmtp = \"127.0.0.1:{}\"\nconcurrency = {}\n",
            postfix.reinject_port,
            std::env::var("BENCH_REINJECT_CONCURRENCY").unwrap_or_else(|_| "16".into())
        ),
    );
    let pid = milter.pid();
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    println!("\n### Personalised copies through Postfix (bcc)\n");
    println!(
        "One session, messages sent one after another; latency of the whole SMTP transaction (the end of DATA waits for the milter, which hands every copy to Postfix's re-injection listener before answering). Milter CPU from /proc.\n"
    );
    println!(
        "| bcc recipients | messages | msgs/s | p50 ms | p99 ms | p50 added vs 0 bcc, ms | milter CPU per copy, µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut base_p50 = 0.0;
    for (bcc, messages) in [(0usize, 100usize), (10, 100), (100, 30)] {
        let list: Vec<String> = (0..bcc)
            .map(|i| format!("\"bcc{i}@example.com\""))
            .collect();
        let msg = support::message(
            &format!(
                "X-MSYS-API: {{\"cc\": [\"cc@example.com\"], \"bcc\": [{}]}}\n",
                list.join(",")
            ),
            &"A body line of the benchmark message.\n".repeat(50),
        );
        let cpu_before = cpu_ticks(pid);
        let start = Instant::now();
        let mut lat: Vec<f64> = (0..messages)
            .map(|_| {
                let t = Instant::now();
                support::send(
                    postfix.smtp_port,
                    "app@example.com",
                    &["to@example.org"],
                    &msg,
                )
                .unwrap();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        let rate = messages as f64 / start.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_sec;
        while !postfix.queue_is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let p50 = lat[lat.len() / 2];
        let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        if bcc == 0 {
            base_p50 = p50;
        }
        let per_copy = if bcc == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}", cpu * 1e6 / (bcc * messages) as f64)
        };
        println!(
            "| {bcc} | {messages} | {rate:.1} | {p50:.1} | {p99:.1} | {:.1} | {per_copy} |",
            p50 - base_p50
        );
    }
    copies_vs_messages(&postfix, pid, sink_port);
}

/// What N personalised copies cost Postfix against N messages smtp-source submits on one
/// connection (no milter): the time until each Postfix's queue is empty again.
fn copies_vs_messages(with_msys: &Postfix, milter_pid: u32, sink_port: u16) {
    let plain = Postfix::start(None, sink_port);
    let dir = tempfile::tempdir().unwrap();
    let body = "A body line of the benchmark message.\n".repeat(50);
    let single = dir.path().join("single.txt");
    std::fs::write(&single, support::message("", &body)).unwrap();
    let rounds = 9;
    println!(
        "\nN personalised copies (one message with N bcc through msys-milter; each copy re-injected into Postfix) against N messages on one connection to Postfix without a milter, both sent by smtp-source: time from the start until the queue is empty again (checked every 2 ms), median of {rounds} alternating rounds.\n"
    );
    println!(
        "| N | N copies, ms | N messages (smtp-source), ms | copies vs messages | milter CPU per copy |"
    );
    println!("|---|---|---|---|---|");
    for n in [10usize, 100] {
        let list: Vec<String> = (0..n).map(|i| format!("\"bcc{i}@example.com\"")).collect();
        let msg = support::message(
            &format!("X-MSYS-API: {{\"bcc\": [{}]}}\n", list.join(",")),
            &body,
        );
        // Sent by smtp-source too, so both sides have the same client (lettre's
        // blocking client leaves Nagle on: ~40 ms of its own at the end of DATA).
        let with_bcc = dir.path().join(format!("bcc{n}.txt"));
        std::fs::write(&with_bcc, msg).unwrap();
        let (mut copies, mut messages, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut ticks = 0;
        for _ in 0..rounds {
            let t0 = cpu_ticks(milter_pid);
            let rate = submit(with_msys.smtp_port, &with_bcc, 1, 1, || {
                with_msys.queue_is_empty()
            });
            let c = 1000.0 / rate;
            ticks += cpu_ticks(milter_pid) - t0;
            let rate = submit(plain.smtp_port, &single, n, 1, || plain.queue_is_empty());
            let m = n as f64 / rate * 1000.0;
            copies.push(c);
            messages.push(m);
            ratios.push(c / m);
        }
        let by_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        eprintln!(
            "N={n}, copies vs messages round by round: {}",
            by_round.join(" ")
        );
        println!(
            "| {n} | {:.0} | {:.0} | {:.2} | {:.0} us |",
            median(copies),
            median(messages),
            median(ratios),
            ticks as f64 * 10_000.0 / (n * rounds) as f64
        );
    }
}

const DKIM_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/rsa2048.pem");
const DKIM_ED_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/ed25519.pem");

/// OpenDKIM (Debian's `opendkim`) signing with the same key, on `port`.
fn opendkim(port: u16, dir: &std::path::Path) -> Killed {
    let conf = dir.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain example.com\nSelector s2026\nKeyFile {DKIM_KEY}\nSocket inet:{port}@127.0.0.1\n\
             Canonicalization relaxed/relaxed\nBackground no\nRequireSafeKeys false\nSyslog no\n\
             OversignHeaders From,To,Subject,Reply-To\nPidFile {}/opendkim.pid\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/opendkim")
        .arg("-f")
        .arg("-x")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .expect("opendkim (bench/run.sh installs it)");
    wait_for_port(port, "opendkim");
    Killed(child)
}

/// msys-milter signing vs OpenDKIM signing the same messages with the same RSA-2048
/// key, through Postfix, side by side; and the signing CPU per message in process.
fn dkim() {
    let count = bench_messages().unwrap_or(5000);
    let rounds = 3;
    let (_sink, sink_port) = smtp_sink();
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message.txt");
    let text = "Hello, this is a benchmark message for DKIM signing.\n".repeat(55);
    std::fs::write(
        &message,
        format!(
            "From: Shop <shop@example.com>\nTo: to@example.org\nSubject: benchmark\nDate: Wed, 02 Dec 2026 10:00:00 +0000\nMessage-ID: <bench@example.com>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{text}"
        ),
    )
    .unwrap();
    let od_port = free_port();
    let od = opendkim(od_port, dir.path());
    let with_opendkim = Postfix::start(Some(od_port), sink_port);
    let (with_msys, msys) = behind_postfix(
        sink_port,
        &format!(
            "[store]\nenabled = false\n[[dkim_key]]\nname = \"main\"\ndomain = \"example.com\"\nselector = \"s2026\"\nprivate_key = \"{DKIM_KEY}\"\n\
             [[sending_domain]]\nname = \"example.com\"\ndkim_key = \"main\"\n"
        ),
    );
    for p in [&with_opendkim, &with_msys] {
        round(p, &message, count / 10, 20);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut a_ticks, mut b_ticks) = (0, 0);
    for _ in 0..rounds {
        let t = cpu_ticks(od.0.id());
        a.push(round(&with_opendkim, &message, count, 20));
        a_ticks += cpu_ticks(od.0.id()) - t;
        let t = cpu_ticks(msys.pid());
        b.push(round(&with_msys, &message, count, 20));
        b_ticks += cpu_ticks(msys.pid()) - t;
    }
    let (a, b) = (median(a), median(b));
    let per_msg = |ticks: u64| ticks as f64 * 10_000.0 / (count * rounds) as f64;
    println!("### DKIM signing through Postfix: msys-milter vs OpenDKIM\n");
    println!(
        "{count} messages a round (3 KB text, From: example.com), 20 sessions, median of {rounds} alternating rounds; both sign with the same RSA-2048 key, relaxed/relaxed. msys-milter with the store off (OpenDKIM records nothing either).\n"
    );
    println!("| Postfix with | msgs/s | vs OpenDKIM | milter CPU per message |");
    println!("|---|---|---|---|");
    println!(
        "| OpenDKIM 2.11 | {a:.0} | 1.00 | {:.0} us |",
        per_msg(a_ticks)
    );
    println!(
        "| msys-milter | {b:.0} | {:.2} | {:.0} us |",
        b / a,
        per_msg(b_ticks)
    );

    // The signing itself, in process.
    let config = msys_milter::config::Config::parse(
        &format!(
            "[[dkim_key]]\nname = \"rsa\"\ndomain = \"example.com\"\nselector = \"s\"\nprivate_key = \"{DKIM_KEY}\"\n\
             [[dkim_key]]\nname = \"ed\"\ndomain = \"example.com\"\nselector = \"e\"\nprivate_key = \"{DKIM_ED_KEY}\"\n"
        ),
        std::path::Path::new("bench.toml"),
    )
    .unwrap();
    let bytes = std::fs::read_to_string(&message)
        .unwrap()
        .replace('\n', "\r\n");
    println!(
        "\nSigning one such message in process (headers and body canonicalised, hashed, signed):\n"
    );
    println!("| key | CPU per signature |");
    println!("|---|---|");
    for name in ["rsa", "ed"] {
        let key = config.loaded_dkim_keys.get(name).unwrap();
        let n = 500;
        let start = Instant::now();
        for _ in 0..n {
            key.sign(bytes.as_bytes()).unwrap();
        }
        let label = if name == "rsa" { "RSA-2048" } else { "Ed25519" };
        println!(
            "| {label} | {:.0} us |",
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
}

/// The same msys-milter with its store on SQLite alone and with SQLite + PostgreSQL
/// shipping (several hosts), side by side: mail never waits on PostgreSQL.
fn shared() {
    let count = bench_messages().unwrap_or(5000);
    let rounds = 3;
    let (_sink, sink_port) = smtp_sink();
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message.txt");
    campaign_message(&message);
    let pg = support::pg::Pg::start();
    let (with_local, _local) = behind_postfix(
        sink_port,
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
    );
    let (with_shared, _shared) = behind_postfix(
        sink_port,
        &format!(
            "node_id = 1\n[envelope]\nbounce_domain = \"bounces.example.net\"\n[store]\npostgres = \"{}\"\n",
            pg.url()
        ),
    );
    // PostgreSQL down: the host queues what it would ship, and mail goes on.
    let (with_down, _down) = behind_postfix(
        sink_port,
        &format!(
            "node_id = 2\n[envelope]\nbounce_domain = \"bounces.example.net\"\n[store]\npostgres = \"host={} port=1 user=msys dbname=msys\"\n",
            dir.path().join("no-such-socket-dir").display()
        ),
    );
    for p in [&with_local, &with_shared, &with_down] {
        round(p, &message, count / 10, 20);
    }
    let (mut local, mut shared, mut down) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        local.push(round(&with_local, &message, count, 20));
        shared.push(round(&with_shared, &message, count, 20));
        down.push(round(&with_down, &message, count, 20));
    }
    let (local, shared, down) = (median(local), median(shared), median(down));
    println!(
        "### Several hosts: the store on SQLite alone vs SQLite + PostgreSQL shipping\n\n{count} messages a round as above, 20 sessions, median of {rounds} alternating rounds; PostgreSQL (a private cluster, fsync off) on the same 2 cores.\n"
    );
    println!("| store | msgs/s | vs SQLite alone |");
    println!("|---|---|---|");
    println!("| SQLite alone (one host) | {local:.0} | 1.00 |");
    println!(
        "| SQLite + PostgreSQL shipping (several hosts) | {shared:.0} | {:.2} |",
        shared / local
    );
    println!(
        "| SQLite + PostgreSQL down (the backlog grows locally) | {down:.0} | {:.2} |",
        down / local
    );
    println!(
        "\nEvents in PostgreSQL after the run: {}.",
        pg.sql("SELECT count(*) FROM events")
    );
}

/// The deliverability counters (REST API metrics) on and off, side by side: the same
/// messages through two Postfix instances, alternating rounds.
fn counters() {
    let count = bench_messages().unwrap_or(5000);
    let rounds = 5;
    let (_sink, sink_port) = smtp_sink();
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("message.txt");
    campaign_message(&message);
    let base = "[envelope]\nbounce_domain = \"bounces.example.net\"\n";
    let (with_on, on_milter) = behind_postfix(sink_port, base);
    let (with_off, off_milter) =
        behind_postfix(sink_port, &format!("{base}[store]\ncounters = false\n"));
    for p in [&with_on, &with_off] {
        round(p, &message, count / 10, 20);
    }
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut on_ticks, mut off_ticks) = (0, 0);
    for _ in 0..rounds {
        let t = cpu_ticks(off_milter.pid());
        off.push(round(&with_off, &message, count, 20));
        off_ticks += cpu_ticks(off_milter.pid()) - t;
        let t = cpu_ticks(on_milter.pid());
        on.push(round(&with_on, &message, count, 20));
        on_ticks += cpu_ticks(on_milter.pid()) - t;
    }
    let (on, off) = (median(on), median(off));
    let per_msg = |ticks: u64| ticks as f64 * 10_000.0 / (count * rounds) as f64;
    println!("### Deliverability counters through Postfix\n");
    println!(
        "{count} messages a round (the throughput message: 3 injection events each), 20 sessions, median of {rounds} alternating rounds.\n"
    );
    println!("| msys-milter | msgs/s | vs counters off | milter CPU per message |");
    println!("|---|---|---|---|");
    println!(
        "| `[store] counters = false` | {off:.0} | 1.00 | {:.0} us |",
        per_msg(off_ticks)
    );
    println!(
        "| counters kept (the default) | {on:.0} | {:.2} | {:.0} us |",
        on / off,
        per_msg(on_ticks)
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects one part.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_none_or(|f| "throughput".contains(f)) {
        throughput();
    }
    if filter.as_deref().is_none_or(|f| "copies".contains(f)) {
        copies();
    }
    if filter.as_deref().is_none_or(|f| "dkim".contains(f)) {
        dkim();
    }
    if filter.as_deref().is_none_or(|f| "shared".contains(f)) {
        shared();
    }
    if filter.as_deref().is_none_or(|f| "counters".contains(f)) {
        counters();
    }
}
