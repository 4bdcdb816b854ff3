//! The milter driven over a real socket by indymilter-test, as an MTA would: negotiation,
//! the exact end-of-message actions, and the exact replies.

mod support;

use indymilter_test::{Actions, EomAction, MacroStage, ProtoOpts, Status, TestConnection};
use msys_milter::config::{Config, SocketSpec};
use msys_milter::milter::BoundSocket;
use std::ffi::CString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

struct Milter {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Milter {
    async fn start(toml: &str) -> Milter {
        let mut config = Config::parse(toml, Path::new("test.toml")).unwrap();
        config.socket = SocketSpec::Inet("127.0.0.1:0".into());
        if config.store.path.is_none() {
            config.store.path = Some(tempfile::tempdir().unwrap().keep().join("store.db"));
        }
        let socket = BoundSocket::bind(&config.socket).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (listener, _guard) = socket.into_parts();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(msys_milter::run(listener, config, stopped));
        Milter {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> TestConnection {
        self.connect_offering(Actions::all()).await.unwrap()
    }

    async fn connect_offering(
        &self,
        actions: Actions,
    ) -> indymilter_test::TestResult<TestConnection> {
        TestConnection::configure()
            .read_timeout(Duration::from_secs(10))
            .write_timeout(Duration::from_secs(10))
            .available_actions(actions)
            .open_tcp(self.addr)
            .await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// One message as an MTA hands it over.
struct Message<'a> {
    from: &'a str,
    rcpts: &'a [&'a str],
    headers: &'a [(&'a str, &'a str)],
    auth: Option<&'a str>,
}

impl Default for Message<'_> {
    fn default() -> Self {
        Message {
            from: "<app@example.com>",
            rcpts: &["<to@example.org>"],
            headers: &[("From", "App <app@example.com>"), ("To", "to@example.org")],
            auth: None,
        }
    }
}

async fn send(conn: &mut TestConnection, msg: &Message<'_>) -> (Vec<EomAction>, Status) {
    if let Some(auth) = msg.auth {
        conn.macros(MacroStage::Mail, [("{auth_authen}", auth)])
            .await
            .unwrap();
    }
    conn.mail([msg.from]).await.unwrap();
    for (i, rcpt) in msg.rcpts.iter().enumerate() {
        if i == 0 {
            conn.macros(MacroStage::Rcpt, [("i", "4QUEUEID")])
                .await
                .unwrap();
        }
        conn.rcpt([*rcpt]).await.unwrap();
    }
    for (name, value) in msg.headers {
        conn.header(*name, *value).await.unwrap();
    }
    conn.macros(MacroStage::Eom, [("i", "4QUEUEID")])
        .await
        .unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status)
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The text of a reject with a custom reply.
fn reject_text(status: Status) -> String {
    match status {
        Status::Reject {
            message: Some(text),
        } => text.into_string().unwrap(),
        other => panic!("not a reject with a reply: {other:?}"),
    }
}

fn reject(text: &str) -> Status {
    Status::Reject {
        message: Some(CString::new(text).unwrap()),
    }
}

fn tempfail(text: &str) -> Status {
    Status::Tempfail {
        message: Some(CString::new(text).unwrap()),
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

const BOUNCES: &str = "[envelope]\nbounce_domain = \"bounces.example.net\"\n";

fn sender_changed_to_bounce(actions: &[EomAction], domain: &str) -> bool {
    actions.iter().any(|a| match a {
        EomAction::ChangeSender { mail, args: None } => {
            let mail = mail.to_str().unwrap();
            let id = mail
                .strip_prefix("<bounces+")
                .and_then(|m| m.strip_suffix(&format!("@{domain}>")));
            id.is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        }
        _ => false,
    })
}

#[tokio::test]
async fn negotiates_lean_stages_and_every_macro_it_needs() {
    let milter = Milter::start("").await;
    let conn = milter.connect().await;
    assert_eq!(
        conn.negotiated_actions(),
        Actions::ADD_HEADER
            | Actions::CHANGE_HEADER
            | Actions::ADD_RCPT
            | Actions::DELETE_RCPT
            | Actions::CHANGE_SENDER
            | Actions::REPLACE_BODY
            | Actions::QUARANTINE
    );
    let opts = conn.negotiated_opts();
    for skipped in [
        ProtoOpts::NO_CONNECT,
        ProtoOpts::NO_HELO,
        ProtoOpts::NO_DATA,
        ProtoOpts::NO_EOH,
    ] {
        assert!(opts.contains(skipped), "{skipped:?} not negotiated");
    }
    assert!(
        opts.contains(
            ProtoOpts::NOREPLY_MAIL | ProtoOpts::NOREPLY_RCPT | ProtoOpts::NOREPLY_HEADER
        )
    );
    let macros = conn.requested_macros();
    let at = |stage| {
        macros
            .get(&stage)
            .map(|m| m.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(
        at(MacroStage::Mail)
            .split(' ')
            .any(|m| m == "{auth_authen}")
    );
    assert!(at(MacroStage::Rcpt).split(' ').any(|m| m == "i"));
    assert!(at(MacroStage::Eom).split(' ').any(|m| m == "i"));
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn an_mta_without_the_needed_actions_is_refused() {
    let milter = Milter::start("").await;
    let result = milter
        .connect_offering(Actions::ADD_HEADER | Actions::CHANGE_HEADER)
        .await;
    assert!(
        result.is_err(),
        "negotiation must fail so the MTA applies its default action"
    );
    milter.stop().await;
}

#[tokio::test]
async fn plain_message_gets_only_the_bounce_address() {
    let milter = Milter::start(BOUNCES).await;
    let mut conn = milter.connect().await;
    let (actions, status) = send(&mut conn, &Message::default()).await;
    assert_eq!(status, Status::Continue);
    // The bounce address, and the signed feedback header that goes with it.
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(
        matches!(&actions[0], EomAction::AddHeader { name, .. } if name.to_bytes() == b"X-MSFBL"),
        "{actions:?}"
    );
    assert!(
        sender_changed_to_bounce(&actions, "bounces.example.net"),
        "{actions:?}"
    );
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn rejections_have_the_exact_replies() {
    let milter = Milter::start(&format!(
        "[[sending_domain]]\nname = \"example.com\"\n[reinject]\nsmtp = \"127.0.0.1:{}\"\n",
        closed_port()
    ))
    .await;
    let mut conn = milter.connect().await;
    let cases: &[(&[(&str, &str)], Status)] = &[
        (
            &[
                ("From", "a@example.com"),
                ("X-MSYS-API", "{\"metadata\": []}"),
            ],
            reject("550 5.6.0 X-MSYS-API 'metadata' must be of type 'json object'"),
        ),
        (
            &[
                ("From", "a@example.com"),
                ("x-msys-api", "{}"),
                ("X-MSYS-API", "{}"),
            ],
            reject("550 5.6.0 X-MSYS-API header may appear only once"),
        ),
        (
            &[
                ("From", "a@example.com"),
                (
                    "X-MSYS-API",
                    "{\"campaign_id\": \"0123456789012345678901234567890123456789012345678901234567890123456789\"}",
                ),
            ],
            reject("550 5.6.0 smtpapi_campaign_id context is limited to 64 bytes"),
        ),
        (
            &[
                ("From", "a@example.com"),
                ("X-MSYS-API", "{\"bcc\": [\"b@example.org\"]}"),
            ],
            // Nothing listens where copies go: the whole message is tempfailed.
            tempfail("451 4.3.0 personalised copies could not be handed over, try again later"),
        ),
        (
            &[("From", "Someone <a@other.org>")],
            reject("550 5.7.1 Unconfigured Sending Domain <other.org>"),
        ),
    ];
    for (headers, expected) in cases {
        let msg = Message {
            headers,
            ..Message::default()
        };
        let (actions, status) = send(&mut conn, &msg).await;
        assert_eq!(&status, expected, "{headers:?}");
        assert!(
            actions.is_empty(),
            "a refused message gets no actions: {actions:?}"
        );
    }
    // The JSON error carries the parser's position after the fixed text.
    let msg = Message {
        headers: &[("X-MSYS-API", "{\"cc\": [}")],
        ..Message::default()
    };
    let (_, status) = send(&mut conn, &msg).await;
    let text = reject_text(status);
    assert!(
        text.starts_with("550 5.6.0 JSON parsing error in X-MSYS-API: "),
        "{text}"
    );
    assert!(text.contains("line 1 column"));
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn cc_and_archive_are_added_and_header_replaced() {
    let milter = Milter::start(BOUNCES).await;
    let mut conn = milter.connect().await;
    // Folded with bare LF, as Postfix passes it.
    let api = "{\"cc\": [{\"email\": \"cc1@example.com\", \"name\": \"CC 1\"},\n\t{\"email\": \"cc2@example.com\", \"name\": \"Zoë\"}, \"TO@example.org\"],\n \"archive\": [\"arch@example.com\", \"CC1@example.com\"]}";
    let headers = [
        ("From", "a@example.com"),
        ("Cc", "old@example.com"),
        ("X-MSYS-API", api),
        ("Cc", "older@example.com"),
    ];
    let msg = Message {
        headers: &headers,
        ..Message::default()
    };
    let (actions, status) = send(&mut conn, &msg).await;
    assert_eq!(status, Status::Continue);
    assert!(
        matches!(&actions[0], EomAction::AddHeader { name, .. } if name.to_bytes() == b"X-MSFBL"),
        "{actions:?}"
    );
    let actions = &actions[1..];
    let expected_prefix = [
        EomAction::DeleteHeader {
            name: c("X-MSYS-API"),
            index: 1,
        },
        EomAction::ChangeHeader {
            name: c("Cc"),
            index: 1,
            value: c(
                "CC 1 <cc1@example.com>, =?utf-8?b?Wm/Dqw==?= <cc2@example.com>,\n TO@example.org",
            ),
        },
        EomAction::DeleteHeader {
            name: c("Cc"),
            index: 2,
        },
        EomAction::AddRecipient {
            rcpt: c("<cc1@example.com>"),
            args: None,
        },
        EomAction::AddRecipient {
            rcpt: c("<cc2@example.com>"),
            args: None,
        },
        EomAction::AddRecipient {
            rcpt: c("<arch@example.com>"),
            args: None,
        },
    ];
    assert_eq!(
        actions[..expected_prefix.len()],
        expected_prefix,
        "{actions:#?}"
    );
    assert_eq!(actions.len(), expected_prefix.len() + 1);
    assert!(sender_changed_to_bounce(actions, "bounces.example.net"));
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn nothing_leaks_between_messages_on_one_connection() {
    let milter = Milter::start("").await;
    let mut conn = milter.connect().await;
    let with_cc = Message {
        headers: &[("X-MSYS-API", "{\"cc\": [\"cc@example.com\"]}")],
        ..Message::default()
    };
    let (actions, _) = send(&mut conn, &with_cc).await;
    assert_eq!(actions.len(), 3, "{actions:?}");
    // An aborted transaction in the middle leaves nothing behind either.
    conn.mail(["<x@example.com>"]).await.unwrap();
    conn.rcpt(["<y@example.com>"]).await.unwrap();
    conn.header("X-MSYS-API", "{\"cc\": [\"leak@example.com\"]}")
        .await
        .unwrap();
    conn.abort().await.unwrap();
    let (actions, status) = send(&mut conn, &Message::default()).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.is_empty(), "{actions:?}");
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn subaccount_from_auth_user_is_enforced() {
    let milter = Milter::start(
        "[[sending_domain]]\nname = \"example.com\"\nsubaccounts = [123]\n[[sending_domain]]\nname = \"main.example\"\n",
    )
    .await;
    let mut conn = milter.connect().await;
    let msg = |auth, headers| Message {
        auth,
        headers,
        ..Message::default()
    };
    let (_, status) = send(
        &mut conn,
        &msg(
            Some("SMTP_Injection:X-MSYS-SUBACCOUNT=123"),
            &[("From", "a@example.com")],
        ),
    )
    .await;
    assert_eq!(status, Status::Continue);
    let (_, status) = send(
        &mut conn,
        &msg(
            Some("SMTP_Injection:X-MSYS-SUBACCOUNT=123"),
            &[("From", "a@main.example")],
        ),
    )
    .await;
    assert_eq!(
        status,
        reject("550 5.7.1 Unconfigured Sending Domain <main.example>")
    );
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn null_sender_passes_untouched() {
    let milter = Milter::start(&format!(
        "{BOUNCES}[[sending_domain]]\nname = \"example.com\"\n"
    ))
    .await;
    let mut conn = milter.connect().await;
    let msg = Message {
        from: "<>",
        headers: &[("From", "MAILER-DAEMON@elsewhere.example")],
        ..Message::default()
    };
    let (actions, status) = send(&mut conn, &msg).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.is_empty(), "{actions:?}");
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn hostile_header_values_get_clean_replies() {
    let milter = Milter::start("").await;
    let mut conn = milter.connect().await;
    let deep = format!(
        "{{\"metadata\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // Just under the protocol's 1 MiB packet limit (Postfix stops at 100 KB headers).
    let big = format!("{{\"metadata\": {{\"x\": \"{}\"}}", "y".repeat(1_000_000));
    for value in [deep.as_str(), big.as_str(), "=?utf-8?B?/w==?="] {
        let headers = [("X-MSYS-API", value)];
        let (_, status) = send(
            &mut conn,
            &Message {
                headers: &headers,
                ..Message::default()
            },
        )
        .await;
        let text = reject_text(status);
        assert!(
            text.starts_with("550 5.6.0 JSON parsing error in X-MSYS-API"),
            "{text}"
        );
    }
    conn.close().await.unwrap();
    milter.stop().await;
}

/// `ip_pool` routes through the pool's transport (a header for the MTA), a client's own
/// routing headers go; `sandbox` ends in the quarantine action.
#[tokio::test]
async fn pools_route_by_header_and_sandbox_quarantines() {
    let toml = format!(
        "{BOUNCES}default_ip_pool = \"pool_a\"\n\
         [[ip_pool]]\nname = \"pool_a\"\ntransport = \"smtp_pool_a:\"\n\
         [[ip_pool]]\nname = \"pool_b\"\ntransport = \"smtp_pool_b:[relay.example]:25\"\n"
    );
    let milter = Milter::start(&toml).await;
    let added = support::added_headers;
    for (api, route) in [
        (None, vec!["smtp_pool_a:".to_owned()]),
        (
            Some(r#"{"options": {"ip_pool": "pool_b"}}"#),
            vec!["smtp_pool_b:[relay.example]:25".to_owned()],
        ),
        (Some(r#"{"options": {"ip_pool": "sp_shared"}}"#), vec![]),
    ] {
        let mut conn = milter.connect().await;
        let mut headers = vec![
            ("From", "a@example.com"),
            ("X-MSYS-Route", "smtp_evil:[attacker.example]"),
        ];
        if let Some(api) = api {
            headers.push(("X-MSYS-API", api));
        }
        let msg = Message {
            headers: &headers,
            ..Message::default()
        };
        let (actions, status) = send(&mut conn, &msg).await;
        assert_eq!(status, Status::Continue);
        assert_eq!(added(&actions, "X-MSYS-Route"), route, "{api:?}");
        assert!(
            actions.contains(&EomAction::DeleteHeader {
                name: c("X-MSYS-Route"),
                index: 1,
            }),
            "the client's header goes: {actions:?}"
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, EomAction::Quarantine { .. }))
        );
        conn.close().await.unwrap();
    }
    let mut conn = milter.connect().await;
    let headers = [
        ("From", "a@example.com"),
        ("X-MSYS-API", r#"{"options": {"sandbox": true}}"#),
    ];
    let msg = Message {
        headers: &headers,
        ..Message::default()
    };
    let (actions, status) = send(&mut conn, &msg).await;
    assert_eq!(status, Status::Continue);
    let reason = actions
        .iter()
        .find_map(|a| match a {
            EomAction::Quarantine { reason } => Some(reason.to_str().unwrap().to_owned()),
            _ => None,
        })
        .expect("quarantined");
    assert!(reason.starts_with("msys-milter sandbox "), "{reason}");
    assert_eq!(added(&actions, "X-MSYS-Sandbox").len(), 1);
    conn.close().await.unwrap();
    milter.stop().await;
}
