//! Milter-level benchmark, no MTA: a load generator speaking the MTA side of the milter
//! protocol (indymilter-test) to msys-milter and to a do-nothing milter, alternating
//! rounds, at concurrency 1, 8 and 32, many messages per connection with an abort
//! between messages as MTAs do. Prints Markdown tables (bench/run.sh puts them into
//! BENCHMARKS.md). Also: the TCP_NODELAY stall, and memory.
//!
//! Run: cargo build --release --examples && cargo bench --bench milter

#[path = "common/cpu.rs"]
mod cpu;

use cpu::cpu_ticks;
use indymilter_test::{Actions, MacroStage, ProtoOpts, Status, TestConnection};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API: &str = "{\"campaign_id\": \"bench\", \"cc\": [{\"email\": \"cc1@example.com\", \"name\": \"CC 1\"}, \"cc2@example.com\"], \"archive\": [\"archive@example.com\"], \"tags\": [\"a\", \"b\"]}";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A milter process under test; killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    /// msys-milter's own state directory (its store), fresh for each process.
    _state: Option<tempfile::TempDir>,
}

impl Proc {
    fn spawn(mut cmd: Command, port: u16) -> Proc {
        let child = cmd
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "milter did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proc {
            child,
            addr,
            _state: None,
        }
    }

    fn msys(config: &str) -> Proc {
        Proc::msys_exe(env!("CARGO_BIN_EXE_msys-milter").as_ref(), config)
    }

    /// msys-milter from `exe` (another build, to compare with) with `config`.
    fn msys_exe(exe: &std::path::Path, config: &str) -> Proc {
        let port = free_port();
        let file = std::env::temp_dir().join(format!("msys-bench-{port}.toml"));
        std::fs::write(
            &file,
            format!("socket = \"inet:127.0.0.1:{port}\"\n{config}"),
        )
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .env("STATE_DIRECTORY", state.path());
        let mut p = Proc::spawn(cmd, port);
        p._state = Some(state);
        p
    }

    fn null(args: &[&str]) -> Proc {
        let port = free_port();
        let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/release/examples/null_milter");
        assert!(
            exe.exists(),
            "build it first: cargo build --release --examples"
        );
        let mut cmd = Command::new(exe);
        cmd.arg(port.to_string()).args(args);
        Proc::spawn(cmd, port)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open(addr: SocketAddr) -> TestConnection {
    TestConnection::configure()
        .read_timeout(Duration::from_secs(30))
        .available_actions(Actions::all())
        .open_tcp(addr)
        .await
        .unwrap()
}

/// One message as Postfix sends it; returns the end-of-message latency.
async fn one_message(conn: &mut TestConnection, body: &[u8], i: usize) -> Duration {
    let opts = conn.negotiated_opts();
    conn.macros(MacroStage::Mail, [("{auth_authen}", "")])
        .await
        .unwrap();
    if !opts.contains(ProtoOpts::NO_MAIL) {
        conn.mail(["<app@example.com>"]).await.unwrap();
    }
    conn.macros(MacroStage::Rcpt, [("i", format!("Q{i}"))])
        .await
        .unwrap();
    if !opts.contains(ProtoOpts::NO_RCPT) {
        conn.rcpt(["<to@example.org>"]).await.unwrap();
    }
    if !opts.contains(ProtoOpts::NO_HEADER) {
        for (name, value) in [
            (
                "Received",
                "from client (localhost [127.0.0.1]) by mta (Postfix) with ESMTP id Q",
            ),
            ("From", "App <app@example.com>"),
            ("To", "to@example.org"),
            ("Subject", "benchmark"),
            ("Message-Id", "<bench@example.com>"),
            ("X-MSYS-API", API),
        ] {
            conn.header(name, value).await.unwrap();
        }
    }
    if !opts.contains(ProtoOpts::NO_EOH) {
        conn.eoh().await.unwrap();
    }
    if !opts.contains(ProtoOpts::NO_BODY) {
        for chunk in body.chunks(65535) {
            if conn.body(chunk.to_vec()).await.unwrap() == Status::Skip {
                break;
            }
        }
    }
    conn.macros(MacroStage::Eom, [("i", format!("Q{i}"))])
        .await
        .unwrap();
    let start = Instant::now();
    let (_, status) = conn.eom().await.unwrap();
    let latency = start.elapsed();
    assert_eq!(status, Status::Continue);
    conn.abort().await.unwrap();
    latency
}

struct Round {
    msgs_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// The milter process's CPU (user + system) per message, when measured.
    cpu_us: f64,
}

/// [`round`] against `milter`, with its CPU per message.
async fn measured(
    milter: &Proc,
    concurrency: usize,
    per_conn: usize,
    body: &'static [u8],
) -> Round {
    let pid = milter.child.id();
    let before = cpu_ticks(pid);
    let mut r = round(milter.addr, concurrency, per_conn, body).await;
    // Clock ticks are 10 ms: 1e4 us each.
    r.cpu_us = (cpu_ticks(pid) - before) as f64 * 1e4 / (concurrency * per_conn) as f64;
    r
}

/// `concurrency` connections sending `per_conn` messages each.
async fn round(
    addr: SocketAddr,
    concurrency: usize,
    per_conn: usize,
    body: &'static [u8],
) -> Round {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = open(addr).await;
                let mut lat = Vec::with_capacity(per_conn);
                for i in 0..per_conn {
                    lat.push(one_message(&mut conn, body, i).await);
                }
                conn.close().await.unwrap();
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    Round {
        msgs_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
        cpu_us: f64::NAN,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds = 3;
    let body: &'static [u8] = b"Hello, this is a short benchmark body.\r\n"
        .repeat(50)
        .leak();
    let msys = Proc::msys("[envelope]\nbounce_domain = \"bounces.example.net\"\n");
    let msys_off = Proc::msys(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n[store]\nenabled = false\n",
    );
    let null = Proc::null(&[]);
    let lean = Proc::null(&["--lean"]);
    // BENCH_BASELINE=/path/to/msys-milter: another build, side by side (store on).
    let baseline = std::env::var_os("BENCH_BASELINE").map(|exe| {
        Proc::msys_exe(
            exe.as_ref(),
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        )
    });
    // Messages a round, all connections together (BENCH_MESSAGES; 4,000).
    let messages: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);

    println!("### Milter level: msys-milter vs a do-nothing indymilter milter\n");
    println!(
        "Load generator: indymilter-test as the MTA, one process, loopback; messages carry an X-MSYS-API header with 2 cc and 1 archive recipient and a 2 KB body; abort between messages; {messages} messages a round, median of {rounds} alternating rounds. The do-nothing milter takes every stage and answers each (the protocol's own cost for a milter that reads the message); the lean one negotiates away everything but end-of-message (a floor no milter that reads headers can reach). msys-milter runs with its defaults (the store on: each message's transmission and injection events committed before the answer) and with the store off. CPU per message: the milter process's user + system time from /proc, divided by the messages.\n"
    );
    println!(
        "| concurrency | do-nothing msgs/s | msys msgs/s | ratio | do-nothing p50 ms | msys p50 ms | do-nothing p99 ms | msys p99 ms | lean do-nothing msgs/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cpu_rows = Vec::new();
    // BENCH_CONCURRENCY=8: that level alone (for profiling).
    let levels: Vec<usize> = match std::env::var("BENCH_CONCURRENCY") {
        Ok(v) => v.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
        Err(_) => vec![1, 8, 32],
    };
    for concurrency in levels {
        let per_conn = messages / concurrency;
        let (mut n, mut m, mut l, mut o) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut b = Vec::new();
        for _ in 0..rounds {
            if let Some(p) = &baseline {
                b.push(measured(p, concurrency, per_conn, body).await);
            }
            n.push(measured(&null, concurrency, per_conn, body).await);
            m.push(measured(&msys, concurrency, per_conn, body).await);
            l.push(measured(&lean, concurrency, per_conn, body).await);
            o.push(measured(&msys_off, concurrency, per_conn, body).await);
        }
        let rate = |r: &[Round]| median(r.iter().map(|x| x.msgs_per_sec).collect());
        let cpu = |r: &[Round]| median(r.iter().map(|x| x.cpu_us).collect());
        let pick = |r: &[Round], f: fn(&Round) -> Duration| {
            let mut v: Vec<Duration> = r.iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        let (nr, mr) = (rate(&n), rate(&m));
        println!(
            "| {concurrency} | {nr:.0} | {mr:.0} | {:.2} | {} | {} | {} | {} | {:.0} |",
            mr / nr,
            ms(pick(&n, |r| r.p50)),
            ms(pick(&m, |r| r.p50)),
            ms(pick(&n, |r| r.p99)),
            ms(pick(&m, |r| r.p99)),
            rate(&l),
        );
        // Round by round, each milter's CPU against the do-nothing milter's of that round.
        let ratio = |r: &[Round]| {
            median(
                r.iter()
                    .zip(&n)
                    .map(|(x, base)| x.cpu_us / base.cpu_us)
                    .collect(),
            )
        };
        cpu_rows.push(format!(
            "| {concurrency} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            cpu(&l),
            cpu(&n),
            cpu(&o),
            cpu(&m),
            ratio(&o),
            ratio(&m),
        ));
        if !b.is_empty() {
            let vs = median(m.iter().zip(&b).map(|(x, y)| x.cpu_us / y.cpu_us).collect());
            println!(
                "(c={concurrency}: BENCH_BASELINE {:.0} us/msg, this build {:.0}; this build vs baseline, round by round median: {vs:.2})",
                cpu(&b),
                cpu(&m)
            );
        }
    }
    println!(
        "\nCPU per message at the milter protocol level, same rounds (us; ratios are the median of each round's ratio to the do-nothing milter):\n"
    );
    println!(
        "| concurrency | lean do-nothing | do-nothing | msys-milter, store off | msys-milter, default (store on) | store off vs do-nothing | store on vs do-nothing |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in cpu_rows {
        println!("{row}");
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "protocol") {
        return;
    }
    drop(msys_off);

    println!(
        "\n### TCP_NODELAY: a milter answering end-of-message with 3 actions, concurrency 1\n"
    );
    println!("| listener | msgs/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (label, args) in [
        (
            "indymilter's plain listener (Nagle on)",
            &["--lean", "--actions", "3", "--no-nodelay"][..],
        ),
        (
            "TCP_NODELAY + TCP_QUICKACK (msys-milter's listener)",
            &["--lean", "--actions", "3"][..],
        ),
    ] {
        let p = Proc::null(args);
        let r = round(p.addr, 1, 100, body).await;
        println!(
            "| {label} | {:.0} | {} | {} |",
            r.msgs_per_sec,
            ms(r.p50),
            ms(r.p99)
        );
    }
    let r = round(msys.addr, 1, 1000, body).await;
    println!(
        "| msys-milter (TCP_NODELAY + TCP_QUICKACK; 4 actions a message) | {:.0} | {} | {} |",
        r.msgs_per_sec,
        ms(r.p50),
        ms(r.p99)
    );

    println!("\n### Memory (VmRSS of the milter process)\n");
    let fresh = Proc::msys("");
    println!("| state | msys-milter KiB | null milter KiB |");
    println!("|---|---|---|");
    let fresh_null = Proc::null(&[]);
    println!(
        "| idle, just started | {} | {} |",
        fresh.rss_kib(),
        fresh_null.rss_kib()
    );
    let mut idle = Vec::new();
    let mut idle_null = Vec::new();
    for _ in 0..1000 {
        idle.push(open(fresh.addr).await);
        idle_null.push(open(fresh_null.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "| 1,000 idle connections | {} | {} |",
        fresh.rss_kib(),
        fresh_null.rss_kib()
    );
    drop(idle);
    drop(idle_null);
    let small: &'static [u8] = vec![b'x'; 10 * 1024].leak();
    let large: &'static [u8] =
        b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
            .repeat(10 * 1024 * 1024 / 74)
            .leak();
    round(fresh.addr, 8, 20, small).await;
    println!(
        "| after 160 messages with 10 KB bodies | {} | - |",
        fresh.rss_kib()
    );
    round(fresh.addr, 8, 20, large).await;
    println!(
        "| after 160 messages with 10 MB bodies (body skipped: no copies needed) | {} | - |",
        fresh.rss_kib()
    );
}
