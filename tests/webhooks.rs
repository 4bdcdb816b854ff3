//! Events through the real daemon to a real HTTP consumer: a `kill -9` after messages
//! were accepted and before the webhook got their events loses none of them; a webhook
//! that is down for a while then gets every batch, each retry under the same
//! `X-MessageSystems-Batch-ID`, in order; the JSONL file gets every event too; the admin
//! verbs see the store while the daemon runs.

mod support;

use indymilter_test::{MacroStage, Status, TestConnection};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use support::Milter;
use support::postfix::free_port;
use support::webhook::Webhook;

async fn connect(port: u16) -> TestConnection {
    TestConnection::configure()
        .read_timeout(std::time::Duration::from_secs(20))
        .available_actions(indymilter_test::Actions::all())
        .open_tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Send `count` messages, each to two envelope recipients and a cc: three injection
/// events each. All must be accepted.
async fn send_messages(port: u16, count: usize, tag: &str) {
    let mut conn = connect(port).await;
    for i in 0..count {
        conn.mail(["<app@example.com>"]).await.unwrap();
        conn.macros(MacroStage::Rcpt, [("i", "4Q")]).await.unwrap();
        conn.rcpt([format!("<a{i}-{tag}@example.org>")])
            .await
            .unwrap();
        conn.rcpt([format!("<b{i}-{tag}@example.org>")])
            .await
            .unwrap();
        conn.header("From", "app@example.com").await.unwrap();
        let api = format!(r#"{{"campaign_id":"{tag}","cc":["c{i}-{tag}@example.org"]}}"#);
        conn.header("X-MSYS-API", api.as_str()).await.unwrap();
        conn.macros(MacroStage::Eom, [("i", "4Q")]).await.unwrap();
        let (_, status) = conn.eom().await.unwrap();
        assert_eq!(status, Status::Continue, "message {i}");
    }
}

fn inner(item: &serde_json::Value) -> &serde_json::Value {
    let msys = &item["msys"];
    msys.as_object().unwrap().values().next().unwrap()
}

fn admin(milter: &Milter, config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_msys-milter"))
        .env("STATE_DIRECTORY", milter.state.path())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_event_and_a_webhook_that_was_down_gets_every_batch_once_up() {
    let hook = Webhook::start(503);
    let jsonl = tempfile::tempdir().unwrap();
    let jsonl_path = jsonl.path().join("events.jsonl");
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:{}\"\n[events]\njsonl = \"{}\"\n[[webhook]]\nurl = \"{}\"\nbasic = \"user:secret\"\nbatch_size = 7\nbatch_wait_ms = 50\nevents = [\"injection\", \"bounce\"]\n",
        free_port(),
        jsonl_path.display(),
        hook.url()
    );
    let mut milter = Milter::start(&toml);
    send_messages(milter.port, 20, "first").await;
    // Let some attempts fail, then kill the daemon before any batch got through.
    hook.wait_until(30, |_| true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while hook.posts().is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", milter.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(hook.delivered().is_empty());
    milter.kill9_and_restart();
    send_messages(milter.port, 5, "second").await;

    // While it is down, the admin verb shows the backlog and the error.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), &toml).unwrap();
    let (ok, status, err) = admin(&milter, config.path(), &["webhooks", "status"]);
    assert!(ok, "{err}");
    assert!(
        status.contains(&format!("webhook:{}", hook.url())),
        "{status}"
    );
    assert!(status.contains("pending events:"), "{status}");

    hook.set_status(200);
    let expected = 25 * 3;
    let items = hook.wait_until(60, |items| {
        let ids: HashSet<&str> = items
            .iter()
            .map(|i| inner(i)["event_id"].as_str().unwrap())
            .collect();
        ids.len() >= expected
    });
    // Exactly the injection events, none missing, none foreign.
    let mut ids = HashSet::new();
    for item in &items {
        let e = inner(item);
        assert_eq!(e["type"], "injection");
        ids.insert(e["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), expected);
    let rcpts: HashSet<String> = items
        .iter()
        .map(|i| inner(i)["rcpt_to"].as_str().unwrap().to_owned())
        .collect();
    for i in 0..20 {
        for who in ["a", "b", "c"] {
            assert!(rcpts.contains(&format!("{who}{i}-first@example.org")));
        }
    }

    let posts = hook.posts();
    // SparkPost's headers and our auth on every POST.
    for p in &posts {
        assert!(!p.batch_id.is_empty());
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpzZWNyZXQ="));
        assert!(p.items().len() <= 7);
    }
    // A batch keeps its id and its events across retries, also across the restart.
    let mut by_id: HashMap<&str, Vec<&support::webhook::Post>> = HashMap::new();
    for p in &posts {
        by_id.entry(p.batch_id.as_str()).or_default().push(p);
    }
    let retried = by_id.values().filter(|ps| ps.len() > 1).count();
    assert!(retried >= 1, "some batch was retried: {posts:#?}");
    for ps in by_id.values() {
        assert!(
            ps.iter().all(|p| p.body == ps[0].body),
            "same events on every retry"
        );
        assert!(ps.iter().filter(|p| p.status == 200).count() <= 1);
    }
    // Order: events arrive in the order they were made (one batch in flight at a time).
    let arrival: Vec<u64> = items
        .iter()
        .map(|i| inner(i)["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut sorted = arrival.clone();
    sorted.sort_unstable();
    assert_eq!(arrival, sorted);

    // The JSONL file got every event too, one JSON item a line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&jsonl_path).unwrap_or_default();
        let ids: HashSet<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                inner(&v)["event_id"].as_str().unwrap().to_owned()
            })
            .collect();
        if ids.len() == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jsonl has {} events",
            ids.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The admin verbs read the store of the running daemon.
    let (ok, tail, err) = admin(
        &milter,
        config.path(),
        &["events", "tail", "-n", "3", "--type", "injection"],
    );
    assert!(ok, "{err}");
    assert_eq!(tail.lines().count(), 3, "{tail}");
    let (ok, _, err) = admin(
        &milter,
        config.path(),
        &["events", "replay", "--since", "1h"],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("{} events queued again", 2 * expected)),
        "{err}"
    );
    hook.wait_until(60, |items| items.len() >= 2 * expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_verbs_work_on_the_running_daemons_store() {
    let toml = format!("[http]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    let milter = Milter::start(&toml);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), &toml).unwrap();
    let (ok, _, err) = admin(
        &milter,
        config.path(),
        &["suppression", "add", "blocked@example.org"],
    );
    assert!(!ok && err.contains("--type"), "{err}");
    let (ok, _, err) = admin(
        &milter,
        config.path(),
        &[
            "suppression",
            "add",
            "Blocked@Example.org",
            "--type",
            "non_transactional",
        ],
    );
    assert!(ok, "{err}");
    // The daemon sees it at once.
    let mut conn = connect(milter.port).await;
    conn.mail(["<app@example.com>"]).await.unwrap();
    conn.rcpt(["<blocked@example.org>"]).await.unwrap();
    conn.header("From", "app@example.com").await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    assert!(matches!(status, Status::Reject { .. }), "{status:?}");

    let csv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        csv.path(),
        "recipient,type,description\nx@example.org,transactional,\"a, quoted \"\"one\"\"\"\ny@example.org,non_transactional,\n",
    )
    .unwrap();
    let (ok, _, err) = admin(
        &milter,
        config.path(),
        &["suppression", "import", csv.path().to_str().unwrap()],
    );
    assert!(ok && err.contains("2 entries imported"), "{err}");
    let (ok, out, err) = admin(&milter, config.path(), &["suppression", "export"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "recipient,type,description\nblocked@example.org,non_transactional,\nx@example.org,transactional,\"a, quoted \"\"one\"\"\"\ny@example.org,non_transactional,\n"
    );
    let (ok, _, err) = admin(
        &milter,
        config.path(),
        &["suppression", "remove", "blocked@example.org"],
    );
    assert!(ok, "{err}");
    let (ok, list, _) = admin(&milter, config.path(), &["suppression", "list"]);
    assert!(ok && !list.contains("blocked@"), "{list}");
    let (ok, _, err) = admin(
        &milter,
        config.path(),
        &["suppression", "remove", "nobody@example.org"],
    );
    assert!(!ok && err.contains("not on the list"), "{err}");
}
