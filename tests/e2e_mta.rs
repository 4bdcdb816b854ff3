//! End to end through a real MTA: a real SMTP client submits to a private Postfix
//! (postfix-example/main.cf and master.cf) or a private Sendmail 8.17
//! (packaging/sendmail/msys-milter.mc) that calls the real msys-milter binary and relays
//! to a capture server. The scenarios every admin relies on run under both MTAs; the
//! ones about Postfix's own listeners and commands run under Postfix. Run inside a
//! loopback-only network namespace (`bash scripts/test.sh`).

mod support;

use support::capture::Capture;
use support::e2e::{E2e, http_get};
use support::mta::{Mta, MtaKind};
use support::postfix::free_port;
use support::{Milter, message, send};

under_each_mta!(
    relays_without_milter,
    plain_message_gets_a_bounce_address_and_no_header,
    header_rejections_reach_the_client_exactly,
    cc_and_archive_with_names_and_dedupe,
    a_sending_domains_bounce_domain_is_used_and_other_domains_refused,
    rfc2047_encoded_header_value_works,
    a_stopped_milter_tempfails_and_nothing_is_lost,
    bcc_copies_each_get_their_own_bcc,
    tracked_links_are_personal_except_the_archive_copy,
    transactional_mail_gets_no_list_unsubscribe,
    an_amp_part_outside_multipart_alternative_is_refused,
);

const BOUNCES: &str = "[envelope]\nbounce_domain = \"bounces.example.net\"\n";

/// The transmission id in a bounce address: `bounces+TID@domain`, or a copy's own
/// `bounces+TID-tag@domain` (eight hex digits of its recipient).
fn assert_bounce_address(mail_from: &str, domain: &str) -> String {
    let local = mail_from
        .strip_prefix("bounces+")
        .and_then(|m| m.strip_suffix(&format!("@{domain}")))
        .unwrap_or_else(|| panic!("MAIL FROM {mail_from} is not a bounce address at {domain}"));
    let id = match local.split_once('-') {
        Some((id, tag)) => {
            assert!(
                tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
                "{mail_from}"
            );
            id
        }
        None => local,
    };
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "{mail_from}"
    );
    id.to_owned()
}

fn relays_without_milter(kind: MtaKind) {
    let capture = Capture::start();
    let mta = Mta::start(kind, None, capture.port);
    send(
        mta.smtp_port(),
        "app@example.com",
        &["to@example.org"],
        &message("", "hello\n"),
    )
    .unwrap();
    let got = capture.wait_for_deliveries(1);
    assert_eq!(got[0].mail_from, "app@example.com");
}

fn plain_message_gets_a_bounce_address_and_no_header(kind: MtaKind) {
    let e = E2e::start_under(kind, BOUNCES);
    let msg = message("X-MSYS-API: {\"campaign_id\": \"welcome\"}\n", "hello\n");
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.capture.wait_for_deliveries(1);
    let got = e.capture.message_for("to@example.org");
    assert_bounce_address(&got.mail_from, "bounces.example.net");
    assert!(got.header("X-MSYS-API").is_empty(), "{}", got.text());
    assert_eq!(got.header("Subject"), ["e2e"]);
    // The MTA adds Message-Id and Date when missing.
    assert_eq!(got.header("Message-Id").len(), 1);
    let log = e.milter.log();
    assert!(log.contains("accepted"), "{log}");
    // Configured as README says: the milter has nothing to warn about.
    let version = match kind {
        MtaKind::Postfix => "mta_version=\"Postfix",
        MtaKind::Sendmail => "mta_version=\"8.17",
    };
    assert!(
        log.contains(version) && !log.contains("loop_marker"),
        "{log}"
    );
}

/// A Sendmail admin who keeps the loop marker on, or gives a pool a transport, is told
/// once to take it out.
#[test]
fn a_sendmail_admin_is_told_once_what_sendmail_cannot_do() {
    let capture = Capture::start();
    let milter_port = free_port();
    let mta = Mta::start(MtaKind::Sendmail, Some(milter_port), capture.port);
    let milter = Milter::start_on(
        milter_port,
        &format!(
            "{BOUNCES}[[ip_pool]]\nname = \"pool_a\"\ntransport = \"smtp_pool_a:\"\n\
             [[ip_pool]]\nname = \"pool_b\"\n[reinject]\nsmtp = \"127.0.0.1:{}\"\n",
            mta.reinject_port()
        ),
    );
    let e = E2e {
        capture,
        mta,
        milter,
    };
    for _ in 0..2 {
        e.send("app@example.com", &["to@example.org"], &message("", "x\n"))
            .unwrap();
    }
    e.capture.wait_for_deliveries(2);
    let log = e.milter.log();
    assert_eq!(
        log.matches("set `loop_marker = false` in [reinject]")
            .count(),
        1,
        "{log}"
    );
    let pool_warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remove `transport` from this [[ip_pool]]"))
        .collect();
    assert_eq!(pool_warnings.len(), 1, "{log}");
    assert!(pool_warnings[0].contains("pool_a"), "{log}");
}

fn header_rejections_reach_the_client_exactly(kind: MtaKind) {
    let e = E2e::start_under(kind, BOUNCES);
    let cases = [
        (
            "X-MSYS-API: {\"campaign_id\": \"x\",}\n",
            "5.6.0 JSON parsing error in X-MSYS-API",
        ),
        (
            "X-MSYS-API: {\"metadata\": []}\n",
            "5.6.0 X-MSYS-API 'metadata' must be of type 'json object'",
        ),
        (
            "X-MSYS-API: {\"cc\": [\"ok@example.com\",\n  \"not an address\"]}\n",
            "5.6.0 X-MSYS-API 'cc' entry 2 is not a valid recipient",
        ),
        (
            "X-MSYS-API: {}\nX-MSYS-API: {}\n",
            "5.6.0 X-MSYS-API header may appear only once",
        ),
    ];
    for (header, expected) in cases {
        let err = e
            .send(
                "app@example.com",
                &["to@example.org"],
                &message(header, "x\n"),
            )
            .unwrap_err();
        assert!(
            err.contains("550") && err.contains(expected),
            "{header}: {err}"
        );
    }
    e.assert_nothing_delivered();
}

fn cc_and_archive_with_names_and_dedupe(kind: MtaKind) {
    let e = E2e::start_under(kind, BOUNCES);
    let api = "X-MSYS-API: {\"cc\": [{\"email\": \"cc1@example.com\", \"name\": \"CC 1\"},\n \
               {\"email\": \"cc2@example.com\", \"name\": \"Zoë Ünal\"}, \"TO@example.org\"],\n \
               \"archive\": [{\"email\": \"arch@example.com\", \"name\": \"Archive\"}, \"Cc1@Example.com\"]}\n";
    // Three Cc: headers: the first is changed, the others deleted (highest index first,
    // as Sendmail only marks a deleted header and Postfix renumbers).
    let msg = message(
        &format!(
            "Cc: old@example.com\nCc: old2@example.com\nX-Other: 1\nCc: old3@example.com\n{api}"
        ),
        "hello\n",
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(4);
    for rcpt in [
        "to@example.org",
        "cc1@example.com",
        "cc2@example.com",
        "arch@example.com",
    ] {
        let got = e.capture.message_for(rcpt);
        let cc = got.header("Cc");
        assert_eq!(cc.len(), 1, "{}", got.text());
        assert!(cc[0].contains("CC 1 <cc1@example.com>"), "{}", cc[0]);
        assert!(
            cc[0].contains("=?utf-8?b?"),
            "non-ASCII name encoded: {}",
            cc[0]
        );
        assert!(
            cc[0].contains("<cc2@example.com>") && cc[0].contains("TO@example.org"),
            "{}",
            cc[0]
        );
        assert!(!cc[0].contains("old"), "{}", cc[0]);
        assert!(got.header("X-MSYS-API").is_empty());
        assert!(got.header("Bcc").is_empty());
        assert_bounce_address(&got.mail_from, "bounces.example.net");
    }
}

fn a_sending_domains_bounce_domain_is_used_and_other_domains_refused(kind: MtaKind) {
    // The example configuration of postfix-example/, as an admin would start from it.
    let capture = Capture::start();
    let milter_port = free_port();
    let mta = Mta::start(kind, Some(milter_port), capture.port);
    let milter = Milter::start_with_file(milter_port, &support::example_path("msys-milter.toml"));
    let e = E2e {
        capture,
        mta,
        milter,
    };
    e.send("app@example.com", &["to@example.org"], &message("", "x\n"))
        .unwrap();
    e.capture.wait_for_deliveries(1);
    assert_bounce_address(
        &e.capture.message_for("to@example.org").mail_from,
        "bounce.example.com",
    );

    let other = "From: Other <someone@other.org>\nTo: to2@example.org\nSubject: x\n\nx\n";
    let err = e
        .send("someone@other.org", &["to2@example.org"], other)
        .unwrap_err();
    assert!(
        err.contains("550") && err.contains("5.7.1 Unconfigured Sending Domain <other.org>"),
        "{err}"
    );
}

fn rfc2047_encoded_header_value_works(kind: MtaKind) {
    let e = E2e::start_under(kind, BOUNCES);
    // {"cc":["cc@example.com"]} in UTF-8 base64.
    let msg = message(
        "X-MSYS-API: =?UTF-8?B?eyJjYyI6WyJjY0BleGFtcGxlLmNvbSJdfQ==?=\n",
        "x\n",
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.capture.wait_for_deliveries(2);
    assert_eq!(
        e.capture.message_for("cc@example.com").header("Cc"),
        ["cc@example.com"]
    );
}

fn a_stopped_milter_tempfails_and_nothing_is_lost(kind: MtaKind) {
    let mut e = E2e::start_under(kind, BOUNCES);
    e.milter.stop();
    let err = e
        .send("app@example.com", &["to@example.org"], &message("", "x\n"))
        .unwrap_err();
    assert!(
        err.contains("451") || err.contains("transient"),
        "a 4xx reply: {err}"
    );
    e.assert_nothing_delivered();
    e.milter.restart();
    e.send("app@example.com", &["to@example.org"], &message("", "x\n"))
        .unwrap();
    e.capture.wait_for_deliveries(1);
}

const BCC_API: &str = "X-MSYS-API: {\"cc\": [\"cc1@example.com\", {\"email\": \"cc2@example.com\", \"name\": \"CC Two\"}],\n \
    \"bcc\": [\"bcc1@example.com\", {\"email\": \"bcc2@example.com\", \"name\": \"Bé Two\"}, \"CC1@example.com\"],\n \
    \"archive\": [\"arch@example.com\"]}\n";

/// Who gets a message with BCC_API: the To: recipient, 2 cc, 2 bcc (one is already a
/// cc), the archive.
const BCC_API_RCPTS: [&str; 6] = [
    "to@example.org",
    "cc1@example.com",
    "cc2@example.com",
    "bcc1@example.com",
    "bcc2@example.com",
    "arch@example.com",
];

/// A body that exercises dot-stuffing and 8-bit transport.
const BODY: &str = "Hello.\n.leading dot\n..two dots\n.\nGrüße, 8-bit UTF-8 ✓\n";

/// Every bcc recipient gets a copy of its own whose `Bcc:` names only it. Sendmail
/// deletes `Bcc:` headers on delivery whenever To: or Cc: exist (headers.c, no option
/// keeps them): under Sendmail the copy is still personal, and its `Bcc:` is checked in
/// what the milter handed over (Sendmail's `-X` traffic log).
fn bcc_copies_each_get_their_own_bcc(kind: MtaKind) {
    let e = E2e::start_under(kind, BOUNCES);
    let msg = message(
        &format!(
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n{BCC_API}"
        ),
        BODY,
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(6);
    let primary = e.capture.message_for("to@example.org");
    let tid = assert_bounce_address(&primary.mail_from, "bounces.example.net");
    let message_id = primary.header("Message-Id");
    for rcpt in BCC_API_RCPTS {
        let got = e.capture.message_for(rcpt);
        assert_eq!(got.header("To"), ["Someone <to@example.org>"], "{rcpt}");
        // Exactly one space after the colon: the MTA adds it to a milter's header value
        // unless the value's leading space is negotiated (SMFIP_HDR_LEADSPC).
        assert!(
            got.text()
                .contains("\r\nCc: cc1@example.com, CC Two <cc2@example.com>\r\n"),
            "{rcpt}: {}",
            got.text()
        );
        assert!(
            got.header("X-MSYS-API").is_empty() && got.header("X-MSYS-Reinjected").is_empty(),
            "{rcpt}: {}",
            got.text()
        );
        // Every copy has the same transmission id in its bounce address, and one Message-ID.
        assert_eq!(
            assert_bounce_address(&got.mail_from, "bounces.example.net"),
            tid,
            "{rcpt}"
        );
        assert_eq!(got.header("Message-Id"), message_id, "{rcpt}");
        assert_eq!(
            String::from_utf8(got.body()).unwrap(),
            BODY.replace('\n', "\r\n"),
            "{rcpt}"
        );
        let bcc = got.header("Bcc");
        match (kind, rcpt) {
            (MtaKind::Postfix, "bcc1@example.com") => assert_eq!(bcc, ["bcc1@example.com"]),
            (MtaKind::Postfix, "bcc2@example.com") => {
                assert_eq!(bcc, ["=?utf-8?b?QsOpIFR3bw==?= <bcc2@example.com>"])
            }
            _ => assert!(bcc.is_empty(), "{rcpt} must not see a Bcc: {bcc:?}"),
        }
    }
    if kind == MtaKind::Sendmail {
        // What the milter handed to the re-injection port: each copy with its own Bcc:.
        let traffic = e.mta.sendmail().traffic();
        for (rcpt, bcc) in [
            ("bcc1@example.com", "Bcc: bcc1@example.com"),
            (
                "bcc2@example.com",
                "Bcc: =?utf-8?b?QsOpIFR3bw==?= <bcc2@example.com>",
            ),
        ] {
            let session = sendmail_session_for(&traffic, rcpt);
            assert!(session.contains(&format!("<<< {bcc}\n")), "{session}");
            assert_eq!(session.matches("<<< Bcc:").count(), 1, "{session}");
        }
    }
}

/// The lines of the SMTP session in Sendmail's traffic log (`-X`, each line prefixed
/// with its process id) that delivered to `rcpt`.
fn sendmail_session_for(traffic: &str, rcpt: &str) -> String {
    let rcpt_line = format!("<<< RCPT TO:<{rcpt}>");
    let pid = traffic
        .lines()
        .find(|l| l.ends_with(&rcpt_line))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no session for {rcpt} in:\n{traffic}"));
    traffic
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(pid))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn copies_that_cannot_be_handed_over_tempfail_the_message_until_the_listener_is_back() {
    let e = E2e::start(BOUNCES);
    let listener = format!("127.0.0.1:{} inet", e.postfix().reinject_port);
    let disabled = format!("#{listener}");
    e.postfix()
        .edit_master_cf(|m| m.replace(&listener, &disabled));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let msg = message(BCC_API, BODY);
    let err = e
        .send("app@example.com", &["to@example.org"], &msg)
        .unwrap_err();
    assert!(
        err.contains("451") && err.contains("4.3.0 personalised copies could not be handed over"),
        "{err}"
    );
    e.assert_nothing_delivered();

    e.postfix()
        .edit_master_cf(|m| m.replace(&disabled, &listener));
    e.postfix().wait_for_port(e.postfix().reinject_port);
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.capture.wait_for_deliveries(6);
    for rcpt in BCC_API_RCPTS {
        e.capture.message_for(rcpt);
    }
}

#[test]
fn a_copy_forced_back_through_the_milter_passes_once_unchanged() {
    let e = E2e::start(BOUNCES);
    // Misconfigure the re-injection listener: it runs the milter too.
    e.postfix().edit_master_cf(|m| {
        m.replace("  -o smtpd_milters=\n", "")
            .replace("  -o receive_override_options=no_milters\n", "")
    });
    let msg = message("X-MSYS-API: {\"bcc\": [\"bcc1@example.com\"]}\n", BODY);
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(2);
    let copy = e.capture.message_for("bcc1@example.com");
    assert_eq!(copy.header("Bcc"), ["bcc1@example.com"]);
    assert!(
        copy.header("X-MSYS-Reinjected").is_empty(),
        "the milter strips its marker"
    );
    assert!(
        e.milter.log().contains("returning copy passed"),
        "{}",
        e.milter.log()
    );
}

#[test]
fn copies_through_sendmail_keep_their_bcc_and_pass_the_milter_once() {
    let e = E2e::start_with_sendmail(BOUNCES);
    let msg = message(
        &format!("Content-Type: text/plain; charset=utf-8\n{BCC_API}"),
        BODY,
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(6);
    let tid = assert_bounce_address(
        &e.capture.message_for("to@example.org").mail_from,
        "bounces.example.net",
    );
    for (rcpt, bcc) in [
        ("bcc1@example.com", "bcc1@example.com"),
        (
            "bcc2@example.com",
            "=?utf-8?b?QsOpIFR3bw==?= <bcc2@example.com>",
        ),
    ] {
        let copy = e.capture.message_for(rcpt);
        assert_eq!(copy.header("Bcc"), [bcc]);
        assert_eq!(
            assert_bounce_address(&copy.mail_from, "bounces.example.net"),
            tid
        );
        assert_eq!(
            String::from_utf8(copy.body()).unwrap(),
            BODY.replace('\n', "\r\n")
        );
    }
    // The copies came back through non_smtpd_milters and were passed unchanged.
    assert_eq!(
        e.milter.log().matches("returning copy passed").count(),
        2,
        "{}",
        e.milter.log()
    );
}

/// Copies whose hand-over takes longer than Postfix's `milter_content_timeout`: the
/// milter's progress replies keep Postfix waiting, and the message is accepted, not
/// tempfailed (without them Postfix gives up after 3 s here).
#[test]
fn a_hand_over_longer_than_postfixs_milter_timeout_is_kept_alive() {
    // Each copy takes 2 s to hand over, one at a time: 4 s for the two bcc copies.
    let dir = tempfile::tempdir().unwrap();
    let slow = support::script(
        dir.path(),
        "sendmail",
        "#!/bin/sh\nsleep 2\nexec /usr/sbin/sendmail \"$@\"\n",
    );
    let e = E2e::start_with_sendmail_at(
        BOUNCES,
        &slow.display().to_string(),
        "concurrency = 1\nprogress_seconds = 1\n",
        "milter_content_timeout = 3s\n",
    );
    let msg = message(
        &format!("Content-Type: text/plain; charset=utf-8\n{BCC_API}"),
        BODY,
    );
    let started = std::time::Instant::now();
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap_or_else(|err| panic!("{err}\n{}", e.postfix().log()));
    assert!(
        started.elapsed() > std::time::Duration::from_secs(3),
        "the hand-over outlasted the timeout"
    );
    e.wait_for_exactly(BCC_API_RCPTS.len());
    assert!(
        !e.postfix().log().contains("timed out"),
        "{}",
        e.postfix().log()
    );
}

#[test]
fn smtputf8_bcc_addresses_are_passed_on() {
    let e = E2e::start(BOUNCES);
    let msg = message("X-MSYS-API: {\"bcc\": [\"jöran@example.com\"]}\n", "x\n");
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(2);
    let copy = e.capture.message_for("jöran@example.com");
    assert_eq!(copy.header("Bcc"), ["jöran@example.com"]);
    assert!(
        copy.mail_params.to_ascii_uppercase().contains("SMTPUTF8"),
        "{}",
        copy.mail_params
    );
}

fn tracked_links_are_personal_except_the_archive_copy(kind: MtaKind) {
    let http_port = free_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let e = E2e::start_under(
        kind,
        &format!(
            "{BOUNCES}[tracking]\nbase_url = \"{base}\"\nsecrets = [\"e2e-secret-0123456789\"]\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    );
    let api = "X-MSYS-API: {\"cc\": [\"cc@example.com\"], \"bcc\": [\"bcc@example.com\"], \"archive\": [\"arch@example.com\"],\n \"options\": {\"open_tracking\": true, \"click_tracking\": true}}\n";
    let html = "<html><body><p>Hi</p><a href=\"https://shop.example.com/offer?id=7&amp;c=mail\">Offer</a></body></html>";
    let msg = message(
        &format!("MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"alt\"\n{api}"),
        &format!(
            "--alt\nContent-Type: text/plain\n\nHi https://shop.example.com/offer?id=7\n--alt\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n{}\n--alt--\n",
            html.replace('=', "=3D")
        ),
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(4);
    let html_of = |rcpt: &str| {
        let got = e.capture.message_for(rcpt);
        let parsed = mail_parser::MessageParser::default()
            .parse(&got.data)
            .unwrap();
        (parsed.body_html(0).unwrap().into_owned(), got)
    };
    let link_of = |html: &str| {
        let start = html.find(&format!("{base}/c/")).expect("a tracked link");
        html[start..].split('"').next().unwrap().to_owned()
    };
    let (primary_html, primary) = html_of("to@example.org");
    let (archive_html, archive) = html_of("arch@example.com");
    assert_eq!(
        primary.body(),
        archive.body(),
        "the archive copy is the primary's, byte for byte"
    );
    assert_eq!(primary_html, archive_html);
    let mut links = vec![link_of(&primary_html)];
    let mut unsubscribes = vec![primary.header("List-Unsubscribe")];
    for rcpt in ["cc@example.com", "bcc@example.com"] {
        let (html, got) = html_of(rcpt);
        assert!(
            html.contains(&format!("{base}/o/")),
            "open pixel in {rcpt}'s copy"
        );
        links.push(link_of(&html));
        unsubscribes.push(got.header("List-Unsubscribe"));
        assert_eq!(
            got.header("List-Unsubscribe-Post"),
            ["List-Unsubscribe=One-Click"]
        );
        // The text part is left alone.
        assert!(
            got.text()
                .contains("Hi https://shop.example.com/offer?id=7")
        );
    }
    links.sort();
    links.dedup();
    assert_eq!(
        links.len(),
        3,
        "every recipient has its own link: {links:?}"
    );
    assert!(unsubscribes.iter().all(|u| u.len() == 1
        && u[0].starts_with("<mailto:unsub+")
        && u[0].contains(&format!(">, <{base}/u/"))));
    unsubscribes.dedup();
    assert_eq!(unsubscribes.len(), 3);
    // Following a delivered link lands on the original URL.
    for link in &links {
        let path = link.strip_prefix(&base).unwrap();
        assert_eq!(
            http_get(http_port, path),
            (
                302,
                Some("https://shop.example.com/offer?id=7&c=mail".to_owned())
            )
        );
    }
    assert_eq!(http_get(http_port, "/c/not-a-token").0, 404);
}

fn transactional_mail_gets_no_list_unsubscribe(kind: MtaKind) {
    let http_port = free_port();
    let e = E2e::start_under(
        kind,
        &format!(
            "{BOUNCES}[tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"e2e-secret-0123456789\"]\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    );
    e.send(
        "app@example.com",
        &["a@example.org"],
        &message(
            "X-MSYS-API: {\"options\": {\"transactional\": true}}\n",
            "x\n",
        ),
    )
    .unwrap();
    e.send("app@example.com", &["b@example.org"], &message("", "x\n"))
        .unwrap();
    e.wait_for_exactly(2);
    assert!(
        e.capture
            .message_for("a@example.org")
            .header("List-Unsubscribe")
            .is_empty()
    );
    assert_eq!(
        e.capture
            .message_for("b@example.org")
            .header("List-Unsubscribe")
            .len(),
        1
    );
}

fn an_amp_part_outside_multipart_alternative_is_refused(kind: MtaKind) {
    let e = E2e::start_under(kind, BOUNCES);
    let msg = message(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"m\"\n",
        "--m\nContent-Type: text/x-amp-html\n\n<html amp4email></html>\n--m--\n",
    );
    let err = e
        .send("app@example.com", &["to@example.org"], &msg)
        .unwrap_err();
    assert!(
        err.contains("550")
            && err.contains("5.6.0 text/x-amp-html must be inside multipart/alternative"),
        "{err}"
    );
}

/// A main.cf parameter the test sets again replaces the earlier entry, continuation
/// lines included: Postfix warns of every duplicate, and those warnings once filled
/// postlogd's socket until it waited on itself for ever.
#[test]
fn a_test_s_main_cf_lines_replace_the_earlier_entries() {
    let base = "a = 1\nmilter_content_timeout = 300s\nlist = x,\n    y\n# c = 3\nb = 2\n";
    let merged = support::postfix::with_overrides(base, "milter_content_timeout = 3s\nlist = z\n");
    assert_eq!(
        merged,
        "a = 1\n# c = 3\nb = 2\nmilter_content_timeout = 3s\nlist = z\n"
    );
    assert_eq!(support::postfix::with_overrides(base, ""), base);
}
