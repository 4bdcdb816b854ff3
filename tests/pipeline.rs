//! The end-of-message pipeline driven directly, without the milter protocol: a session
//! filled as the MTA would fill it, the pipeline's verdict, and the actions it asked of
//! the MTA, recorded by a stand-in.

use msys_milter::Config;
use msys_milter::ids::IdGenerator;
use msys_milter::milter::session::{Session, Shared};
use msys_milter::pipeline::{Action, MtaActions, Verdict, end_of_message};
use msys_milter::store::{SqliteStore, Store};
use std::sync::{Arc, Mutex};

/// Records every action; refuses those whose text starts with `refuse`.
#[derive(Default)]
struct Recorder {
    done: Mutex<Vec<String>>,
    refuse: Option<&'static str>,
}

impl MtaActions for Recorder {
    async fn act(&self, action: Action<'_>) -> Result<(), String> {
        let text = match action {
            Action::AddRecipient(r) => format!("add rcpt {r}"),
            Action::ChangeSender(s) => format!("sender {s}"),
            Action::AddHeader { name, value } => format!("add {name}: {value}"),
            other => format!("{other:?}"),
        };
        if self.refuse.is_some_and(|r| text.starts_with(r)) {
            return Err(format!("MTA refused `{text}`"));
        }
        self.done.lock().unwrap().push(text);
        Ok(())
    }
}

fn shared(dir: &std::path::Path) -> (Shared, Arc<dyn Store>) {
    let config = Config::parse(
        "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
        std::path::Path::new("pipeline.toml"),
    )
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &dir.join("s.db"),
            msys_milter::store::sqlite::Durability::Normal,
        )
        .unwrap(),
    );
    let shared = Shared::new(config, Arc::clone(&store), Arc::new(IdGenerator::new(3))).unwrap();
    (shared, store)
}

fn session(api: &str) -> Session {
    let mut s = Session::default();
    s.mail("<app@example.com>", None);
    s.rcpt("<to@example.org>");
    s.header(b"From", b"App <app@example.com>");
    s.header(b"X-MSYS-API", api.as_bytes());
    s
}

#[tokio::test]
async fn a_message_is_planned_changed_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, store) = shared(dir.path());
    let recorder = Recorder::default();
    let mut s = session(r#"{"cc": ["cc@example.com"], "campaign_id": "direct"}"#);
    let (verdict, outcome) = end_of_message(&shared, &mut s, "4QPIPE", &recorder).await;
    assert_eq!((verdict, outcome), (Verdict::Accept, "accept"));
    let done = recorder.done.lock().unwrap().clone();
    assert!(
        done.contains(&"add rcpt <cc@example.com>".to_owned()),
        "{done:?}"
    );
    assert!(
        done.iter()
            .any(|a| a.starts_with("sender <bounces+") && a.ends_with("@bounces.example.net>")),
        "{done:?}"
    );
    // Both recipients' injections, committed before the answer.
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
}

#[tokio::test]
async fn a_bad_header_is_refused_with_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, store) = shared(dir.path());
    let recorder = Recorder::default();
    let mut s = session(r#"{"tags": "not a list"}"#);
    let (verdict, outcome) = end_of_message(&shared, &mut s, "4QBAD", &recorder).await;
    let Verdict::Refuse(reply) = verdict else {
        panic!("{verdict:?}");
    };
    assert_eq!(outcome, "reject");
    assert!(reply.to_string().starts_with("550 5.6.0"), "{reply}");
    assert!(recorder.done.lock().unwrap().is_empty());
    assert!(store.events_after(0, 10).await.unwrap().is_empty());
}

/// An action the MTA refuses: 451, and nothing committed (the MTA applies no change to
/// a message it does not accept, so no event may say it was injected).
#[tokio::test]
async fn a_failed_action_tempfails_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, store) = shared(dir.path());
    let recorder = Recorder {
        refuse: Some("add rcpt"),
        ..Recorder::default()
    };
    let mut s = session(r#"{"cc": ["cc@example.com"]}"#);
    let (verdict, outcome) = end_of_message(&shared, &mut s, "4QFAIL", &recorder).await;
    let Verdict::Refuse(reply) = verdict else {
        panic!("{verdict:?}");
    };
    assert_eq!(outcome, "tempfail");
    assert!(reply.to_string().starts_with("451"), "{reply}");
    assert!(store.events_after(0, 10).await.unwrap().is_empty());
}
