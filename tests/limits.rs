//! No client of the public tracking endpoint or of the LMTP listener can make the milter
//! refuse the MTA. The real daemon, with the descriptor limit a service gets by default
//! (1,024, soft and hard), is flooded with partial HTTP requests and silent LMTP
//! connections: each listener holds only its cap and answers the rest at once (503,
//! 421), the partial requests are cut at the header timeout, memory stays bounded, and
//! the milter still answers transactions and the real Postfix still delivers through
//! it. Then the daemon's descriptors are exhausted on purpose, so accepts fail with
//! EMFILE on every listener: it keeps running and serves again once they are free.

mod support;

use indymilter_test::Status;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::capture::Capture;
use support::e2e::http_get;
use support::mta::{Mta, MtaKind};
use support::postfix::free_port;
use support::{Milter, message, milter_transaction};

/// What the daemon may hold in memory while flooded (it holds ~300 HTTP and ~40 LMTP
/// connections of a few KiB each, plus its store and runtime).
const MAX_RSS_KIB: u64 = 150 * 1024;

/// Let this test process open thousands of sockets.
fn raise_own_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(want.max(limit.rlim_cur));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= want,
        "this test needs {want} descriptors, the hard limit is {}",
        limit.rlim_max
    );
}

/// The milter listens first; its HTTP and LMTP listeners come up right after.
fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// What a connection got before it was closed, or `None` if it is still open after
/// `wait`.
fn answer_within(s: &mut TcpStream, wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // Reset by the server: closed.
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

/// The endpoint's `/metrics` text.
fn metrics(http_port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn config(http_port: u16, lmtp_port: u16) -> String {
    format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\nheader_timeout = 2\nidle_timeout = 3\n\
         [feedback]\nlmtp = \"127.0.0.1:{lmtp_port}\"\n"
    )
}

#[test]
fn a_flood_on_the_http_and_lmtp_listeners_never_starves_the_milter() {
    raise_own_limit(8_000);
    let capture = Capture::start();
    let milter_port = free_port();
    let (http_port, lmtp_port) = (free_port(), free_port());
    let mta = Mta::start(MtaKind::Postfix, Some(milter_port), capture.port);
    let milter = Milter::start_limited(
        milter_port,
        &format!(
            "{}[reinject]\nsmtp = \"127.0.0.1:{}\"\n",
            config(http_port, lmtp_port),
            mta.reinject_port()
        ),
        1024,
    );
    let pid = milter.pid();
    wait_for_port(http_port);
    wait_for_port(lmtp_port);
    let log = milter.log();
    assert!(
        log.contains("descriptor limit") && log.contains("soft=1024"),
        "{log}"
    );
    assert!(log.contains("lowered to fit"), "{log}");

    // 5,000 partial requests: the head never ends.
    let started = Instant::now();
    let mut partial = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let mut s = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        partial.push(s);
    }
    // 2,000 silent LMTP connections.
    let opened = started.elapsed();
    let mut silent = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        silent.push(TcpStream::connect(("127.0.0.1", lmtp_port)).unwrap());
    }
    assert!(alive(pid), "{}", milter.log());

    // The milter answers: over the protocol, and for the real Postfix.
    assert_eq!(milter_transaction(milter_port), Status::Continue);
    support::send(
        mta.smtp_port(),
        "app@example.com",
        &["to@example.org"],
        &message("X-MSYS-API: {\"campaign_id\": \"flood\"}\n", "Hello\n"),
    )
    .unwrap();
    let got = capture.wait_for_deliveries(1);
    assert!(got[0].header("X-MSYS-API").is_empty(), "the milter ran");
    let rss = rss_kib(pid);
    assert!(rss < MAX_RSS_KIB, "{rss} KiB held under the flood");

    // Every LMTP connection was answered: the greeting for those within the cap, a
    // 421 for the rest, at once.
    let mut greeted = 0;
    let mut refused = 0;
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 128];
        let n = s.read(&mut buf).unwrap_or(0);
        let line = String::from_utf8_lossy(&buf[..n]);
        if line.starts_with("220 ") {
            greeted += 1;
        } else if line.starts_with("421 4.3.2") {
            refused += 1;
        }
    }
    assert_eq!(
        greeted + refused,
        2_000,
        "greeted {greeted}, refused {refused}"
    );
    assert!(greeted >= 1 && refused > 1_000, "greeted {greeted}");

    // The partial requests are all closed by the header timeout (2 s); those over the
    // cap got a 503 at once.
    let deadline = started + Duration::from_secs(15);
    let mut busy = 0;
    for s in &mut partial {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = answer_within(s, left.max(Duration::from_millis(1)))
            .unwrap_or_else(|| panic!("a partial request held past {:?}", started.elapsed()));
        if answer.starts_with("HTTP/1.1 503") {
            busy += 1;
        }
    }
    // Slots freed by the timeout take later connections of the flood: not all over
    // the cap at once, but many.
    assert!(busy > 1_000, "{busy} answered 503 at once");
    let cut = started.elapsed();
    drop(partial);

    // Freed: /healthz answers, and /metrics tells what happened.
    assert_eq!(http_get(http_port, "/healthz").0, 200);
    let metrics = metrics(http_port);
    for want in [
        "msys_milter_connections_refused_total{listener=\"http\"}",
        "msys_milter_connections_refused_total{listener=\"lmtp\"}",
        "msys_milter_connections_timed_out_total{listener=\"http\"}",
        "msys_milter_connections_open{listener=\"lmtp\"}",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }
    eprintln!(
        "flood: 5,000 partial requests opened in {opened:?}; {greeted} LMTP held, {refused} refused; {busy} HTTP refused with 503, the rest cut by {cut:?}; {rss} KiB"
    );
}

#[test]
fn exhausted_descriptors_pause_every_listener_and_never_end_the_daemon() {
    let milter_port = free_port();
    let (http_port, lmtp_port) = (free_port(), free_port());
    let milter = Milter::start_on(milter_port, &config(http_port, lmtp_port));
    let pid = milter.pid();
    wait_for_port(http_port);
    wait_for_port(lmtp_port);
    assert_eq!(milter_transaction(milter_port), Status::Continue);
    assert_eq!(http_get(http_port, "/healthz").0, 200);

    // Two descriptors to spare, then take them (and more): every accept from now on
    // fails. The connections of the checks above are closed first.
    std::thread::sleep(Duration::from_millis(500));
    let spare = open_fds(pid) + 2;
    let set = |soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: prlimit(2) on the daemon, reading `limit` only.
        let r = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &limit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) writing into `old`.
    assert_eq!(
        unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &mut old,
            )
        },
        0
    );
    set(spare, old.rlim_max);
    let fillers: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", lmtp_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The kernel completes these connections; the daemon cannot take them yet.
    let mut waiting: Vec<TcpStream> = [milter_port, http_port, lmtp_port]
        .iter()
        .map(|&port| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(pid), "the daemon ended: {}", milter.log());
    let log = milter.log();
    assert!(log.contains("accept failed, pausing"), "{log}");
    assert!(
        log.matches("accept failed").count() <= 6,
        "logged at most once a minute per listener: {log}"
    );

    // Descriptors again: the connections that waited are served, and new ones.
    set(old.rlim_cur, old.rlim_max);
    drop(fillers);
    let mut greeting = [0u8; 64];
    waiting[2]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = waiting[2].read(&mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220 "), "LMTP serves again");
    write!(
        waiting[1],
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = answer_within(&mut waiting[1], Duration::from_secs(5)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(milter_transaction(milter_port), Status::Continue);
    assert_eq!(http_get(http_port, "/healthz").0, 200);
    let metrics = metrics(http_port);
    for listener in ["milter", "http", "lmtp"] {
        assert!(
            metrics.contains(&format!(
                "msys_milter_accept_errors_total{{listener=\"{listener}\"}}"
            )),
            "{listener}: {metrics}"
        );
    }
    assert!(alive(pid));
}
