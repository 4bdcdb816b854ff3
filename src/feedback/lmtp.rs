//! A small LMTP server (RFC 2033) for the bounce domains' mail: LHLO, MAIL, RCPT, DATA
//! with one reply per accepted recipient, RSET, NOOP, VRFY, QUIT; pipelining (replies are
//! flushed when the client has nothing more buffered). Crates evaluated: `mailin` and
//! `samotop` speak SMTP only (no per-recipient DATA replies) and pull in much more than
//! the ~250 lines here; `smtp-server` crates on crates.io are unmaintained.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest command line accepted (RFC 5321 says 512; be lenient).
const MAX_COMMAND: usize = 4096;
/// Longest line inside DATA before the message is refused as malformed.
const MAX_DATA_LINE: usize = 1 << 20;
/// Bad commands on one connection before it is closed.
const MAX_ERRORS: usize = 20;
/// Recipients in one transaction.
const MAX_RCPTS: usize = 1000;
/// A silent client is dropped after this; so is one that does not read our replies.
const IDLE: Duration = Duration::from_secs(300);
/// The longest a message may take to arrive (a client trickling it is cut).
const DATA_TIMEOUT: Duration = Duration::from_secs(600);

/// Write and flush `out`; false when the client is gone or does not read within
/// [`IDLE`].
async fn send<W: AsyncWrite + Unpin>(write: &mut W, out: &[u8]) -> bool {
    let sent = tokio::time::timeout(IDLE, async {
        write.write_all(out).await?;
        write.flush().await
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// A reply line (`250 2.0.0 Ok`), without CRLF.
pub type Reply = String;

/// What the server does with the mail: decide per recipient, then take the message.
pub trait Deliver: Send + Sync + 'static {
    /// `Ok(())` to accept the recipient, else the reply refusing it.
    fn rcpt(&self, rcpt: &str) -> Result<(), Reply>;
    /// One reply per recipient, in order. A message that cannot be stored must answer
    /// 4xx (the MTA keeps it and retries).
    fn data<'a>(
        &'a self,
        mail_from: &'a str,
        rcpts: &'a [String],
        message: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<Reply>> + Send + 'a>>;
}

/// Serve one connection until QUIT, EOF, an I/O error or the idle timeout.
pub async fn serve<S, D>(stream: S, hostname: &str, max_size: usize, deliver: Arc<D>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver + ?Sized,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut out = format!("220 {hostname} LMTP msys-milter ready\r\n").into_bytes();
    let mut session = Transaction::default();
    let mut greeted = false;
    let mut errors = 0;
    let mut line = Vec::new();
    loop {
        if reader.buffer().is_empty() && !out.is_empty() {
            if !send(&mut write, &out).await {
                return;
            }
            out.clear();
        }
        line.clear();
        match tokio::time::timeout(IDLE, read_line(&mut reader, &mut line, MAX_COMMAND)).await {
            Ok(Ok(Line::Complete)) => {}
            Ok(Ok(Line::TooLong)) => {
                push(&mut out, "500 5.5.2 line too long");
                errors += 1;
                continue;
            }
            Ok(Ok(Line::Eof)) | Ok(Err(_)) => return,
            Err(_) => {
                crate::metrics::global().connection_timed_out("lmtp");
                push(&mut out, "421 4.4.2 idle too long, closing");
                let _ = send(&mut write, &out).await;
                return;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        let reply: Option<String> = match verb.as_str() {
            "LHLO" if !arg.trim().is_empty() => {
                greeted = true;
                session = Transaction::default();
                Some(format!(
                    "250-{hostname}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE {max_size}"
                ))
            }
            "LHLO" => Some("501 5.5.4 LHLO needs a host name".into()),
            "HELO" | "EHLO" => Some("500 5.5.1 this is LMTP: use LHLO".into()),
            "MAIL" if !greeted => Some("503 5.5.1 LHLO first".into()),
            "MAIL" if session.mail_from.is_some() => Some("503 5.5.1 nested MAIL command".into()),
            "MAIL" => match path_arg(arg, "FROM:") {
                Some(from) => {
                    session.mail_from = Some(from);
                    Some("250 2.1.0 Ok".into())
                }
                None => Some("501 5.5.4 syntax: MAIL FROM:<address>".into()),
            },
            "RCPT" if session.mail_from.is_none() => Some("503 5.5.1 MAIL first".into()),
            "RCPT" if session.rcpts.len() >= MAX_RCPTS => {
                Some("452 4.5.3 too many recipients".into())
            }
            "RCPT" => match path_arg(arg, "TO:").filter(|r| !r.is_empty()) {
                Some(rcpt) => match deliver.rcpt(&rcpt) {
                    Ok(()) => {
                        session.rcpts.push(rcpt);
                        Some("250 2.1.5 Ok".into())
                    }
                    Err(reply) => Some(reply),
                },
                None => Some("501 5.5.4 syntax: RCPT TO:<address>".into()),
            },
            "DATA" if session.mail_from.is_none() => Some("503 5.5.1 MAIL first".into()),
            "DATA" if session.rcpts.is_empty() => Some("503 5.5.1 no valid recipients".into()),
            "DATA" => {
                push(&mut out, "354 End data with <CR><LF>.<CR><LF>");
                if !send(&mut write, &out).await {
                    return;
                }
                out.clear();
                let message = match tokio::time::timeout(
                    DATA_TIMEOUT,
                    read_data(&mut reader, max_size),
                )
                .await
                {
                    Ok(Ok(message)) => message,
                    Ok(Err(e)) => {
                        if e.kind() == std::io::ErrorKind::TimedOut {
                            crate::metrics::global().connection_timed_out("lmtp");
                        }
                        return;
                    }
                    Err(_) => {
                        crate::metrics::global().connection_timed_out("lmtp");
                        return;
                    }
                };
                let done = std::mem::take(&mut session);
                let replies = match message {
                    Data::Message(bytes) => {
                        let from = done.mail_from.unwrap_or_default();
                        let mut replies = deliver.data(&from, &done.rcpts, bytes).await;
                        replies.resize(done.rcpts.len(), "451 4.3.0 internal error".into());
                        replies
                    }
                    Data::TooLarge => vec!["552 5.3.4 message too big".into(); done.rcpts.len()],
                    Data::Malformed => {
                        vec!["500 5.5.2 line too long in message".into(); done.rcpts.len()]
                    }
                };
                for r in replies {
                    push(&mut out, &r);
                }
                None
            }
            "RSET" => {
                session = Transaction::default();
                Some("250 2.0.0 Ok".into())
            }
            "NOOP" => Some("250 2.0.0 Ok".into()),
            "VRFY" => Some("252 2.5.0 cannot verify, send some mail".into()),
            "QUIT" => {
                push(&mut out, &format!("221 2.0.0 {hostname} closing"));
                let _ = send(&mut write, &out).await;
                return;
            }
            _ => Some("500 5.5.2 command not recognised".into()),
        };
        if let Some(reply) = reply {
            if reply.starts_with('5') && !reply.starts_with("550") {
                errors += 1;
            }
            push(&mut out, &reply);
        }
        if errors >= MAX_ERRORS {
            push(&mut out, "421 4.7.0 too many errors, closing");
            let _ = send(&mut write, &out).await;
            return;
        }
    }
}

#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    rcpts: Vec<String>,
}

fn push(out: &mut Vec<u8>, reply: &str) {
    out.extend_from_slice(reply.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `FROM:<a@b> SIZE=10` -> `a@b` (the null path gives an empty string).
pub fn path_arg(arg: &str, keyword: &str) -> Option<String> {
    let arg = arg.trim_start();
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let path = rest.split_whitespace().next().unwrap_or("");
    let inner = path.strip_prefix('<')?.strip_suffix('>')?;
    // A source route (`<@a,@b:c@d>`) keeps only the mailbox.
    let inner = inner.rsplit_once(':').map_or(inner, |(_, m)| m);
    Some(inner.to_owned())
}

enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Read one line (with its LF) into `buf`; a longer line is consumed and reported.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let used = chunk.len();
        if buf.len() + used > max {
            too_long = true;
            buf.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
        reader.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

enum Data {
    Message(Vec<u8>),
    TooLarge,
    Malformed,
}

/// The message up to the lone `.`, dot-unstuffed; read to the end even when too large.
async fn read_data<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    max_size: usize,
) -> std::io::Result<Data> {
    let mut message = Vec::new();
    let mut line = Vec::new();
    let mut too_large = false;
    let mut malformed = false;
    loop {
        line.clear();
        // Silence is cut at IDLE inside a message too, not only at DATA_TIMEOUT's end.
        let read = tokio::time::timeout(IDLE, read_line(reader, &mut line, MAX_DATA_LINE))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        match read? {
            Line::Eof => {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Line::TooLong => {
                malformed = true;
                continue;
            }
            Line::Complete => {}
        }
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        if line.last() != Some(&b'\n') {
            // The connection ended inside the message.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let content = line.strip_prefix(b".").unwrap_or(&line);
        if message.len() + content.len() > max_size {
            too_large = true;
            message.clear();
        }
        if !too_large {
            message.extend_from_slice(content);
        }
    }
    Ok(if malformed {
        Data::Malformed
    } else if too_large {
        Data::TooLarge
    } else {
        Data::Message(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            path_arg("FROM:<a@b.example> SIZE=10", "FROM:").as_deref(),
            Some("a@b.example")
        );
        assert_eq!(path_arg("from: <>", "FROM:").as_deref(), Some(""));
        assert_eq!(
            path_arg("TO:<@x,@y:c@d.example>", "TO:").as_deref(),
            Some("c@d.example")
        );
        assert_eq!(path_arg("TO:c@d.example", "TO:"), None);
        assert_eq!(path_arg("", "TO:"), None);
    }
}
