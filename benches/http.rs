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

fn main() {
    let (milter_port, http_port) = (free_port(), free_port());
    let secret = "bench-secret-0123456789";
    // A store of its own: the default one (/var/lib/msys-milter as root) is the
    // machine's, not the benchmark's.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("http-bench.toml");
    let store = dir.path().join("http-bench.db");
    std::fs::write(
        &config,
        format!("socket = \"inet:127.0.0.1:{milter_port}\"\n[tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"{secret}\"]\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[store]\npath = \"{}\"\n", store.display()),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_msys-milter"))
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
    let keys = Keys::new(&[secret]).unwrap();
    let links = Links {
        base_url: &format!("http://127.0.0.1:{http_port}"),
        keys: &keys,
        transmission_id: 42,
        recipient: "to@example.org",
        expires: u32::MAX,
    };
    let url = links.click(0, "https://shop.example.com/offer?id=7");
    println!("### Tracking endpoint: click redirects\n");
    match Command::new("wrk")
        .args(["-t2", "-c64", "-d10s", "--latency", &url])
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let find = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
                    .unwrap_or_else(|| "?".into())
            };
            println!(
                "wrk -t2 -c64 -d10s on loopback, one signed click URL (302 to its target); the daemon's endpoint and wrk share the 2 cores. Each click's event is committed to the store (its own, `full` durability) before the 302, after the transmission is read back; the log is at warn, so the figure is the endpoint and its store, not the log.\n"
            );
            println!("| requests/s | p50 | p99 |");
            println!("|---|---|---|");
            println!(
                "| {} | {} | {} |",
                find("Requests/sec:"),
                find("50%"),
                find("99%")
            );
        }
        Err(e) => println!("wrk not available ({e}): install the Debian package wrk.\n"),
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}
