//! The `msys-milter` binary: runs with built-in defaults, stops cleanly on SIGTERM and
//! removes its UNIX socket, and its CLI errors say what to do.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_msys-milter");

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn runs_on_a_unix_socket_with_defaults_and_removes_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("milter.sock");
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(format!("unix:{}", path.display()))
        // The store under the test's own directory, never the system's.
        .env("STATE_DIRECTORY", dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the socket", || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    });
    sigterm(&child);
    let output = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(output.success(), "{output:?}");
    assert!(!path.exists(), "socket file left behind");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("listening"), "{log}");
    assert!(
        log.contains("no bounce domain configured"),
        "the start-up warning: {log}"
    );
}

#[test]
fn a_bad_config_is_refused_at_start_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "node_id = 3\n\n[envelope]\nbounce_domain = \"no spaces allowed\"\n",
    )
    .unwrap();
    for args in [
        vec!["--config", file.to_str().unwrap()],
        vec!["check-config", file.to_str().unwrap()],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:4: key `envelope.bounce_domain`",
                file.display()
            )),
            "{err}"
        );
    }
    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent/msys.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/msys.toml: cannot read"));
}

#[test]
fn cli_errors_say_what_to_do() {
    let out = Command::new(BIN)
        .args(["--socket", "tcp:25"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use `inet:HOST:PORT`"));
    // A busy port names the socket and suggests --socket.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["--socket", &format!("inet:127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--socket") && err.contains(&format!("inet:127.0.0.1:{port}")),
        "{err}"
    );
    // Any other failure says what it is, without the busy-port hint.
    let out = Command::new(BIN)
        .args(["--socket", "unix:/nonexistent-dir/milter.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on unix:/nonexistent-dir/milter.sock: No such file")
            && !err.contains("another milter"),
        "{err}"
    );
    // A missing file: its OS error once.
    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent/msys-milter.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // Nothing piped to explain: say so.
    let out = Command::new(BIN)
        .arg("explain")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message on standard input"));
    // Sizes take units; a bare small number is refused; both re-injection ways are too.
    let dir = tempfile::tempdir().unwrap();
    for (text, wanted) in [
        (
            "max_message_size = 50\n",
            Some(":1: key `max_message_size`: 50 bytes is too small"),
        ),
        ("max_message_size = \"20MB\"\n", None),
        (
            "[reinject]\nsmtp = \"127.0.0.1:10026\"\nsendmail = \"/usr/sbin/sendmail\"\n",
            Some(":3: key `reinject.sendmail`: set either `smtp` or `sendmail`"),
        ),
    ] {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match wanted {
            Some(w) => assert!(err.contains(w), "{text}: {err}"),
            None => assert!(out.status.success(), "{text}: {err}"),
        }
    }
}

fn explain(args: &[&str], message: &str) -> (i32, String) {
    let mut child = Command::new(BIN)
        .arg("explain")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn explain_prints_the_reply_or_the_plan() {
    let (code, out) = explain(
        &["--from", "a@example.com", "--rcpt", "b@example.org"],
        "From: a@example.com\r\nX-MSYS-API: {\"tags\": [1]}\r\n\r\nbody\r\n",
    );
    assert_eq!(
        (code, out.trim()),
        (
            1,
            "550 5.6.0 X-MSYS-API 'tags' entries must be of type 'string'"
        )
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
    )
    .unwrap();
    let (code, out) = explain(
        &["--config", config.to_str().unwrap()],
        "From: App <a@example.com>\nTo: b@example.org, c@example.org\nX-MSYS-API: {\"cc\": [\"cc@example.com\"],\n  \"archive\": [\"arch@example.com\"]}\n\nbody\n",
    );
    assert_eq!(code, 0, "{out}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rcpts: Vec<(&str, &str)> = plan["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                r["rcpt_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rcpts,
        [
            ("b@example.org", "to"),
            ("c@example.org", "to"),
            ("cc@example.com", "cc"),
            ("arch@example.com", "archive")
        ]
    );
    let tid = plan["transmission_id"].as_str().unwrap();
    assert_eq!(
        plan["mail_from"],
        format!("bounces+{tid}@bounces.example.net")
    );
    assert_eq!(plan["header_edits"][0]["name"], "X-MSFBL", "{plan:#}");
    assert_eq!(
        plan["header_edits"][2]["value"], "cc@example.com",
        "{plan:#}"
    );
}

/// Drive one message through the daemon at `port` and return the end-of-message status.
async fn eom_status(port: u16, from_header: &str) -> indymilter_test::Status {
    use indymilter_test::{Actions, TestConnection};
    let mut conn = TestConnection::configure()
        .available_actions(Actions::all())
        .open_tcp(("127.0.0.1", port))
        .await
        .unwrap();
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    conn.header("From", from_header).await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    conn.close().await.unwrap();
    status
}

#[test]
fn sighup_reloads_the_configuration_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("msys.toml");
    std::fs::write(&file, "[[sending_domain]]\nname = \"example.com\"\n").unwrap();
    let port = support::postfix::free_port();
    let mut child = Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--socket",
            &format!("inet:127.0.0.1:{port}"),
        ])
        .env("STATE_DIRECTORY", dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect the log in the background, to wait for the reload lines.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = std::sync::Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    wait_until("the milter port", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(eom_status(port, "x@other.org"));
    assert!(
        matches!(refused, indymilter_test::Status::Reject { .. }),
        "{refused:?}"
    );

    let hup = |expect: &str| {
        let before = log.lock().unwrap().matches(expect).count();
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        wait_until(expect, || {
            log.lock().unwrap().matches(expect).count() > before
        });
    };
    std::fs::write(&file, "[[sending_domain]]\nname = \"other.org\"\n").unwrap();
    hup("configuration reloaded");
    let accepted = rt.block_on(eom_status(port, "x@other.org"));
    assert_eq!(accepted, indymilter_test::Status::Continue);

    std::fs::write(&file, "[[sending_domain]]\nname = \n").unwrap();
    hup("keeping the running configuration");
    assert_eq!(
        rt.block_on(eom_status(port, "x@other.org")),
        indymilter_test::Status::Continue
    );

    sigterm(&child);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
}

/// Under systemd (Type=notify) the daemon says READY=1 on $NOTIFY_SOCKET once it
/// listens.
#[test]
fn tells_systemd_when_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let milter_sock = dir.path().join("milter.sock");
    let mut child = Command::new(BIN)
        .args(["--socket", &format!("unix:{}", milter_sock.display())])
        .env("NOTIFY_SOCKET", &notify)
        .env("STATE_DIRECTORY", dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = socket.recv(&mut buf);
    let listening = milter_sock.exists();
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(listening, "ready only once listening");
}
