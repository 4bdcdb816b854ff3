//! What the MTA benchmarks share: a sink, the do-nothing milter, smtp-source rounds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::postfix::free_port;

pub mod cpu;

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait (at most 10 s) until something listens on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn smtp_sink() -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "postfix", &format!("127.0.0.1:{port}"), "1024"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "smtp-sink");
    (Killed(child), port)
}

pub fn null_milter(port: u16) -> Killed {
    do_nothing_milter(port, &[])
}

/// The leanest milter that still reads a message: it negotiates away every stage but
/// end-of-message, with TCP_NODELAY and QUICKACK (the floor for any milter).
pub fn lean_milter(port: u16) -> Killed {
    do_nothing_milter(port, &["--lean"])
}

fn do_nothing_milter(port: u16, args: &[&str]) -> Killed {
    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/release/examples/null_milter");
    assert!(
        exe.exists(),
        "build it first: cargo build --release --examples"
    );
    let child = Command::new(exe)
        .arg(port.to_string())
        .args(args)
        .spawn()
        .unwrap();
    wait_for_port(port, "the do-nothing milter");
    Killed(child)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Messages a round when `BENCH_MESSAGES` says (bench/run.sh's knob for a quicker run).
pub fn bench_messages() -> Option<usize> {
    std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Submit `count` copies of `message` in `sessions` sessions with smtp-source to
/// `127.0.0.1:port`, then wait until `drained()`; the rate in messages a second.
pub fn submit(
    port: u16,
    message: &std::path::Path,
    count: usize,
    sessions: usize,
    drained: impl Fn() -> bool,
) -> f64 {
    let start = Instant::now();
    let out = Command::new("/usr/sbin/smtp-source")
        .args([
            "-s",
            &sessions.to_string(),
            "-m",
            &count.to_string(),
            "-f",
            "app@example.com",
            "-t",
            "to@example.org",
            "-F",
        ])
        .arg(message)
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    while !drained() {
        std::thread::sleep(Duration::from_millis(2));
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// The throughput benchmarks' message, about 3 KB: a text part and an HTML part with
/// 10 links; X-MSYS-API with 2 cc.
pub fn campaign_message(path: &std::path::Path) {
    let text = "Hello, this is a benchmark message.\n".repeat(20);
    let links: String = (0..10)
        .map(|i| {
            format!(
                "<p><a href=\"https://shop.example.com/item/{i}\">Item {i}</a> is on offer.</p>\n"
            )
        })
        .collect();
    std::fs::write(
        path,
        format!(
            "Subject: benchmark\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"b\"\nX-MSYS-API: {{\"campaign_id\": \"bench\", \"cc\": [{{\"email\": \"cc1@example.com\", \"name\": \"CC 1\"}}, \"cc2@example.com\"]}}\n\n--b\nContent-Type: text/plain\n\n{text}\n--b\nContent-Type: text/html; charset=utf-8\n\n<html><body>\n{links}</body></html>\n--b--\n"
        ),
    )
    .unwrap();
}

/// The rows every MTA throughput table starts with: no milter, the do-nothing milter,
/// msys-milter (msgs/s and the ratios).
pub fn print_milter_rows(mta: &str, none: f64, null: f64, msys: f64) {
    println!("| {mta} | msgs/s | vs no milter | vs do-nothing milter |");
    println!("|---|---|---|---|");
    println!("| no milter | {none:.0} | 1.00 | - |");
    println!(
        "| do-nothing indymilter milter | {null:.0} | {:.2} | 1.00 |",
        null / none
    );
    println!(
        "| msys-milter | {msys:.0} | {:.2} | {:.2} |",
        msys / none,
        msys / null
    );
}
