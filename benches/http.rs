//! Redirects per second of the tracking endpoint, measured with wrk (Debian package) on
//! loopback against the real daemon. Prints a Markdown table for BENCHMARKS.md.

use msys_milter::tracking::{Keys, Links};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// wrk's output for `url` against the daemon `binary` (a store of its own), or why not.
fn redirects(binary: &str, url: impl Fn(u16) -> String) -> Result<String, String> {
    let (milter_port, http_port) = (free_port(), free_port());
    // A store of its own: the default one (/var/lib/msys-milter as root) is the
    // machine's, not the benchmark's.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("http-bench.toml");
    let store = dir.path().join("http-bench.db");
    std::fs::write(
        &config,
        format!("socket = \"inet:127.0.0.1:{milter_port}\"\n[tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"{SECRET}\"]\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[store]\npath = \"{}\"\n", store.display()),
    )
    .unwrap();
    known_transmission(&store);
    let mut daemon = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(Instant::now() < deadline, "endpoint did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "-d10s", "--latency", &url(http_port)])
        .output();
    let _ = daemon.kill();
    let _ = daemon.wait();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| format!("wrk not available ({e}): install the Debian package wrk."))
}

const SECRET: &str = "bench-secret-0123456789";

/// The clicked message's transmission, committed as the milter does when it accepts the
/// message: each click reads it back.
fn known_transmission(path: &std::path::Path) {
    use msys_milter::events::Transmission;
    use msys_milter::store::sqlite::Durability;
    use msys_milter::store::{Commit, SqliteStore, Store};
    let store = SqliteStore::open(path, Durability::Full).unwrap();
    let commit = Commit {
        transmission: Some(Transmission {
            transmission_id: "42".into(),
            campaign_id: Some("bench".into()),
            msg_from: "bounces@bounces.example.net".into(),
            ..Transmission::default()
        }),
        ..Commit::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.commit(commit))
        .unwrap();
    store.close();
}

fn main() {
    let keys = Keys::new(&[SECRET]).unwrap();
    let url = |port: u16| {
        Links {
            base_url: &format!("http://127.0.0.1:{port}"),
            keys: &keys,
            transmission_id: 42,
            recipient: "to@example.org",
            expires: u32::MAX,
        }
        .click(0, "https://shop.example.com/offer?id=7")
    };
    println!("### Tracking endpoint: click redirects\n");
    println!(
        "wrk -t2 -c64 -d10s on loopback, one signed click URL (302 to its target); the daemon's endpoint and wrk share the 2 cores. Each click's event is committed to the store (its own, `full` durability) before the 302, after the transmission is read back; the log is at warn, so the figure is the endpoint and its store, not the log.\n"
    );
    // `BENCH_BASELINE=<msys-milter binary>`: that build and this one, 3 alternating rounds.
    let baseline = std::env::var("BENCH_BASELINE").ok();
    let mut builds = vec![("this build", env!("CARGO_BIN_EXE_msys-milter").to_owned())];
    builds.extend(baseline.map(|b| ("baseline", b)));
    let rounds = if builds.len() > 1 { 3 } else { 1 };
    println!("| build | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for _ in 0..rounds {
        for (name, binary) in &builds {
            match redirects(binary, url) {
                Ok(text) => {
                    let find = |prefix: &str| {
                        text.lines()
                            .find_map(|l| {
                                l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned())
                            })
                            .unwrap_or_else(|| "?".into())
                    };
                    println!(
                        "| {name} | {} | {} | {} |",
                        find("Requests/sec:"),
                        find("50%"),
                        find("99%")
                    );
                }
                Err(e) => return println!("{e}\n"),
            }
        }
    }
}
