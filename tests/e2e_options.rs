//! `ip_pool` and `sandbox` through the real Postfix, wired as postfix-example shows: a
//! pool's mail (the original and its copies) leaves through the pool's transport, here
//! to a capture server of its own; `sp_shared` and a client's forged routing header
//! take the default route; a sandbox message and its copies are held (Postfix's hold
//! queue, Sendmail's quarantine) and reach nobody, their events marked.

mod support;

use support::capture::Capture;
use support::e2e::E2e;
use support::message;
use support::mta::{Mta, MtaKind};
use support::webhook::Webhook;

fn pooled(pool_port: u16, hook: &Webhook) -> E2e {
    E2e::start(&format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [[ip_pool]]\nname = \"pool_a\"\ntransport = \"smtp_pool_a:[127.0.0.1]:{pool_port}\"\n\
         [[ip_pool]]\nname = \"pool_b\"\n\
         [[webhook]]\nurl = \"{}\"\nbatch_wait_ms = 100\n",
        hook.url()
    ))
}

#[test]
fn a_pools_mail_and_its_copies_leave_through_the_pools_transport() {
    let pool = Capture::start();
    let hook = Webhook::start(200);
    let e = pooled(pool.port, &hook);
    e.send(
        "app@example.com",
        &["to@example.org"],
        &message(
            "X-MSYS-API: {\"options\": {\"ip_pool\": \"pool_a\"}, \"bcc\": [\"hidden@example.org\"]}\n",
            "Hi\n",
        ),
    )
    .unwrap();
    let got = pool.wait_for_deliveries(2);
    let rcpts: Vec<&str> = got
        .iter()
        .flat_map(|r| r.rcpts.iter().map(String::as_str))
        .collect();
    assert!(
        rcpts.contains(&"to@example.org") && rcpts.contains(&"hidden@example.org"),
        "{rcpts:?}"
    );
    for r in &got {
        assert!(
            r.header("X-MSYS-Route").is_empty(),
            "stripped at delivery: {}",
            r.text()
        );
    }
    assert!(e.capture.all().is_empty(), "nothing took the default route");
    let log = e
        .postfix()
        .log_when(|log| log.matches("postfix/pool_a/smtp").count() >= 2);
    assert!(
        log.matches("postfix/pool_a/smtp").count() >= 2,
        "both delivered by the pool's transport: {log}"
    );
    let items = hook.wait_until(20, |items| items.len() >= 2);
    for item in &items {
        assert_eq!(
            item["msys"]["message_event"]["ip_pool"], "pool_a",
            "{item:#}"
        );
    }

    // sp_shared, a pool without a transport, and a client's own routing header: the
    // default route.
    for (extra, rcpt) in [
        (
            "X-MSYS-API: {\"options\": {\"ip_pool\": \"sp_shared\"}}\n",
            "shared@example.org",
        ),
        (
            "X-MSYS-API: {\"options\": {\"ip_pool\": \"pool_b\"}}\n",
            "b@example.org",
        ),
        (
            &format!("X-MSYS-Route: smtp_pool_a:[127.0.0.1]:{}\n", pool.port)[..],
            "forged@example.org",
        ),
    ] {
        e.send("app@example.com", &[rcpt], &message(extra, "Hi\n"))
            .unwrap();
    }
    let got = e.capture.wait_for_deliveries(3);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(pool.all().len(), 2, "the pool got nothing more");
    assert!(got.iter().all(|r| r.header("X-MSYS-Route").is_empty()));
}

under_each_mta!(a_sandbox_message_and_its_copies_are_held_and_reach_nobody);

/// Under Postfix the original and its copies wait in the hold queue (the copies through
/// `cleanup-reinject`'s header_checks); under Sendmail they are quarantined (the copies
/// by the `.mc`'s header check on the re-injection port).
fn a_sandbox_message_and_its_copies_are_held_and_reach_nobody(kind: MtaKind) {
    let hook = Webhook::start(200);
    let e = E2e::start_under(
        kind,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n[[webhook]]\nurl = \"{}\"\nbatch_wait_ms = 100\n",
            hook.url()
        ),
    );
    e.send(
        "app@example.com",
        &["to@example.org"],
        &message(
            "X-MSYS-API: {\"options\": {\"sandbox\": true}, \"bcc\": [\"hidden@example.org\"]}\n",
            "Hi\n",
        ),
    )
    .unwrap();
    // Events are written, marked.
    let items = hook.wait_until(20, |items| items.len() >= 2);
    for item in &items {
        let event = &item["msys"]["message_event"];
        assert_eq!(event["type"], "injection");
        assert_eq!(event["sandbox"], "true", "{item:#}");
    }
    // Both messages are held; nothing was delivered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut held = loop {
        let held = held(&e);
        // Postfix logs why a moment after it holds a message.
        let explained = held.iter().all(|(_, why)| !why.is_empty());
        if (held.len() >= 2 && explained) || std::time::Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    held.sort();
    let rcpts: Vec<&str> = held.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        rcpts,
        ["hidden@example.org", "to@example.org"],
        "original and copy held: {held:?}"
    );
    for (rcpt, why) in &held {
        // Postfix notes a milter's quarantine without its reason.
        assert!(
            why.starts_with("msys-milter sandbox") || why.contains("milter triggers HOLD action"),
            "{rcpt} held by something else: {why}"
        );
    }
    e.assert_nothing_delivered();
    // Released as README says, both reach their recipients.
    match &e.mta {
        Mta::Postfix(postfix) => {
            postfix.postsuper(&["-H", "ALL"]);
            postfix.postfix(&["flush"]);
        }
        Mta::Sendmail(sendmail) => sendmail.release_quarantined(),
    }
    e.wait_for_exactly(2);
    // Postfix strips the sandbox header at delivery (smtp_header_checks); Sendmail cannot
    // strip a header, so a released message shows it (README, section Sendmail).
    for rcpt in ["to@example.org", "hidden@example.org"] {
        let shown = e.capture.message_for(rcpt).header("X-MSYS-Sandbox");
        match kind {
            MtaKind::Postfix => assert!(shown.is_empty(), "{rcpt}: {shown:?}"),
            MtaKind::Sendmail => assert_eq!(shown.len(), 1, "{rcpt}: {shown:?}"),
        }
    }
}

/// The held messages: (recipient, why held) for each.
fn held(e: &E2e) -> Vec<(String, String)> {
    match &e.mta {
        Mta::Postfix(postfix) => {
            let out = std::process::Command::new("/usr/sbin/postqueue")
                .arg("-c")
                .arg(postfix.conf_dir())
                .arg("-j")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let log = postfix.log();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|m| m["queue_name"] == "hold")
                .flat_map(|m| {
                    // Postfix logs why: "<queue id>: milter-hold: ...: msys-milter sandbox".
                    let id = m["queue_id"].as_str().unwrap_or("").to_owned();
                    let line = log
                        .lines()
                        .find(|l| {
                            l.contains(&format!("{id}: milter-hold:"))
                                || l.contains(&format!("{id}: hold:"))
                        })
                        .unwrap_or_default();
                    let reason = match line.split_once("msys-milter sandbox") {
                        Some(_) => "msys-milter sandbox".to_owned(),
                        None => line.to_owned(),
                    };
                    m["recipients"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |r| {
                            (
                                r["address"].as_str().unwrap_or("").to_owned(),
                                reason.clone(),
                            )
                        })
                })
                .collect()
        }
        Mta::Sendmail(sendmail) => sendmail.quarantined(),
    }
}
