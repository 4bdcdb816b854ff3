//! DKIM through the real Postfix, checked by an independent verifier (python3-dkim,
//! the Debian package, with the key's TXT record instead of DNS): the original, a cc
//! recipient's personalised copy, a bcc copy with its own Bcc: and the archive copy,
//! with tracking and List-Unsubscribe on, all verify; one changed byte fails.

mod support;

use support::e2e::E2e;
use support::message;
use support::mta::MtaKind;

const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/rsa2048.pem");

fn verify(data: &[u8], txt: &str) -> bool {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkim/verify.py"))
        .arg(file.path())
        .arg(txt)
        .output()
        .expect("python3-dkim (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("pass") || stdout.starts_with("fail"),
        "verify.py: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

/// mail-auth's own verifier, its TXT lookups answered from a cache (no DNS).
struct TxtCache(std::collections::HashMap<Box<str>, mail_auth::Txt>);

impl mail_auth::ResolverCache<Box<str>, mail_auth::Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }
    fn remove<Q>(&self, _: &Q) -> Option<mail_auth::Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: mail_auth::Txt, _: std::time::Instant) {}
}

fn mail_auth_verifies(data: &[u8], record_name: &str, txt: &str) -> bool {
    use mail_auth::common::parse::TxtRecordParser as _;
    let key = mail_auth::common::verify::DomainKey::parse(txt.as_bytes()).unwrap();
    let cache = TxtCache(
        [(
            Box::<str>::from(record_name),
            mail_auth::Txt::DomainKey(std::sync::Arc::new(key)),
        )]
        .into_iter()
        .collect(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let authenticator = mail_auth::MessageAuthenticator::new_cloudflare().unwrap();
        let message = mail_auth::AuthenticatedMessage::parse(data).unwrap();
        let outputs = authenticator
            .verify_dkim(mail_auth::Parameters::new(&message).with_txt_cache(&cache))
            .await;
        !outputs.is_empty()
            && outputs
                .iter()
                .all(|o| *o.result() == mail_auth::DkimResult::Pass)
    })
}

under_each_mta!(
    every_message_that_leaves_verifies_with_an_independent_verifier,
    the_header_names_the_key_ed25519_verifies_too,
);

fn every_message_that_leaves_verifies_with_an_independent_verifier(kind: MtaKind) {
    let txt = msys_milter::dkim::read_key(std::path::Path::new(KEY))
        .unwrap()
        .txt;
    let http_port = support::postfix::free_port();
    let e = E2e::start_under(
        kind,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [[dkim_key]]\nname = \"main\"\ndomain = \"example.com\"\nselector = \"s2026\"\nprivate_key = \"{KEY}\"\n\
         [[sending_domain]]\nname = \"example.com\"\ndkim_key = \"main\"\n\
         [tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"e2e-secret-0123456789\"]\nopen = true\nclick = true\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    );
    let api = r#"{"campaign_id": "signed", "cc": ["cc@example.org"], "bcc": ["bcc@example.org"], "archive": ["archive@example.org"]}"#;
    let msg = message(
        &format!(
            "From: Shop <shop@example.com>\nTo: to@example.org\nSubject: =?utf-8?q?Caf=C3=A9?= sale\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\nX-MSYS-API: {api}\n"
        ),
        "<html><body><p>Hi</p><a href=\"https://shop.example.com/offer\">Offer</a></body></html>\n",
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(4);
    for rcpt in [
        "to@example.org",
        "cc@example.org",
        "bcc@example.org",
        "archive@example.org",
    ] {
        let got = e.capture.message_for(rcpt);
        let text = got.text();
        assert!(
            text.starts_with("DKIM-Signature:") || text.contains("\r\nDKIM-Signature:"),
            "{rcpt}: {text}"
        );
        let sig = got.header("DKIM-Signature").join(" ");
        assert!(
            sig.contains("d=example.com") && sig.contains("s=s2026"),
            "{sig}"
        );
        assert!(sig.contains("c=relaxed/relaxed"), "{sig}");
        for signed in [
            "From",
            "To",
            "Subject",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Date",
            "Message-ID",
        ] {
            assert!(
                sig.to_ascii_lowercase()
                    .contains(&signed.to_ascii_lowercase()),
                "{rcpt}: {signed} in h=: {sig}"
            );
        }
        // Bcc is never among the signed headers (the h= tag: the signature's base64 may
        // hold the letters "bcc" by chance).
        let signed_headers: String = sig
            .split(';')
            .find_map(|tag| tag.trim().strip_prefix("h="))
            .unwrap_or_default()
            .split(|c: char| c == ':' || c.is_whitespace())
            .filter(|h| !h.is_empty())
            .map(|h| format!("{}:", h.to_ascii_lowercase()))
            .collect();
        assert!(!signed_headers.contains("bcc:"), "{sig}");
        assert!(got.text().contains("/o/"), "{rcpt}: tracked");
        assert!(verify(&got.data, &txt), "{rcpt} does not verify:\n{text}");
        assert!(
            mail_auth_verifies(&got.data, "s2026._domainkey.example.com.", &txt),
            "{rcpt}: mail-auth's verifier disagrees"
        );
        // One byte changed in the body: the signature no longer holds.
        let mut tampered = got.data.clone();
        let at = tampered.windows(2).position(|w| w == b"Hi").unwrap();
        tampered[at] = b'h';
        assert!(
            !verify(&tampered, &txt),
            "{rcpt}: tampered body still verifies"
        );
    }
    // Sendmail deletes Bcc: on delivery (README, Sendmail).
    let bcc = match kind {
        MtaKind::Postfix => vec!["bcc@example.org".to_owned()],
        MtaKind::Sendmail => Vec::new(),
    };
    assert_eq!(e.capture.message_for("bcc@example.org").header("Bcc"), bcc);
}

/// `options.dkim_key` picks a key over the domain's default: Ed25519 (RFC 8463) here.
fn the_header_names_the_key_ed25519_verifies_too(kind: MtaKind) {
    const ED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/ed25519.pem");
    let txt = msys_milter::dkim::read_key(std::path::Path::new(ED))
        .unwrap()
        .txt;
    assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
    let e = E2e::start_under(
        kind,
        &format!(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [[dkim_key]]\nname = \"main\"\ndomain = \"example.com\"\nselector = \"s2026\"\nprivate_key = \"{KEY}\"\n\
         [[dkim_key]]\nname = \"ed\"\ndomain = \"mail.example.com\"\nselector = \"ed2026\"\nprivate_key = \"{ED}\"\n\
         [[sending_domain]]\nname = \"example.com\"\ndkim_key = \"main\"\n"
        ),
    );
    let msg = message(
        "From: Shop <shop@example.com>\nTo: to@example.org\nSubject: Hi\nX-MSYS-API: {\"options\": {\"dkim_key\": \"ed\"}}\n",
        "Hello\n",
    );
    e.send("app@example.com", &["to@example.org"], &msg)
        .unwrap();
    e.wait_for_exactly(1);
    let got = e.capture.message_for("to@example.org");
    let sig = got.header("DKIM-Signature").join(" ");
    assert!(
        sig.contains("a=ed25519-sha256") && sig.contains("d=mail.example.com"),
        "{sig}"
    );
    assert!(verify(&got.data, &txt), "{}", got.text());
}
