//! Feedback end to end, wired as postfix-example shows (the bounce domain's mail goes to
//! the milter's LMTP listener): the capture server refuses recipients with real replies,
//! Postfix bounces to our VERP address, and django-anymail (the real consumer) reads the
//! events. A hard bounce suppresses the recipient; a delay does not; a DSN from a remote
//! server passes the milter untouched on its way in.

mod support;

use serde_json::Value;
use support::anymail::{Anymail, SECRET};
use support::e2e::E2e;
use support::message;
use support::mta::MtaKind;

under_each_mta!(
    a_hard_bounce_is_an_event_and_suppresses_the_recipient,
    a_delay_is_an_event_and_suppresses_nobody,
    a_remote_dsn_passes_the_milter_untouched_and_is_an_out_of_band_bounce,
    a_spam_complaint_suppresses_the_recipient_for_non_transactional_mail_only,
    deliveries_of_an_original_and_its_bcc_copy_come_from_the_mta_log,
    a_mailto_unsubscribe_suppresses_the_recipient,
);

const DEAD: &str = "550 5.1.1 <dead@example.org>: Recipient address rejected: User unknown in local recipient table";
const FULL: &str = "452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full";

fn start(kind: MtaKind, anymail: &Anymail) -> E2e {
    E2e::start_feedback_under(
        kind,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [[sending_domain]]\nname = \"example.com\"\n\
             [[webhook]]\nurl = \"http://127.0.0.1:{}/anymail/sparkpost/tracking/\"\nbasic = \"{SECRET}\"\nbatch_wait_ms = 100\n",
            anymail.port
        ),
        &[("dead@", DEAD), ("full@", FULL)],
        // Retry deferred mail at once and warn of a delay after a second, so the
        // delay DSN comes within the test's time.
        match kind {
            MtaKind::Postfix => {
                "delay_warning_time = 1s\nqueue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n"
            }
            MtaKind::Sendmail => "define(`confTO_QUEUEWARN', `1s')dnl\n",
        },
    )
}

fn campaign_message(to: &str) -> String {
    message(
        &format!(
            "From: News <news@example.com>\nTo: {to}\nSubject: Winter sale\nX-MSYS-API: {{\"campaign_id\": \"winter\", \"metadata\": {{\"user\": \"7\"}}}}\n"
        ),
        "Hello\n",
    )
}

/// The next campaign message to `who` is refused: `who` is suppressed.
fn assert_campaign_refused(e: &E2e, who: &str) {
    let refused = e
        .send("app@example.com", &[who], &campaign_message(who))
        .unwrap_err();
    assert!(
        refused.contains("554") && refused.contains("suppressed due to customer policy"),
        "{refused}"
    );
}

fn sparkpost_event(e: &Value) -> &Value {
    let msys = &e["esp_event"]["msys"];
    msys.as_object()
        .and_then(|m| m.values().next())
        .unwrap_or(&Value::Null)
}

fn a_hard_bounce_is_an_event_and_suppresses_the_recipient(kind: MtaKind) {
    let anymail = Anymail::start();
    let e = start(kind, &anymail);
    // The dead address is a cc recipient, added to the original by the milter.
    let message = message(
        "From: News <news@example.com>\nTo: live@example.org\nSubject: Winter sale\nX-MSYS-API: {\"campaign_id\": \"winter\", \"metadata\": {\"user\": \"7\"}, \"cc\": [\"dead@example.org\"]}\n",
        "Hello\n",
    );
    e.send("app@example.com", &["live@example.org"], &message)
        .unwrap();
    let queued = anymail.wait_for("queued", "dead@example.org", |_| true);
    // anymail's message_id for SparkPost is the transmission id.
    let tid = queued["message_id"].as_str().unwrap().to_owned();
    let injected = sparkpost_event(&queued).clone();
    // The MTA gives up (550), its DSN goes to bounces+<tid>@ and through LMTP to us.
    // No `reporting_mta` is configured and the MTA's name (Postfix's myhostname
    // mta.e2e.test, Sendmail's own) is not this host's: the milter learnt it.
    let bounced = anymail.wait_for("bounced", "dead@example.org", |_| true);
    assert_eq!(bounced["reject_reason"], "invalid", "{bounced:#}");
    let raw = sparkpost_event(&bounced);
    assert_eq!(
        raw["type"], "bounce",
        "our own MTA gave up: in-band: {raw:#}"
    );
    assert_eq!(raw["bounce_class"], "10");
    assert_eq!(raw["error_code"], "550");
    assert_eq!(raw["transmission_id"], tid.as_str());
    assert_eq!(raw["campaign_id"], "winter");
    assert_eq!(raw["rcpt_meta"]["user"], "7");
    // Which message, which recipient, which attempt.
    assert_eq!(raw["rcpt_type"], "cc", "{raw:#}");
    assert_eq!(raw["message_id"], injected["message_id"], "{raw:#}");
    assert_eq!(raw["num_retries"], "0", "{raw:#}");
    assert_eq!(
        raw["ip_address"], "127.0.0.1",
        "the capture server: {raw:#}"
    );
    assert_eq!(raw["delv_method"], "esmtp");
    assert!(
        raw["raw_reason"].as_str().unwrap().contains("User unknown"),
        "{raw:#}"
    );
    assert!(
        !raw["reason"].as_str().unwrap().contains("dead@example.org"),
        "reason is redacted: {raw:#}"
    );
    assert!(
        e.milter.log().contains("feedback: bounce"),
        "{}",
        e.milter.log()
    );

    // The next message to that address is refused: suppressed by the bounce rule.
    assert_campaign_refused(&e, "dead@example.org");
}

fn a_delay_is_an_event_and_suppresses_nobody(kind: MtaKind) {
    let anymail = Anymail::start();
    let e = start(kind, &anymail);
    e.send(
        "app@example.com",
        &["full@example.org"],
        &campaign_message("full@example.org"),
    )
    .unwrap();
    let deferred = anymail.wait_for("deferred", "full@example.org", |_| true);
    let raw = sparkpost_event(&deferred);
    assert_eq!(raw["type"], "delay", "{raw:#}");
    assert_eq!(raw["bounce_class"], "22");
    assert_eq!(raw["error_code"], "452");
    // Not suppressed: the next message is accepted.
    e.send(
        "app@example.com",
        &["full@example.org"],
        &campaign_message("full@example.org"),
    )
    .unwrap();
}

fn a_remote_dsn_passes_the_milter_untouched_and_is_an_out_of_band_bounce(kind: MtaKind) {
    let anymail = Anymail::start();
    let e = start(kind, &anymail);
    e.send(
        "app@example.com",
        &["someone@gmail.example"],
        &campaign_message("someone@gmail.example"),
    )
    .unwrap();
    e.capture.wait_for_deliveries(1);
    let queued = anymail.wait_for("queued", "someone@gmail.example", |_| true);
    // anymail's message_id for SparkPost is the transmission id.
    let tid = queued["message_id"].as_str().unwrap().to_owned();
    // Later Gmail's server sends a DSN to the bounce address, through the same smtpd
    // (and milter) as outgoing mail.
    let verp = format!("bounces+{tid}@bounces.example.net");
    let dsn = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dsn/gmail-dsn-5.1.1.eml"
    ))
    .unwrap()
    .replace("bounces+1234567890123@bounces.example.net", &verp)
    .replace("nosuchuser@gmail.com", "someone@gmail.example")
    .replace('\n', "\r\n");
    e.send("mailer-daemon@googlemail.com", &[&verp], &dsn)
        .unwrap();
    let bounced = anymail.wait_for("bounced", "someone@gmail.example", |_| true);
    let raw = sparkpost_event(&bounced);
    assert_eq!(raw["type"], "out_of_band", "{raw:#}");
    assert_eq!(raw["bounce_class"], "10");
    assert_eq!(bounced["reject_reason"], "invalid");
    // Passed untouched: the milter logged it as inbound, and no injection for the VERP.
    let log = e.milter.log();
    assert!(log.contains("passed untouched"), "{log}");
    assert!(
        anymail
            .events()
            .iter()
            .all(|ev| ev["recipient"] != verp.as_str()),
        "{:#?}",
        anymail.events()
    );
}

/// A mailbox provider's feedback loop mails an ARF report to the bounce domain; the
/// report's copy of the message carries our signed X-MSFBL header.
fn a_spam_complaint_suppresses_the_recipient_for_non_transactional_mail_only(kind: MtaKind) {
    let anymail = Anymail::start();
    let e = start(kind, &anymail);
    let who = "complainer@example.org";
    e.send("app@example.com", &[who], &campaign_message(who))
        .unwrap();
    e.capture.wait_for_deliveries(1);
    let delivered = e.capture.message_for(who);
    let msfbl = delivered.header("X-MSFBL");
    assert_eq!(msfbl.len(), 1, "{}", delivered.text());
    let report = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/dsn/arf-abuse.eml"
    ))
    .unwrap()
    .replace("X-MSFBL: placeholder", &format!("X-MSFBL: {}", msfbl[0]))
    // Providers often redact the recipient (RFC 6590) and send to a fixed address.
    .replace("Original-Rcpt-To: <complainer@example.org>\n", "")
    .replace(
        "Original-Mail-From: <bounces+1234567890123@bounces.example.net>",
        "Original-Mail-From: <redacted@bounces.example.net>",
    )
    .replace("To: complainer@example.org", "To: redacted@example.org")
    .replace(
        "bounces+1234567890123@bounces.example.net",
        "fbl@bounces.example.net",
    )
    .replace('\n', "\r\n");
    e.send("staff@hotmail.com", &["fbl@bounces.example.net"], &report)
        .unwrap();
    let complained = anymail.wait_for("complained", who, |_| true);
    let raw = sparkpost_event(&complained);
    assert_eq!(raw["type"], "spam_complaint", "{raw:#}");
    assert_eq!(raw["fbtype"], "abuse");
    assert_eq!(raw["report_to"], "fbl@bounces.example.net");
    assert_eq!(raw["campaign_id"], "winter");
    // Campaign mail to the complainer is refused now; transactional mail still goes.
    assert_campaign_refused(&e, who);
    let receipt = message(
        &format!(
            "From: Shop <shop@example.com>\nTo: {who}\nSubject: Receipt\nX-MSYS-API: {{\"options\": {{\"transactional\": true}}}}\n"
        ),
        "Thanks\n",
    );
    e.send("app@example.com", &[who], &receipt).unwrap();
    e.capture.wait_for_deliveries(2);
}

/// The MTA's log says the original and its bcc copy were delivered: a `delivery` event
/// for each, with the queue id of each (the original's from the milter, the copy's from
/// the re-injection listener's reply), read by anymail as "delivered".
fn deliveries_of_an_original_and_its_bcc_copy_come_from_the_mta_log(kind: MtaKind) {
    let anymail = Anymail::start();
    let e = start(kind, &anymail);
    let msg = message(
        "From: News <news@example.com>\nTo: to@example.org\nSubject: Winter sale\nX-MSYS-API: {\"campaign_id\": \"winter\", \"bcc\": [\"hidden@example.org\"]}\n",
        "Hello\n",
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.capture.wait_for_deliveries(2);
    let injected: Vec<_> = ["to@example.org", "hidden@example.org"]
        .iter()
        .map(|r| sparkpost_event(&anymail.wait_for("queued", r, |_| true)).clone())
        .collect();
    for (rcpt, injection) in ["to@example.org", "hidden@example.org"]
        .iter()
        .zip(&injected)
    {
        let delivered = anymail.wait_for("delivered", rcpt, |_| true);
        let raw = sparkpost_event(&delivered);
        assert_eq!(raw["type"], "delivery", "{raw:#}");
        assert_eq!(
            raw["queue_id"], injection["queue_id"],
            "{raw:#} vs {injection:#}"
        );
        assert_eq!(raw["message_id"], injection["message_id"]);
        assert_eq!(raw["ip_address"], "127.0.0.1");
        assert_eq!(raw["num_retries"], "0");
        assert_eq!(raw["campaign_id"], "winter");
        assert!(raw["queue_time"].as_str().unwrap().parse::<u64>().is_ok());
        let log = e.mta.log();
        let qid = raw["queue_id"].as_str().unwrap();
        let sent = match kind {
            MtaKind::Postfix => "status=sent",
            MtaKind::Sendmail => "stat=Sent",
        };
        assert!(
            log.lines().any(|l| l.contains(&format!("{qid}: to="))
                && l.contains(&format!("<{rcpt}>"))
                && l.contains(sent)),
            "{log}"
        );
    }
    assert_eq!(injected[1]["rcpt_type"], "bcc");
    assert_ne!(injected[0]["queue_id"], injected[1]["queue_id"]);
}

/// The `mailto:` form of List-Unsubscribe: the recipient's mail client sends a message
/// to `unsub+<id>@<bounce domain>` with the signed token in the subject; it comes
/// through Postfix to the LMTP listener: `list_unsubscribe`, and no more campaigns.
fn a_mailto_unsubscribe_suppresses_the_recipient(kind: MtaKind) {
    let anymail = Anymail::start();
    let http_port = support::postfix::free_port();
    let e = E2e::start_feedback_under(
        kind,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"e2e-secret-0123456789\"]\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [[webhook]]\nurl = \"http://127.0.0.1:{}/anymail/sparkpost/tracking/\"\nbasic = \"{SECRET}\"\nbatch_wait_ms = 100\n",
            anymail.port
        ),
        &[],
        "",
    );
    let who = "leaver@example.org";
    e.send("app@example.com", &[who], &campaign_message(who))
        .unwrap();
    e.capture.wait_for_deliveries(1);
    let header = e.capture.message_for(who).header("List-Unsubscribe")[0].clone();
    let mailto = header
        .split(", ")
        .find_map(|p| p.strip_prefix("<mailto:"))
        .and_then(|p| p.strip_suffix('>'))
        .unwrap_or_else(|| panic!("{header}"));
    let (address, query) = mailto.split_once('?').unwrap();
    let subject = query.strip_prefix("subject=").unwrap();
    assert!(address.starts_with("unsub+") && address.ends_with("@bounces.example.net"));
    // What a mail client sends for it.
    let request = message(
        &format!("From: {who}\nTo: {address}\nSubject: {subject}\n"),
        "This message was automatically generated by Gmail.\n",
    );
    e.send(who, &[address], &request).unwrap();
    let unsubscribed = anymail.wait_for("unsubscribed", who, |_| true);
    let raw = sparkpost_event(&unsubscribed);
    assert_eq!(raw["type"], "list_unsubscribe", "{raw:#}");
    assert_eq!(raw["campaign_id"], "winter");
    assert_campaign_refused(&e, who);
    // A forged request (no valid token) unsubscribes nobody.
    let forged = message(
        &format!("From: other@example.org\nTo: {address}\nSubject: unsubscribe:forged\n"),
        "x\n",
    );
    e.send("other@example.org", &[address], &forged).unwrap();
    e.send(
        "app@example.com",
        &["other@example.org"],
        &campaign_message("other@example.org"),
    )
    .unwrap();
}
