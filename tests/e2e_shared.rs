//! Two MTA hosts, one sending platform, end to end: two private Postfix instances, each
//! with its own msys-milter (node ids 1 and 2, each its own SQLite store), sharing one
//! real PostgreSQL (a private throwaway cluster). A recipient who unsubscribes through
//! host B's endpoint (RFC 8058 one-click) is refused by both hosts within a second;
//! a click on B for mail sent through A carries A's campaign and metadata to the
//! webhook consumer (django-anymail).

mod support;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};
use support::anymail::{Anymail, SECRET};
use support::e2e::{E2e, http_get};
use support::message;
use support::pg::Pg;
use support::postfix::free_port;

fn http_post(port: u16, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = "List-Unsubscribe=One-Click";
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

/// One host: its Postfix and milter, its endpoint on `http_port`, the shared store.
fn host(node: u16, http_port: u16, pg: &Pg, anymail: &Anymail) -> E2e {
    E2e::start(&format!(
        "node_id = {node}\n\
         [envelope]\nbounce_domain = \"bounces.example.net\"\n\
         [store]\npostgres = \"{}\"\ndurability = \"normal\"\n\
         [tracking]\nbase_url = \"http://127.0.0.1:{http_port}\"\nsecrets = [\"shared-secret-0123456789\"]\nclick = true\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [[webhook]]\nurl = \"http://127.0.0.1:{}/anymail/sparkpost/tracking/\"\nbasic = \"{SECRET}\"\nbatch_wait_ms = 100\n",
        pg.url(),
        anymail.port
    ))
}

fn campaign(to: &str) -> String {
    message(
        &format!(
            "From: News <news@example.com>\nTo: {to}\nSubject: Spring\nMIME-Version: 1.0\nContent-Type: text/html\nX-MSYS-API: {{\"campaign_id\": \"spring\", \"metadata\": {{\"user\": \"42\"}}}}\n"
        ),
        "<html><body><a href=\"https://shop.example.com/\">Shop</a></body></html>",
    )
}

fn refused(e: &E2e, to: &str) -> bool {
    match e.send("app@example.com", &[to], &campaign(to)) {
        Err(reply) => {
            assert!(
                reply.contains("554") && reply.contains("suppressed due to customer policy"),
                "{reply}"
            );
            true
        }
        Ok(_) => false,
    }
}

#[test]
fn two_hosts_share_one_suppression_list_and_their_transmissions() {
    let pg = Pg::start();
    let anymail = Anymail::start();
    let (port_a, port_b) = (free_port(), free_port());
    let a = host(1, port_a, &pg, &anymail);
    let b = host(2, port_b, &pg, &anymail);

    a.send(
        "app@example.com",
        &["alice@example.org"],
        &campaign("alice@example.org"),
    )
    .unwrap();
    a.wait_for_exactly(1);
    let got = a.capture.message_for("alice@example.org");
    let list_unsubscribe = &got.header("List-Unsubscribe")[0];
    let https = list_unsubscribe
        .split(", ")
        .find(|u| u.contains("/u/"))
        .unwrap()
        .trim_matches(['<', '>']);
    let path = &https[https.find("/u/").unwrap()..];
    let html = mail_parser::MessageParser::default()
        .parse(&got.data)
        .unwrap()
        .body_html(0)
        .unwrap()
        .into_owned();
    let click = html
        .split('"')
        .find_map(|s| s.find("/c/").map(|at| s[at..].to_owned()))
        .unwrap();

    // A click on B, for mail B never saw: A's campaign and metadata come with it. A
    // ships its transmission behind the commit (with PostgreSQL slow to register under
    // load, after the mail is delivered), and a person clicks later than that: wait.
    pg.wait_until(
        "SELECT count(*) FROM transmissions",
        "1",
        20,
        "SELECT string_agg(node_id::text, ',') FROM nodes",
    );
    assert_eq!(http_get(port_b, &click).0, 302);
    let clicked = anymail.wait_for("clicked", "alice@example.org", |_| true);
    let event = &clicked["esp_event"]["msys"]["track_event"];
    assert_eq!(event["campaign_id"], "spring", "{clicked:#}");
    assert_eq!(event["rcpt_meta"]["user"], "42", "{clicked:#}");
    assert_eq!(clicked["metadata"]["user"], "42");

    // The one-click unsubscribe at B: both hosts refuse her within a second.
    assert_eq!(http_post(port_b, path), 200);
    let posted = Instant::now();
    assert!(
        refused(&b, "alice@example.org"),
        "B committed it before answering"
    );
    loop {
        if refused(&a, "alice@example.org") {
            break;
        }
        assert!(
            posted.elapsed() < Duration::from_secs(1),
            "host A still delivers to her after {:?}",
            posted.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = posted.elapsed();
    eprintln!("A refused her {took:?} after the POST to B");
    // Both hosts registered; both shipped their events.
    assert_eq!(pg.sql("SELECT count(*) FROM nodes"), "2");
    pg.wait_until(
        "SELECT count(DISTINCT node_id) FROM events",
        "2",
        10,
        "SELECT node_id, type FROM events",
    );
}

/// PostgreSQL stops while mail flows through both hosts: every message is accepted
/// (none tempfailed for it), and once PostgreSQL is back every event reaches the
/// webhook exactly once (by event id), each in exactly one batch.
#[test]
fn with_postgres_stopped_mail_flows_and_every_event_arrives_once_after() {
    let pg = Pg::start();
    let hook = support::webhook::Webhook::start(200);
    let start = |node: u16| {
        E2e::start(&format!(
            "node_id = {node}\n\
             [envelope]\nbounce_domain = \"bounces.example.net\"\n\
             [store]\npostgres = \"{}\"\ndurability = \"normal\"\n\
             [http]\nlisten = \"127.0.0.1:{}\"\n\
             [[webhook]]\nurl = \"{}\"\nbatch_wait_ms = 100\n",
            pg.url(),
            free_port(),
            hook.url()
        ))
    };
    let hosts = [start(1), start(2)];
    // Registered and shipping, then PostgreSQL goes away.
    for (i, h) in hosts.iter().enumerate() {
        h.send(
            "app@example.com",
            &[&format!("before{i}@example.org")],
            &campaign("x"),
        )
        .unwrap();
    }
    hook.wait_until(30, |items| items.len() >= 2);
    pg.stop();
    let stopped = Instant::now();
    let mut sent = 2;
    while stopped.elapsed() < Duration::from_secs(8) {
        for h in &hosts {
            h.send(
                "app@example.com",
                &[&format!("during{sent}@example.org")],
                &campaign("x"),
            )
            .unwrap_or_else(|e| panic!("refused while PostgreSQL is down: {e}"));
            sent += 1;
        }
    }
    pg.restart();
    hook.wait_until(60, |items| items.len() >= sent);
    std::thread::sleep(Duration::from_secs(2));
    let mut ids = hook.event_ids();
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!((all, ids.len()), (sent, sent), "every injection once");
    let mut batches = hook.batch_ids();
    batches.sort();
    let posts = batches.len();
    batches.dedup();
    assert_eq!(posts, batches.len(), "each batch once");
    eprintln!(
        "{sent} messages, {} of them while PostgreSQL was down",
        sent - 2
    );
}
