//! A webhook consumer on loopback that records every POST (batch id, auth, body) and
//! answers with the status the test sets: down (503) or up (200).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Post {
    pub batch_id: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
    /// Every header, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Post {
    /// The batch's items.
    pub fn items(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<Vec<serde_json::Value>>(&self.body).unwrap()
    }
}

pub struct Webhook {
    pub port: u16,
    status: Arc<AtomicU16>,
    posts: Arc<Mutex<Vec<Post>>>,
    hold: Arc<Hold>,
}

/// Holding POSTs open: the next one that arrives is not answered until released.
#[derive(Default)]
struct Hold {
    next: std::sync::atomic::AtomicBool,
    released: std::sync::atomic::AtomicBool,
    /// Batch ids of the POSTs held so far.
    held: Mutex<Vec<String>>,
}

impl Webhook {
    pub fn start(status: u16) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(status));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(Hold::default());
        let (st, ps, ho) = (status.clone(), posts.clone(), hold.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (st, ps, ho) = (st.clone(), ps.clone(), ho.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &st, &ps, &ho);
                });
            }
        });
        Webhook {
            port,
            status,
            posts,
            hold,
        }
    }

    /// Hold the next POST open (recorded only once answered) until [`Webhook::release`].
    pub fn hold_next(&self) {
        self.hold.released.store(false, Ordering::SeqCst);
        self.hold.next.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.hold.released.store(true, Ordering::SeqCst);
    }

    /// The batch ids of the POSTs held so far (waits up to `secs` for one).
    pub fn wait_held(&self, secs: u64) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let held = self.hold.held.lock().unwrap().clone();
            if !held.is_empty() {
                return held;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no POST arrived to hold"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The items of every acknowledged batch, in arrival order.
    pub fn delivered(&self) -> Vec<serde_json::Value> {
        self.posts()
            .iter()
            .filter(|p| p.status == 200)
            .flat_map(Post::items)
            .collect()
    }

    /// The `event_id` of every acknowledged item, in arrival order (repeats kept).
    pub fn event_ids(&self) -> Vec<String> {
        ids_of(&self.delivered())
    }

    /// The batch id of every POST, in arrival order (repeats kept).
    pub fn batch_ids(&self) -> Vec<String> {
        self.posts().into_iter().map(|p| p.batch_id).collect()
    }

    /// Wait until `done` holds for the delivered items (at most `secs` seconds).
    pub fn wait_until(
        &self,
        secs: u64,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let items = self.delivered();
            if done(&items) {
                return items;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "webhook: condition not met in {secs} s; got {} items in {} posts",
                items.len(),
                self.posts().len()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn serve(
    stream: std::net::TcpStream,
    status: &AtomicU16,
    posts: &Mutex<Vec<Post>>,
    hold: &Hold,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end().to_owned();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        if hold.next.swap(false, Ordering::SeqCst) {
            hold.held
                .lock()
                .unwrap()
                .push(get("x-messagesystems-batch-id").unwrap_or_default());
            while !hold.released.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let code = status.load(Ordering::SeqCst);
        posts.lock().unwrap().push(Post {
            batch_id: get("x-messagesystems-batch-id").unwrap_or_default(),
            authorization: get("authorization"),
            content_type: get("content-type"),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: code,
            headers: headers.clone(),
        });
        let reason = if code == 200 { "OK" } else { "Unavailable" };
        write!(
            out,
            "HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        )?;
        out.flush()?;
    }
}

/// The `event_id` of each batch item, whatever its category.
pub fn ids_of(items: &[serde_json::Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            let msys = i["msys"].as_object().unwrap();
            msys.values().next().unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}
