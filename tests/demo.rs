//! SparkPost's documented X-MSYS-API example (its missing commas fixed), sent through a
//! private Postfix with msys-milter, and what each recipient received. A test of the
//! example like any other; `postfix-example/demo.sh` runs it and shows the output.

mod support;

use support::e2e::E2e;

/// From SparkPost's SMTP API page, with the commas it lacks between list entries.
const SPARKPOST_EXAMPLE: &str = r#"{
  "campaign_id": "my_campaign",
  "metadata" : {
    "has_pets": true,
    "pet_name": "Spot"
  },
  "cc": [
    { "email": "cc_recip_1@gmail.com", "name": "CC 1" },
    { "email": "cc_recip_2@gmail.com", "name": "CC 2" }
  ],
  "bcc": [
    { "email": "bcc_recip_1@gmail.com", "name": "BCC 1" },
    { "email": "bcc_recip_2@gmail.com", "name": "BCC 2" }
  ],
  "archive": [
    { "email": "archive_recip_1@gmail.com", "name": "Archive 1" },
    { "email": "archive_recip_2@gmail.com", "name": "Archive 2" }
  ],
  "tags": [
    "cat",
    "dog"
  ],
  "options" : {
    "open_tracking": false,
    "click_tracking": false,
    "transactional": false,
    "skip_suppression": false,
    "ip_pool": "my_ip_pool",
    "inline_css": false,
    "dkim_key": "marketing"
  }
}"#;

#[test]
fn sparkposts_documented_example_through_postfix() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("marketing.pem");
    std::fs::write(&key, msys_milter::dkim::generate_pem(false).unwrap()).unwrap();
    let e = E2e::start(&format!(
        "[envelope]\nbounce_domain = \"bounces.example.com\"\n\
         [[ip_pool]]\nname = \"my_ip_pool\"\n\
         [[dkim_key]]\nname = \"marketing\"\ndomain = \"example.com\"\nselector = \"demo\"\nprivate_key = \"{}\"\n",
        key.display()
    ));
    // The header folded over several lines, as a client writes a long header.
    let folded = SPARKPOST_EXAMPLE.replace('\n', "\n ");
    let msg = format!(
        "From: Pets <news@example.com>\nTo: Reader <to_recip@gmail.com>\nSubject: Spot's news\nX-MSYS-API: {folded}\n\nHello from Spot.\nThis is the demo message.\n"
    );
    let reply = e
        .send("app@example.com", &["to_recip@gmail.com"], &msg)
        .unwrap();
    println!("\nSMTP reply to the client: {reply}\n");
    let everyone = [
        "to_recip@gmail.com",
        "cc_recip_1@gmail.com",
        "cc_recip_2@gmail.com",
        "bcc_recip_1@gmail.com",
        "bcc_recip_2@gmail.com",
        "archive_recip_1@gmail.com",
        "archive_recip_2@gmail.com",
    ];
    e.wait_for_exactly(everyone.len());
    for rcpt in everyone {
        let got = e.capture.message_for(rcpt);
        println!("=== {rcpt}");
        println!("envelope: MAIL FROM:<{}>", got.mail_from);
        for name in ["From", "To", "Cc", "Bcc", "Subject", "Message-ID"] {
            for value in got.header(name) {
                println!("{name}: {value}");
            }
        }
        for sig in got.header("DKIM-Signature") {
            let tags: Vec<&str> = sig
                .split(';')
                .map(str::trim)
                .filter(|t| t.starts_with("d=") || t.starts_with("s=") || t.starts_with("a="))
                .collect();
            println!("DKIM-Signature: {} ...", tags.join("; "));
        }
        let body = String::from_utf8_lossy(&got.body()).into_owned();
        println!("body: {}\n", body.lines().next().unwrap_or(""));
        // What SparkPost does: the header never reaches anyone; every message names
        // the transmission in its bounce address; cc on every message; each bcc
        // recipient sees only its own Bcc:; signed with the named key.
        assert!(got.header("X-MSYS-API").is_empty());
        assert!(
            got.mail_from.starts_with("bounces+")
                && got.mail_from.ends_with("@bounces.example.com")
        );
        assert_eq!(
            got.header("Cc"),
            ["CC 1 <cc_recip_1@gmail.com>, CC 2 <cc_recip_2@gmail.com>"]
        );
        let bcc = got.header("Bcc");
        if rcpt.starts_with("bcc") {
            assert_eq!(bcc.len(), 1, "{rcpt}");
            assert!(bcc[0].contains(rcpt), "{rcpt}: {bcc:?}");
        } else {
            assert!(bcc.is_empty(), "{rcpt}: {bcc:?}");
        }
        assert_eq!(got.header("DKIM-Signature").len(), 1, "{rcpt}");
    }
}
