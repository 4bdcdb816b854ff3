//! Personalised copies, in process: the milter driven by indymilter-test hands bcc copies
//! to a stand-in sendmail(1) that records what it was given (the SMTP path is covered end
//! to end through Postfix).

use indymilter_test::{EomAction, Status, TestConnection};
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A sendmail(1) stand-in: writes its arguments and its input to `dir/args.RCPT` and
/// `dir/msg.RCPT` (copies are handed over concurrently), and exits with the status in
/// `dir/exit` (0 when absent).
fn fake_sendmail(dir: &Path) -> PathBuf {
    support::script(
        dir,
        "sendmail",
        &format!(
            "#!/bin/sh\necho \"$@\" > {d}/args.$5\ncat > {d}/msg.$5\nexit $(cat {d}/exit 2>/dev/null || echo 0)\n",
            d = dir.display()
        ),
    )
}

/// The milter in process, handing copies to a sendmail(1) stand-in that runs `script`,
/// with `reinject` added to `[reinject]`; a connection to it.
async fn start_with_script(dir: &Path, script: &str, reinject: &str) -> TestConnection {
    let sendmail = support::script(dir, "sendmail", script);
    let addr = support::start_in_process(&format!(
        "[reinject]\nsendmail = \"{}\"\n{reinject}",
        sendmail.display()
    ))
    .await;
    connect(addr).await
}

async fn connect(addr: std::net::SocketAddr) -> TestConnection {
    support::connect_in_process(addr).await
}

const API: &str = "{\"cc\": [\"cc@example.com\"], \"bcc\": [{\"email\": \"b1@example.com\", \"name\": \"Bee One\"}, \"b2@example.com\", \"CC@example.com\"], \"archive\": [\"arch@example.com\"]}";

/// Send one message with a bcc list and a body of `body_chunks`.
async fn send(
    conn: &mut TestConnection,
    body_chunks: &[&[u8]],
) -> (Vec<EomAction>, Status, Vec<Status>) {
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    for (name, value) in [
        ("From", "App <app@example.com>"),
        ("To", "to@example.org"),
        ("Message-ID", "<m1@example.com>"),
        ("X-MSYS-API", API),
        ("Subject", "Hi"),
    ] {
        conn.header(name, value).await.unwrap();
    }
    let mut body_statuses = Vec::new();
    for chunk in body_chunks {
        body_statuses.push(conn.body(chunk.to_vec()).await.unwrap());
    }
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status, body_statuses)
}

#[tokio::test]
async fn bcc_copies_are_handed_over_before_the_original_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let addr = support::start_in_process(&format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n[reinject]\nsendmail = \"{}\"\n",
        sendmail.display()
    ))
    .await;
    let mut conn = connect(addr).await;
    let body: &[&[u8]] = &[
        b"Hello\r\n.leading dot\r\n",
        "caf\u{e9} 8-bit\r\n".as_bytes(),
    ];
    let (actions, status, body_statuses) = send(&mut conn, body).await;
    assert_eq!(status, Status::Continue);
    assert!(
        body_statuses.iter().all(|s| *s == Status::Continue),
        "the body is read: {body_statuses:?}"
    );
    // The original: cc and archive added, never the bcc recipients.
    let added: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            EomAction::AddRecipient { rcpt, .. } => Some(rcpt.to_str().unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(added, ["<cc@example.com>", "<arch@example.com>"]);
    let new_sender = actions
        .iter()
        .find_map(|a| match a {
            EomAction::ChangeSender { mail, .. } => {
                Some(mail.to_str().unwrap().trim_matches(['<', '>']).to_owned())
            }
            _ => None,
        })
        .unwrap();
    // Two copies (CC@example.com is a cc recipient already), handed over with the
    // rewritten MAIL FROM, each showing only its own Bcc.
    let handed_over = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("msg.")
        })
        .count();
    assert_eq!(handed_over, 2);
    for (rcpt, bcc) in [
        ("b1@example.com", "Bee One <b1@example.com>"),
        ("b2@example.com", "b2@example.com"),
    ] {
        let read = |kind: &str| {
            std::fs::read_to_string(dir.path().join(format!("{kind}.{rcpt}"))).unwrap()
        };
        let (args, msg) = (read("args"), read("msg"));
        // Each copy's sender is the bounce address with its recipient's tag.
        let own_sender = msys_milter::ledger::copy_sender(&new_sender, rcpt);
        assert_eq!(args.trim(), format!("-i -f {own_sender} -- {rcpt}"));
        assert!(!msg.contains('\r'), "sendmail(1) gets LF line ends");
        assert!(msg.starts_with("From: App <app@example.com>\nTo: to@example.org\nMessage-ID: <m1@example.com>\nSubject: Hi\nCc: cc@example.com\n"), "{msg}");
        assert!(
            msg.contains(&format!("\nBcc: {bcc}\nX-MSYS-Reinjected: ")),
            "{msg}"
        );
        assert_eq!(msg.matches("\nX-MSFBL: ").count(), 1, "{msg}");
        assert_eq!(msg.matches("Bcc:").count(), 1);
        assert!(!msg.contains("X-MSYS-API"));
        assert!(
            msg.ends_with("\n\nHello\n.leading dot\ncafé 8-bit\n"),
            "{msg:?}"
        );
    }
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_hand_over_tempfails_the_whole_message() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    std::fs::write(dir.path().join("exit"), "75").unwrap();
    let addr = support::start_in_process(&format!(
        "[reinject]\nsendmail = \"{}\"\n",
        sendmail.display()
    ))
    .await;
    let mut conn = connect(addr).await;
    let (actions, status, _) = send(&mut conn, &[b"body\r\n"]).await;
    assert_eq!(
        status,
        Status::Tempfail {
            message: Some(
                c"451 4.3.0 personalised copies could not be handed over, try again later".into()
            )
        }
    );
    assert!(
        actions.is_empty(),
        "nothing of the original is changed: {actions:?}"
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_hand_over_that_hangs_times_out_into_a_tempfail() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = start_with_script(
        dir.path(),
        "#!/bin/sh\ncat > /dev/null\nsleep 30\n",
        "timeout = 1\n",
    )
    .await;
    let started = std::time::Instant::now();
    let (_, status, _) = send(&mut conn, &[b"body\r\n"]).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn the_body_is_skipped_when_no_copy_needs_it_and_bounded_when_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let addr = support::start_in_process(&format!(
        "max_message_size = \"1KiB\"\n[reinject]\nsendmail = \"{}\"\n",
        sendmail.display()
    ))
    .await;
    let mut conn = connect(addr).await;
    let big = b"0123456789abcdef".repeat(100);
    // No bcc: the first chunk is answered "skip".
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    conn.header("X-MSYS-API", "{\"cc\": [\"c@example.com\"]}")
        .await
        .unwrap();
    assert_eq!(conn.body(big.clone()).await.unwrap(), Status::Skip);
    let (_, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    // A bcc copy of a body over max_message_size: refused, nothing handed over.
    let (_, status, _) = send(&mut conn, &[&big]).await;
    assert_eq!(
        status,
        Status::Reject {
            message: Some(c"552 5.3.4 message too big for tracking and personalised copies".into())
        }
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the script itself"
    );
    conn.close().await.unwrap();
}

/// Sendmail's setup (`loop_marker = false`): the copies carry their own Bcc: and the
/// feedback header, and no loop marker, which Sendmail could not strip on delivery.
#[tokio::test]
async fn without_the_loop_marker_copies_carry_none() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = fake_sendmail(dir.path());
    let addr = support::start_in_process(&format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n[reinject]\nsendmail = \"{}\"\nloop_marker = false\n",
        sendmail.display()
    ))
    .await;
    let mut conn = connect(addr).await;
    let (_, status, _) = send(&mut conn, &[b"Hello\r\n"]).await;
    assert_eq!(status, Status::Continue);
    for (rcpt, bcc) in [
        ("b1@example.com", "Bee One <b1@example.com>"),
        ("b2@example.com", "b2@example.com"),
    ] {
        let msg = std::fs::read_to_string(dir.path().join(format!("msg.{rcpt}"))).unwrap();
        assert!(msg.contains(&format!("\nBcc: {bcc}\nX-MSFBL: ")), "{msg}");
        assert!(!msg.contains("X-MSYS-Reinjected"), "{msg}");
    }
    conn.close().await.unwrap();
}

/// A hand-over that takes longer than the MTA's end-of-message timeout: the milter
/// tells the MTA it is still at work every `progress_seconds` until it answers (through
/// Postfix, with a short `milter_content_timeout`: tests/e2e_mta.rs).
#[tokio::test]
async fn a_long_hand_over_reports_progress_until_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = start_with_script(
        dir.path(),
        "#!/bin/sh\nsleep 2.5\ncat >/dev/null\n",
        "progress_seconds = 1\n",
    )
    .await;
    let (actions, status, _) = send(&mut conn, &[b"Hello\r\n"]).await;
    assert_eq!(status, Status::Continue);
    let progress = actions
        .iter()
        .filter(|a| matches!(a, EomAction::Progress))
        .count();
    assert!(
        progress >= 2,
        "one progress reply a second for 2.5 s: {actions:?}"
    );
    // Progress comes before every change to the message: the hand-over is done first.
    let first_change = actions
        .iter()
        .position(|a| !matches!(a, EomAction::Progress))
        .unwrap();
    assert_eq!(first_change, progress, "{actions:?}");
}
