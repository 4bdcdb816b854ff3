//! Hands personalised copies back to the MTA, through a path that does not pass the
//! milter again: an SMTP listener on loopback (lettre, pooled connections) or the MTA's
//! sendmail(1) command. All copies of a message are handed over, concurrently and
//! bounded, before the original is accepted; any failure fails the whole message.

use crate::api::recipients::RcptType;
use crate::config::Reinject;
use lettre::address::{Address, Envelope};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
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

/// The configured way back into the MTA.
pub struct Reinjector {
    target: Target,
    timeout: Duration,
    concurrency: usize,
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
        }
    }

    /// Hand over every copy; the MTA's reply for each, in order, or the first failure.
    /// On failure the remaining hand-overs are cancelled: nothing of them is delivered
    /// unless the MTA had already accepted it (at-least-once on the client's retry).
    pub async fn hand_over_all(
        self: &Arc<Self>,
        copies: Vec<Copy>,
    ) -> Result<Vec<String>, ReinjectError> {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let count = copies.len();
        for (i, copy) in copies.into_iter().enumerate() {
            let this = Arc::clone(self);
            let permits = Arc::clone(&permits);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (i, this.hand_over(&copy).await)
            });
        }
        let mut replies = vec![String::new(); count];
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, Ok(reply))) => replies[i] = reply,
                Ok((_, Err(e))) => return Err(e),
                Err(e) => {
                    return Err(ReinjectError::Failed {
                        to: "?".into(),
                        detail: format!("hand-over task failed: {e}"),
                    });
                }
            }
        }
        Ok(replies)
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

    #[test]
    fn sendmail_gets_lf_line_ends() {
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\r\n"), b"a\nb\rc\n");
    }
}
