//! Hands personalised copies back to the MTA, through a path that does not pass the
//! milter again: an SMTP listener on loopback (lettre, pooled connections) or the MTA's
//! sendmail(1) command. All copies of a message are handed over, concurrently and
//! bounded in number and in memory, before the original is accepted; any failure fails
//! the whole message.

use crate::api::recipients::RcptType;
use crate::config::Reinject;
use lettre::address::{Address, Envelope};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;

/// One copy ready to hand over.
#[derive(Clone, Debug)]
pub struct Copy {
    /// MAIL FROM; empty for the null sender.
    pub from: String,
    pub to: String,
    pub rcpt_type: RcptType,
    /// The whole message, CRLF line ends, not dot-stuffed.
    pub bytes: Vec<u8>,
}

/// Why a copy could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum ReinjectError {
    #[error("copy to {to}: the MTA refused it: {reply}")]
    Refused { to: String, reply: String },
    #[error("copy to {to}: {detail}")]
    Failed { to: String, detail: String },
    #[error("copy to {to}: no answer within {timeout:?}")]
    Timeout { to: String, timeout: Duration },
    #[error("copy to {to}: `{address}` is not an address the SMTP client can send to")]
    Address { to: String, address: String },
}

/// Why a message's copies were not all handed over.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError<E> {
    #[error(transparent)]
    Reinject(ReinjectError),
    /// Making a copy or recording one failed.
    #[error("{0}")]
    Caller(E),
}

/// The configured way back into the MTA.
pub struct Reinjector {
    target: Target,
    timeout: Duration,
    concurrency: usize,
    inflight_bytes: usize,
}

enum Target {
    Smtp(SmtpPool),
    Sendmail(PathBuf),
}

/// Open SMTP connections to the re-injection listener, reused between copies.
///
/// lettre's own pooled transport is not used: its sockets keep Nagle on, and lettre
/// writes the message and the final `.` in two writes, so every copy waited ~40 ms for
/// the listener's delayed ACK (measured: +340 ms for 100 bcc copies). These sockets set
/// TCP_NODELAY.
struct SmtpPool {
    addr: String,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// Idle connections older than this are closed rather than reused (Postfix's smtpd
/// drops idle clients after 300 s).
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

impl SmtpPool {
    async fn connect(&self) -> Result<AsyncSmtpConnection, String> {
        let stream = tokio::net::TcpStream::connect(self.addr.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let hello = ClientId::Domain("localhost".into());
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }
}

impl Reinjector {
    pub fn new(config: &Reinject) -> Self {
        let timeout = Duration::from_secs(config.timeout);
        let target = match (&config.sendmail, &config.smtp) {
            (Some(path), _) => Target::Sendmail(path.clone()),
            (None, smtp) => Target::Smtp(SmtpPool {
                addr: smtp.clone().unwrap_or_else(|| "127.0.0.1:10026".into()),
                max_idle: config.concurrency,
                idle: Mutex::new(Vec::new()),
            }),
        };
        Self {
            target,
            timeout,
            concurrency: config.concurrency,
            inflight_bytes: config.inflight_bytes,
        }
    }

    /// Hand over `count` copies, made one at a time by `make(i)` when a slot is free:
    /// at most `concurrency` at once, and no more than `inflight_bytes` of rendered
    /// copies waiting (one always goes). `make` returns `None` for a copy not to hand
    /// over (it was at an earlier attempt). After copies are taken, `record` is told
    /// (index, MTA reply, size) before more are made: the exactly-once ledger.
    ///
    /// Returns the MTA's reply and the size of each copy handed over now (`None` for
    /// those skipped), or the first failure; on failure the hand-overs in flight are
    /// cancelled: nothing of them is delivered unless the MTA had already accepted it.
    pub async fn hand_over_each<E, R, F>(
        self: &Arc<Self>,
        count: usize,
        mut make: impl FnMut(usize) -> Result<Option<Copy>, E>,
        mut record: R,
    ) -> Result<Vec<Option<(String, usize)>>, HandOverError<E>>
    where
        R: FnMut(Vec<(usize, String, usize)>) -> F,
        F: Future<Output = Result<(), E>>,
    {
        let mut tasks = JoinSet::new();
        let mut results = vec![None; count];
        let (mut next, mut inflight, mut estimate) = (0, 0usize, 0usize);
        loop {
            while next < count
                && tasks.len() < self.concurrency
                && (tasks.is_empty() || inflight + estimate <= self.inflight_bytes)
            {
                let i = next;
                next += 1;
                let Some(copy) = make(i).map_err(HandOverError::Caller)? else {
                    continue;
                };
                let size = copy.bytes.len();
                (inflight, estimate) = (inflight + size, size);
                let this = Arc::clone(self);
                tasks.spawn(async move { (i, size, this.hand_over(&copy).await) });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let mut taken = Vec::new();
            let mut finished = Some(joined);
            while let Some(joined) = finished {
                let (i, size, result) = joined.map_err(|e| {
                    HandOverError::Reinject(ReinjectError::Failed {
                        to: "?".into(),
                        detail: format!("hand-over task failed: {e}"),
                    })
                })?;
                inflight -= size;
                let reply = result.map_err(HandOverError::Reinject)?;
                taken.push((i, reply.clone(), size));
                results[i] = Some((reply, size));
                finished = tasks.try_join_next();
            }
            record(taken).await.map_err(HandOverError::Caller)?;
        }
        Ok(results)
    }

    async fn hand_over(&self, copy: &Copy) -> Result<String, ReinjectError> {
        let timeout = self.timeout;
        let work = async {
            match &self.target {
                Target::Smtp(pool) => send_smtp(pool, copy).await,
                Target::Sendmail(path) => send_sendmail(path, copy).await,
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(ReinjectError::Timeout {
                    to: copy.to.clone(),
                    timeout,
                })
            })
    }
}

fn address(copy: &Copy, addr: &str) -> Result<Address, ReinjectError> {
    addr.parse().map_err(|_| ReinjectError::Address {
        to: copy.to.clone(),
        address: addr.to_owned(),
    })
}

async fn send_smtp(pool: &SmtpPool, copy: &Copy) -> Result<String, ReinjectError> {
    let from = if copy.from.is_empty() {
        None
    } else {
        Some(address(copy, &copy.from)?)
    };
    let envelope =
        Envelope::new(from, vec![address(copy, &copy.to)?]).map_err(|e| ReinjectError::Failed {
            to: copy.to.clone(),
            detail: e.to_string(),
        })?;
    // lettre dot-stuffs once and asks for 8BITMIME / SMTPUTF8 when the content needs it.
    // It ends the data with CRLF.CRLF itself, so the message's own last CRLF must go or
    // every copy would gain an empty line.
    let bytes = copy.bytes.strip_suffix(b"\r\n").unwrap_or(&copy.bytes);
    // A pooled connection may have been closed by the listener meanwhile: on a network
    // error, try once more on a fresh one.
    let pooled = pool.take_idle();
    let attempts = if pooled.is_some() { 2 } else { 1 };
    let mut conn = pooled;
    let mut last_error = String::new();
    for _ in 0..attempts {
        let mut c = match conn.take() {
            Some(c) => c,
            None => pool
                .connect()
                .await
                .map_err(|detail| ReinjectError::Failed {
                    to: copy.to.clone(),
                    detail,
                })?,
        };
        match c.send(&envelope, bytes).await {
            Ok(response) => {
                pool.give_back(c);
                return Ok(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ));
            }
            Err(e) if e.is_permanent() || e.is_transient() => {
                c.abort().await;
                return Err(ReinjectError::Refused {
                    to: copy.to.clone(),
                    reply: e.to_string(),
                });
            }
            Err(e) => {
                c.abort().await;
                last_error = e.to_string();
            }
        }
    }
    Err(ReinjectError::Failed {
        to: copy.to.clone(),
        detail: last_error,
    })
}

async fn send_sendmail(path: &PathBuf, copy: &Copy) -> Result<String, ReinjectError> {
    let failed = |detail: String| ReinjectError::Failed {
        to: copy.to.clone(),
        detail,
    };
    let sender = if copy.from.is_empty() {
        "<>"
    } else {
        copy.from.as_str()
    };
    let mut child = tokio::process::Command::new(path)
        .args(["-i", "-f", sender, "--", &copy.to])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", path.display())))?;
    // sendmail(1) reads lines ending in LF.
    let bytes = crlf_to_lf(&copy.bytes);
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| failed("no stdin".into()))?;
    stdin
        .write_all(&bytes)
        .await
        .map_err(|e| failed(format!("writing to {}: {e}", path.display())))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("waiting for {}: {e}", path.display())))?;
    if out.status.success() {
        Ok(format!("{} exited 0", path.display()))
    } else {
        Err(ReinjectError::Refused {
            to: copy.to.clone(),
            reply: format!(
                "{} {}: {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// CRLF line ends to LF; a CR that ends no line is kept.
fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::recipients::{VALID_MAILBOXES, is_valid_mailbox};

    /// Every address the header validation accepts must be one the SMTP client sends to,
    /// or a copy would tempfail for ever.
    #[test]
    fn the_smtp_client_takes_every_valid_mailbox() {
        for addr in VALID_MAILBOXES {
            assert!(is_valid_mailbox(addr), "{addr}");
            assert!(addr.parse::<Address>().is_ok(), "lettre refuses {addr}");
        }
    }

    /// Copies rendered and not yet taken by the MTA: never more than `concurrency`, nor
    /// more bytes than `inflight_bytes` (but one), whatever the number of copies.
    #[tokio::test]
    async fn copies_are_made_only_as_the_hand_over_takes_them() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("sendmail");
        std::fs::write(&script, "#!/bin/sh\nsleep 0.05\ncat >/dev/null\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let most_alive = |concurrency: usize, inflight_bytes: usize| {
            let reinjector = Arc::new(Reinjector::new(&Reinject {
                sendmail: Some(script.clone()),
                concurrency,
                inflight_bytes,
                ..Reinject::default()
            }));
            async move {
                let (made, taken, most) = (
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                );
                let make = |i: usize| {
                    let alive = made.fetch_add(1, SeqCst) + 1 - taken.load(SeqCst);
                    most.fetch_max(alive, SeqCst);
                    Ok::<_, ()>(Some(Copy {
                        from: "a@example.com".into(),
                        to: format!("b{i}@example.com"),
                        rcpt_type: RcptType::Bcc,
                        bytes: vec![b'x'; 1000],
                    }))
                };
                let record = |done: Vec<(usize, String, usize)>| {
                    taken.fetch_add(done.len(), SeqCst);
                    async { Ok(()) }
                };
                let results = reinjector.hand_over_each(40, make, record).await.unwrap();
                assert!(
                    results
                        .iter()
                        .all(|r| r.as_ref().is_some_and(|(_, size)| *size == 1000))
                );
                most.load(SeqCst)
            }
        };
        assert_eq!(most_alive(4, 1 << 30).await, 4);
        assert_eq!(most_alive(16, 3000).await, 3);
        assert_eq!(most_alive(16, 10).await, 1, "one copy always goes");
        assert!(
            most_alive(64, 1 << 30).await > 16,
            "unbounded, all would be made at once"
        );
    }

    #[test]
    fn sendmail_gets_lf_line_ends() {
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\r\n"), b"a\nb\rc\n");
    }
}
