//! Reading what comes back to a bounce address: RFC 3464 delivery status notifications
//! (parsed with mail-parser), the plain-text bounces of servers that send no report
//! part (Exim, qmail, Yahoo), and auto-replies. Pure: bytes in, a [`Report`] out.

use mail_parser::{Message, MessageParser, MimeHeaders as _};

/// What a returned message says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub kind: ReportKind,
    /// `Reporting-MTA` without its type (`mta.example.com`).
    pub reporting_mta: Option<String>,
    pub recipients: Vec<RecipientReport>,
    /// Facts from the returned original message (or its headers), when included.
    pub original: Original,
    /// The report's `Date:` (Unix seconds): when it was written, i.e. at the attempt
    /// that gave up or was delayed.
    pub date: Option<u64>,
    /// `Arrival-Date` (Unix seconds): when the reporting MTA received the original.
    pub arrival: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportKind {
    /// A multipart/report delivery-status.
    Dsn,
    /// A bounce in plain text, read as well as can be done.
    PlainText,
    /// An out-of-office or other automatic reply.
    AutoReply,
    /// Nothing recognisable.
    #[default]
    Unknown,
}

/// One recipient's block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientReport {
    /// `Final-Recipient` (or `Original-Recipient`), the address only.
    pub recipient: String,
    pub action: Action,
    /// The enhanced status code (`5.1.1`).
    pub status: Option<String>,
    /// The remote server's reply (`Diagnostic-Code` without its type).
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
    /// `Last-Attempt-Date` (Unix seconds).
    pub last_attempt: Option<u64>,
}

impl RecipientReport {
    /// The remote server's address when `Remote-MTA` gives one (`192.0.2.1`, or a name
    /// followed by `[192.0.2.1]`), not a host name.
    pub fn remote_ip(&self) -> Option<String> {
        let mta = self.remote_mta.as_deref()?.trim();
        let inner = match mta.rsplit_once('[') {
            Some((_, rest)) => rest.split(']').next()?,
            None => mta,
        };
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        inner
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| ip.to_string())
    }
}

/// `Remote-MTA` as a host name gets the address the report's text gives it: Postfix
/// writes the name there and `host mx.example.org[192.0.2.10] said: ...` in the text.
fn with_address(mta: String, notice: &str) -> String {
    if mta.contains('[') || mta.parse::<std::net::IpAddr>().is_ok() {
        return mta;
    }
    let needle = format!("{mta}[");
    let address = notice
        .find(&needle)
        .map(|at| &notice[at + needle.len()..])
        .and_then(|rest| rest.split_once(']'))
        .map(|(ip, _)| ip)
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    match address {
        Some(ip) => format!("{mta} [{ip}]"),
        None => mta,
    }
}

/// An RFC 5322 date field's value as Unix seconds.
fn date_value(value: &str) -> Option<u64> {
    let date = mail_parser::DateTime::parse_rfc822(value.trim())?;
    u64::try_from(date.to_timestamp()).ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    fn parse(value: &str) -> Option<Action> {
        let v = value.trim().to_ascii_lowercase();
        Some(match v.split_whitespace().next()? {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => return None,
        })
    }
}

/// Headers of the returned original message that tie a report to what we sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Original {
    pub message_id: Option<String>,
    /// Our `X-MSFBL` header: transmission and recipient, signed.
    pub msfbl: Option<String>,
    /// The envelope sender the original went out with, if the report names it.
    pub mail_from: Option<String>,
    pub to: Option<String>,
}

/// Read a returned message. Never fails: what cannot be read is [`ReportKind::Unknown`].
pub fn parse(raw: &[u8]) -> Report {
    let Some(message) = crate::mime::parse_message(raw) else {
        return Report::default();
    };
    if let Some(report) = delivery_status(&message) {
        return report;
    }
    // Bounces also say `Auto-Submitted: auto-replied` (Postfix, Exim): read them as
    // bounces first.
    let bounce = plain_text(&message);
    if bounce.as_ref().is_some_and(|b| !b.recipients.is_empty()) {
        return bounce.unwrap_or_default();
    }
    if is_auto_reply(&message) {
        return Report {
            kind: ReportKind::AutoReply,
            recipients: from_address(&message)
                .map(|a| RecipientReport {
                    recipient: a,
                    action: Action::Delivered,
                    status: None,
                    diagnostic: message.subject().map(str::to_owned),
                    remote_mta: None,
                    last_attempt: None,
                })
                .into_iter()
                .collect(),
            original: Original {
                message_id: message
                    .in_reply_to()
                    .as_text()
                    .map(|s| s.trim_matches(['<', '>']).to_owned()),
                ..Original::default()
            },
            ..Report::default()
        };
    }
    bounce.unwrap_or_default()
}

/// The multipart/report's `message/delivery-status` part, if any.
fn delivery_status(message: &Message) -> Option<Report> {
    let mut status_part = None;
    let mut notice = None;
    let mut original = Original::default();
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ct.ctype().to_ascii_lowercase().as_str(), sub.as_str()) {
            ("text", "plain") if notice.is_none() => {
                notice = part.text_contents().map(str::to_owned);
            }
            ("message", "delivery-status" | "global-delivery-status") => {
                status_part = Some(part.contents());
            }
            ("message", "rfc822" | "global") => {
                if let Some(inner) = part.message() {
                    original = original_facts(inner);
                }
            }
            ("text", "rfc822-headers" | "global-headers") => {
                if let Some(inner) = MessageParser::default().parse_headers(part.contents()) {
                    original = original_facts(&inner);
                }
            }
            _ => {}
        }
    }
    let fields = status_part?;
    let text = String::from_utf8_lossy(fields);
    let mut blocks = field_blocks(&text).into_iter();
    let per_message = blocks.next().unwrap_or_default();
    let reporting_mta = field(&per_message, "reporting-mta").map(strip_type);
    if original.mail_from.is_none() {
        original.mail_from = field(&per_message, "x-postfix-sender").map(strip_type);
    }
    let mut recipients: Vec<RecipientReport> = blocks
        .filter_map(|block| {
            let recipient = field(&block, "final-recipient")
                .or_else(|| field(&block, "original-recipient"))
                .map(strip_type)?;
            Some(RecipientReport {
                recipient: recipient.trim_matches(['<', '>']).to_owned(),
                action: field(&block, "action")
                    .and_then(|a| Action::parse(&a))
                    .unwrap_or(Action::Failed),
                status: field(&block, "status")
                    .map(|s| s.split_whitespace().next().unwrap_or("").to_owned()),
                diagnostic: field(&block, "diagnostic-code").map(strip_type),
                remote_mta: field(&block, "remote-mta").map(strip_type),
                last_attempt: field(&block, "last-attempt-date").and_then(|d| date_value(&d)),
            })
        })
        .collect();
    if let Some(notice) = &notice {
        for r in &mut recipients {
            r.remote_mta = r.remote_mta.take().map(|mta| with_address(mta, notice));
        }
    }
    Some(Report {
        kind: ReportKind::Dsn,
        reporting_mta,
        recipients,
        original,
        date: message
            .date()
            .and_then(|d| u64::try_from(d.to_timestamp()).ok()),
        arrival: field(&per_message, "arrival-date").and_then(|d| date_value(&d)),
    })
}

fn original_facts(m: &Message) -> Original {
    Original {
        message_id: m.message_id().map(str::to_owned),
        msfbl: m.header_raw("X-MSFBL").map(|v| v.trim().to_owned()),
        mail_from: m
            .return_address()
            .map(|a| a.trim_matches(['<', '>']).to_owned()),
        to: m
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned),
    }
}

/// Groups of `Name: value` fields separated by blank lines, continuation lines unfolded;
/// names lower-cased.
pub fn field_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

fn field(block: &[(String, String)], name: &str) -> Option<String> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// `rfc822; a@b` -> `a@b`, `smtp; 550 ...` -> `550 ...`.
fn strip_type(value: String) -> String {
    match value.split_once(';') {
        Some((kind, rest))
            if !kind.is_empty()
                && kind
                    .trim()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            rest.trim().to_owned()
        }
        _ => value.trim().to_owned(),
    }
}

fn from_address(m: &Message) -> Option<String> {
    m.from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_owned)
}

/// RFC 3834's `Auto-Submitted: auto-replied`, and the subjects and headers vacation
/// programs use without it.
fn is_auto_reply(m: &Message) -> bool {
    let header = |name: &str| m.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    if header("Auto-Submitted").is_some_and(|v| v.starts_with("auto-replied")) {
        return true;
    }
    if header("X-Autoreply").is_some() || header("X-Autorespond").is_some() {
        return true;
    }
    let subject = m.subject().unwrap_or("").to_ascii_lowercase();
    [
        "automatic reply",
        "auto:",
        "out of office",
        "autoreply",
        "auto-reply",
    ]
    .iter()
    .any(|p| subject.starts_with(p))
}

/// Lines that start the copy of the original in plain-text bounces.
const COPY_MARKERS: &[&str] = &[
    "this is a copy of the message",
    "below this line is a copy of the message",
    "original message follows",
    "----- original message -----",
    "------ this is a copy",
    "--- below this line",
    "----- transcript of session follows",
];

/// A plain-text bounce: the addresses it lists with the reply that follows each.
fn plain_text(m: &Message) -> Option<Report> {
    let from = from_address(m).unwrap_or_default().to_ascii_lowercase();
    let subject = m.subject().unwrap_or("").to_ascii_lowercase();
    let looks_like_bounce = from.starts_with("mailer-daemon")
        || from.starts_with("postmaster")
        || [
            "undeliver",
            "failure",
            "returned mail",
            "delivery status",
            "delivery failed",
            "could not be delivered",
        ]
        .iter()
        .any(|p| subject.contains(p));
    if !looks_like_bounce {
        return None;
    }
    let body = m.body_text(0)?;
    let lower = body.to_ascii_lowercase();
    let end = COPY_MARKERS
        .iter()
        .filter_map(|mark| lower.find(mark))
        .min()
        .unwrap_or(body.len());
    let (notice, copy) = body.split_at(end);
    let delayed = [
        "still being retried",
        "will continue to try",
        "has been delayed",
        "temporary",
    ]
    .iter()
    .any(|p| lower[..end].contains(p));
    let mut recipients: Vec<RecipientReport> = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let finish = |current: Option<(String, Vec<String>)>, out: &mut Vec<RecipientReport>| {
        if let Some((recipient, lines)) = current {
            let text = lines.join(" ");
            let reply = reply_text(&text);
            out.push(RecipientReport {
                status: crate::feedback::classify::enhanced_status(&reply),
                diagnostic: Some(reply).filter(|r| !r.is_empty()),
                recipient,
                action: if delayed {
                    Action::Delayed
                } else {
                    Action::Failed
                },
                remote_mta: None,
                last_attempt: None,
            });
        }
    };
    for line in notice.lines() {
        if let Some(address) = address_line(line) {
            finish(current.take(), &mut recipients);
            current = Some((address, Vec::new()));
        } else if line.trim().is_empty() {
            if current.as_ref().is_some_and(|(_, l)| !l.is_empty()) {
                finish(current.take(), &mut recipients);
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.trim().to_owned());
        }
    }
    finish(current, &mut recipients);
    let original = copy
        .split_once('\n')
        .and_then(|(_, rest)| MessageParser::default().parse_headers(rest.trim_start().as_bytes()))
        .map(|inner| original_facts(&inner))
        .unwrap_or_default();
    Some(Report {
        kind: ReportKind::PlainText,
        reporting_mta: None,
        recipients,
        original,
        date: m.date().and_then(|d| u64::try_from(d.to_timestamp()).ok()),
        arrival: None,
    })
}

/// A line that is only an address (`  a@b`, `<a@b>:`, `a@b:`), as bounce texts list them.
fn address_line(line: &str) -> Option<String> {
    let t = line.trim().trim_end_matches(':').trim();
    let t = t
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(t);
    let (local, domain) = t.rsplit_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !t.contains(char::is_whitespace)
        && !t.contains(['<', '>', '(', ')', ',', ';']);
    ok.then(|| t.to_owned())
}

/// From the lines under an address, the part that is the server's reply: from the first
/// SMTP code on, else all of it.
fn reply_text(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let start = words
        .iter()
        .position(|w| crate::feedback::classify::reply_code(w).is_some())
        .unwrap_or(0);
    words[start..].join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_blocks_unfold_and_split() {
        let blocks = field_blocks(
            "Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\nDiagnostic-Code: smtp; 550-5.1.1 first\r\n    second\r\n\r\n",
        );
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            field(&blocks[1], "diagnostic-code")
                .map(strip_type)
                .as_deref(),
            Some("550-5.1.1 first second")
        );
        assert_eq!(
            field(&blocks[0], "reporting-mta")
                .map(strip_type)
                .as_deref(),
            Some("mx.example.com")
        );
    }

    #[test]
    fn address_lines() {
        assert_eq!(
            address_line("  gone@example.net").as_deref(),
            Some("gone@example.net")
        );
        assert_eq!(
            address_line("<quota@example.com>:").as_deref(),
            Some("quota@example.com")
        );
        assert_eq!(address_line("host mx.example.net [192.0.2.1]"), None);
        assert_eq!(
            address_line("SMTP error after RCPT TO:<gone@example.net>:"),
            None
        );
    }

    #[test]
    fn attempt_facts_of_a_postfix_dsn() {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/dsn/postfix-dsn-5.1.1.eml"
        ))
        .unwrap();
        let report = parse(&raw);
        let r = &report.recipients[0];
        // The name from Remote-MTA, its address from the text part.
        assert_eq!(r.remote_ip().as_deref(), Some("192.0.2.10"));
        // Mon, 30 Nov 2026 09:00:03 and 09:00:01 +0000
        assert_eq!(report.date, Some(1_796_029_203));
        assert_eq!(report.arrival, Some(1_796_029_201));
        let ip = |mta: &str| {
            RecipientReport {
                remote_mta: Some(mta.into()),
                ..r.clone()
            }
            .remote_ip()
        };
        assert_eq!(ip("192.0.2.7").as_deref(), Some("192.0.2.7"));
        assert_eq!(
            ip("mx.example.org [192.0.2.8]").as_deref(),
            Some("192.0.2.8")
        );
        assert_eq!(ip("[IPv6:2001:db8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("mx.example.org"), None);
        assert_eq!(
            with_address("mx.example.org".into(), "no such text"),
            "mx.example.org"
        );
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(parse(b"").kind, ReportKind::Unknown);
        assert_eq!(parse(b"\xff\xfe not mail at all").kind, ReportKind::Unknown);
        assert_eq!(
            parse(b"From: a@b.example\r\nSubject: hello\r\n\r\nhi\r\n").kind,
            ReportKind::Unknown
        );
    }
}
