//! Tracking in process: the milter driven by indymilter-test replaces the body with
//! tracked links for the first primary recipient, adds its List-Unsubscribe headers,
//! and refuses a misplaced AMPHTML part.

mod support;

use indymilter_test::{EomAction, Status, TestConnection};

const CONFIG: &str =
    "[tracking]\nbase_url = \"https://track.example.com\"\nsecrets = [\"inprocess-secret-0123\"]\n";

async fn connect(toml: &str) -> TestConnection {
    let addr = support::start_in_process(toml).await;
    support::connect_in_process(addr).await
}

async fn send(
    conn: &mut TestConnection,
    headers: &[(&str, &str)],
    body: &str,
) -> (Vec<EomAction>, Status) {
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<to@example.org>"]).await.unwrap();
    for (name, value) in headers {
        conn.header(*name, *value).await.unwrap();
    }
    conn.body(body.replace('\n', "\r\n").into_bytes())
        .await
        .unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status)
}

#[tokio::test]
async fn the_original_gets_tracked_links_and_list_unsubscribe() {
    let mut conn = connect(CONFIG).await;
    let (actions, status) = send(
        &mut conn,
        &[
            ("Content-Type", "text/html; charset=utf-8"),
            (
                "X-MSYS-API",
                "{\"options\": {\"click_tracking\": true, \"open_tracking\": true}}",
            ),
        ],
        "<html><body><a href=\"https://example.com/x\">x</a></body></html>\n",
    )
    .await;
    assert_eq!(status, Status::Continue);
    let header = |wanted: &str| {
        actions.iter().find_map(|a| match a {
            EomAction::AddHeader { name, value } if name.to_str().unwrap() == wanted => {
                Some(value.to_str().unwrap().to_owned())
            }
            _ => None,
        })
    };
    let unsubscribe = header("List-Unsubscribe").expect("List-Unsubscribe added");
    assert!(
        unsubscribe.starts_with("<https://track.example.com/u/") && unsubscribe.ends_with('>'),
        "{unsubscribe}"
    );
    assert_eq!(
        header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let body: Vec<u8> = actions
        .iter()
        .filter_map(|a| match a {
            EomAction::ReplaceBody { chunk } => Some(chunk.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("<a href=\"https://track.example.com/c/"),
        "{body}"
    );
    assert!(
        body.contains("<img src=\"https://track.example.com/o/"),
        "{body}"
    );
    assert!(!body.contains("https://example.com/x"));

    // Transactional, no tracking: the body is skipped, no header is added.
    conn.abort().await.unwrap();
    let (actions, _) = send(
        &mut conn,
        &[
            ("Content-Type", "text/html"),
            ("X-MSYS-API", "{\"options\": {\"transactional\": true}}"),
        ],
        "<html><body><a href=\"https://example.com/x\">x</a></body></html>\n",
    )
    .await;
    assert!(
        actions.iter().all(|a| !matches!(
            a,
            EomAction::ReplaceBody { .. } | EomAction::AddHeader { .. }
        )),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_misplaced_amp_part_is_refused() {
    let mut conn = connect("").await;
    let (_, status) = send(
        &mut conn,
        &[("Content-Type", "multipart/mixed; boundary=m")],
        "--m\nContent-Type: text/x-amp-html\n\n<html amp4email></html>\n--m--\n",
    )
    .await;
    assert_eq!(
        status,
        Status::Reject {
            message: Some(c"550 5.6.0 text/x-amp-html must be inside multipart/alternative".into())
        }
    );
}
