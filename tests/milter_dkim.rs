//! DKIM in process (indymilter-test): which key signs (the header's, the From domain's
//! default, none), the signature inserted first over the edited message, Date and
//! Message-ID added when missing so the MTA adds nothing signed after us; and the
//! configuration refusing a weak or unreadable key with its file, line and key.

mod support;

use indymilter_test::{EomAction, Status, TestConnection};
use msys_milter::config::Config;

const RSA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/rsa2048.pem");
const ED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/ed25519.pem");

fn toml() -> String {
    format!(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [[dkim_key]]\nname = \"main\"\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{RSA}\"\n\
         [[dkim_key]]\nname = \"ed\"\ndomain = \"example.com\"\nselector = \"e1\"\nprivate_key = \"{ED}\"\n\
         [[sending_domain]]\nname = \"example.com\"\ndkim_key = \"main\"\n\
         [[sending_domain]]\nname = \"unsigned.example\"\n"
    )
}

async fn send(conn: &mut TestConnection, headers: &[(&str, &str)]) -> (Vec<EomAction>, Status) {
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    for (name, value) in headers {
        conn.header(*name, *value).await.unwrap();
    }
    conn.body(b"Hello\r\n".to_vec()).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status)
}

fn signature(actions: &[EomAction]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        EomAction::InsertHeader {
            index: 0,
            name,
            value,
        } if name.to_bytes() == b"DKIM-Signature" => Some(value.to_str().unwrap().to_owned()),
        _ => None,
    })
}

use support::added_headers as added;

#[tokio::test]
async fn the_key_is_the_headers_else_the_domains_else_none() {
    let addr = support::start_in_process(&toml()).await;
    let from = ("From", "Shop <shop@example.com>");

    let mut conn = support::connect_in_process(addr).await;
    let (actions, status) = send(
        &mut conn,
        &[from, ("To", "to@example.org"), ("Subject", "Hi")],
    )
    .await;
    assert_eq!(status, Status::Continue);
    let sig = signature(&actions).expect("signed with the domain's key");
    assert!(
        sig.contains("d=example.com") && sig.contains("s=s1") && sig.contains("a=rsa-sha256"),
        "{sig}"
    );
    // Oversigned: From, To and Subject once more than they occur; Reply-To (absent) once.
    let h = sig
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .replace(char::is_whitespace, "");
    let names: Vec<String> = h.split(':').map(str::to_ascii_lowercase).collect();
    for (name, times) in [
        ("from", 2),
        ("to", 2),
        ("subject", 2),
        ("reply-to", 1),
        ("date", 1),
        ("message-id", 1),
    ] {
        assert_eq!(
            names.iter().filter(|n| *n == name).count(),
            times,
            "{name} in {h}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n == "bcc" || n == "received" || n.starts_with("x-msys")),
        "{h}"
    );
    // The MTA must not add what we signed: Date and Message-ID are ours.
    assert_eq!(added(&actions, "Date").len(), 1, "{actions:?}");
    assert_eq!(added(&actions, "Message-ID").len(), 1, "{actions:?}");
    // The signature is the last action before the answer, inserted first in the message.
    assert!(
        matches!(
            actions.last(),
            Some(EomAction::InsertHeader { index: 0, .. })
        ),
        "{actions:?}"
    );

    let mut conn = support::connect_in_process(addr).await;
    let (actions, _) = send(
        &mut conn,
        &[
            from,
            ("Date", "Wed, 02 Dec 2026 10:00:00 +0000"),
            ("Message-ID", "<m1@example.com>"),
            ("X-MSYS-API", r#"{"options": {"dkim_key": "ed"}}"#),
        ],
    )
    .await;
    let sig = signature(&actions).expect("signed with the header's key");
    assert!(
        sig.contains("s=e1") && sig.contains("a=ed25519-sha256"),
        "{sig}"
    );
    assert!(added(&actions, "Date").is_empty() && added(&actions, "Message-ID").is_empty());

    let mut conn = support::connect_in_process(addr).await;
    let (actions, status) = send(&mut conn, &[("From", "a@unsigned.example")]).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(
        signature(&actions),
        None,
        "no key for that domain: {actions:?}"
    );
}

#[test]
fn weak_or_unreadable_keys_are_refused_with_file_line_and_key() {
    let weak = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dkim/rsa1024.pem");
    for (path, wanted) in [
        (
            weak,
            "RSA key of 1024 bits is too weak: use 2048 or more (or Ed25519)",
        ),
        ("/nonexistent/key.pem", "cannot read /nonexistent/key.pem"),
        (
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            "holds no PEM private key",
        ),
    ] {
        let text = format!(
            "[[dkim_key]]\nname = \"k\"\ndomain = \"example.com\"\nselector = \"s\"\nprivate_key = \"{path}\"\n"
        );
        let err = Config::parse(&text, std::path::Path::new("/etc/msys-milter.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/msys-milter.toml:5: key `dkim_key.private_key`: ")
                && err.contains(wanted),
            "{err}"
        );
    }
}

/// `msys-milter explain` shows the key, the pool and its transport, and sandbox.
#[test]
fn explain_shows_key_pool_route_and_sandbox() {
    let config = Config::parse(
        &format!(
            "{}[[ip_pool]]\nname = \"pool_a\"\ntransport = \"smtp_pool_a:\"\n",
            toml()
        ),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let message = b"From: shop@example.com\r\nTo: a@example.org\r\nX-MSYS-API: {\"options\": {\"ip_pool\": \"pool_a\", \"sandbox\": true, \"dkim_key\": \"ed\"}}\r\n\r\nHi\r\n";
    let plan = msys_milter::explain::explain(message, None, &[], None, &config).unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["dkim_key"], "ed");
    assert_eq!(json["ip_pool"], "pool_a");
    assert_eq!(json["route"], "smtp_pool_a:");
    assert_eq!(json["sandbox"], true);
    let message = b"From: a@unsigned.example\r\nTo: a@example.org\r\n\r\nHi\r\n";
    let json = serde_json::to_value(
        msys_milter::explain::explain(message, None, &[], None, &config).unwrap(),
    )
    .unwrap();
    assert!(
        json.get("dkim_key").is_none() && json.get("route").is_none(),
        "{json:#}"
    );
}
