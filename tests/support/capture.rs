//! A capture SMTP server: accepts every transaction and records envelope and content,
//! standing in for the Internet behind the private Postfix.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One received transaction.
#[derive(Clone, Debug)]
pub struct Received {
    /// MAIL FROM address without brackets (empty for the null sender).
    pub mail_from: String,
    /// The MAIL FROM parameters (e.g. `BODY=8BITMIME`).
    pub mail_params: String,
    pub rcpts: Vec<String>,
    /// The message, dot-unstuffed, CRLF line ends as sent.
    pub data: Vec<u8>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The header section, unfolded, as (name, value) pairs.
    pub fn headers(&self) -> Vec<(String, String)> {
        let text = self.text();
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// Every value of header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    pub fn body(&self) -> Vec<u8> {
        let pos = self
            .data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(self.data.len(), |p| p + 4);
        self.data[pos..].to_vec()
    }
}

/// The running capture server.
pub struct Capture {
    pub port: u16,
    received: Arc<(Mutex<Vec<Received>>, Condvar)>,
}

/// Per-recipient RCPT replies: a recipient starting with the first string gets the
/// second as its reply (and is not added).
pub type Replies = Arc<Vec<(String, String)>>;

impl Capture {
    pub fn start() -> Capture {
        Capture::start_with_replies(&[])
    }

    /// A capture server that refuses some recipients: `(address prefix, reply)`.
    pub fn start_with_replies(replies: &[(&str, &str)]) -> Capture {
        let replies: Replies = Arc::new(
            replies
                .iter()
                .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let shared = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let shared = Arc::clone(&shared);
                let replies = Arc::clone(&replies);
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared, &replies);
                });
            }
        });
        Capture { port, received }
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<Received> {
        self.received.0.lock().unwrap().clone()
    }

    /// Wait until `count` deliveries (recipients) arrived, then a little longer to catch
    /// any unexpected extra one.
    pub fn wait_for_deliveries(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (lock, cvar) = &*self.received;
        let mut got = lock.lock().unwrap();
        while got.iter().map(|r| r.rcpts.len()).sum::<usize>() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {count} deliveries; got {:#?}",
                *got
            );
            got = cvar.wait_timeout(got, left).unwrap().0;
        }
        drop(got);
        std::thread::sleep(Duration::from_millis(500));
        self.all()
    }

    /// The single message received by `rcpt`; fails when it got none or several.
    pub fn message_for(&self, rcpt: &str) -> Received {
        let all: Vec<Received> = self
            .all()
            .into_iter()
            .filter(|r| r.rcpts.iter().any(|a| a.eq_ignore_ascii_case(rcpt)))
            .collect();
        assert_eq!(
            all.len(),
            1,
            "{rcpt} received {} messages: {all:#?}",
            all.len()
        );
        let count = all[0]
            .rcpts
            .iter()
            .filter(|a| a.eq_ignore_ascii_case(rcpt))
            .count();
        assert_eq!(count, 1, "{rcpt} is a recipient {count} times");
        all.into_iter().next().unwrap()
    }
}

fn serve(
    stream: TcpStream,
    shared: &(Mutex<Vec<Received>>, Condvar),
    replies: &Replies,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 capture.test ESMTP\r\n")?;
    let mut current = Received {
        mail_from: String::new(),
        mail_params: String::new(),
        rcpts: Vec::new(),
        data: Vec::new(),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let upper = text.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            out.write_all(b"250-capture.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600\r\n")?;
        } else if upper.starts_with("HELO") {
            out.write_all(b"250 capture.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            let rest = &text[10..];
            let (addr, params) = rest.trim().split_once('>').unwrap_or((rest, ""));
            current.mail_from = addr.trim().trim_start_matches('<').to_owned();
            current.mail_params = params.trim().to_owned();
            out.write_all(b"250 2.1.0 Ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = text[8..]
                .trim()
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<');
            match replies
                .iter()
                .find(|(prefix, _)| addr.starts_with(prefix.as_str()))
            {
                Some((_, reply)) => out.write_all(format!("{reply}\r\n").as_bytes())?,
                None => {
                    current.rcpts.push(addr.to_owned());
                    out.write_all(b"250 2.1.5 Ok\r\n")?;
                }
            }
        } else if upper == "DATA" {
            out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                // Undo the sender's dot-stuffing.
                let content = if line.starts_with(b"..") {
                    &line[1..]
                } else {
                    &line[..]
                };
                data.extend_from_slice(content);
            }
            current.data = data;
            let (lock, cvar) = shared;
            lock.lock().unwrap().push(std::mem::replace(
                &mut current,
                Received {
                    mail_from: String::new(),
                    mail_params: String::new(),
                    rcpts: Vec::new(),
                    data: Vec::new(),
                },
            ));
            cvar.notify_all();
            out.write_all(b"250 2.0.0 Ok: captured\r\n")?;
        } else if upper == "RSET" {
            current.rcpts.clear();
            out.write_all(b"250 2.0.0 Ok\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"250 2.0.0 Ok\r\n")?;
        }
    }
}
