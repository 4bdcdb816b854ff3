//! Postfix's delivery log lines (`maillog_file` or syslog), pure: a line in, the
//! delivery attempt it reports out. Only the smtp/lmtp/local delivery agents' lines with
//! `status=` matter; everything else is `None` quickly.

/// How a delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
    Expired,
}

/// One delivery attempt for one recipient.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt<'a> {
    pub queue_id: &'a str,
    pub to: &'a str,
    /// The remote host's address (`relay=mx.example.org[192.0.2.1]:25`).
    pub ip: Option<&'a str>,
    /// Seconds from arrival to this attempt (`delay=`).
    pub delay: Option<f64>,
    /// The enhanced status code (`dsn=`).
    pub dsn: Option<&'a str>,
    pub status: Status,
    /// The text in parentheses after the status: the server's reply or Postfix's note.
    pub text: &'a str,
}

impl Attempt<'_> {
    /// The remote server's reply inside the text (`host ... said: 550 ...`), else the text.
    pub fn reply(&self) -> &str {
        match self.text.split_once(" said: ") {
            Some((_, reply)) => reply.split(" (in reply to ").next().unwrap_or(reply),
            None => self.text,
        }
    }
}

/// Read one log line.
pub fn parse(line: &str) -> Option<Attempt<'_>> {
    // Cheap rejection first: most lines are not delivery results.
    let status_at = line.find(", status=")?;
    let tag_end = line.find("]: ")?;
    let program = line[..tag_end].rsplit(' ').next()?;
    if !program.contains("postfix") {
        return None;
    }
    let rest = &line[tag_end + 3..];
    let (queue_id, fields) = rest.split_once(": ")?;
    if queue_id.is_empty() || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let fields_end = status_at.checked_sub(tag_end + 3 + queue_id.len() + 2)?;
    let head = fields.get(..fields_end)?;
    let tail = &fields[fields_end + ", status=".len()..];
    let (status_word, text) = tail.split_once(' ').unwrap_or((tail, ""));
    let status = match status_word {
        "sent" => Status::Sent,
        "deferred" => Status::Deferred,
        "bounced" => Status::Bounced,
        "expired" => Status::Expired,
        _ => return None,
    };
    let text = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text.trim());
    let mut to = None;
    let mut ip = None;
    let mut delay = None;
    let mut dsn = None;
    for field in head.split(", ") {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "to" => to = Some(value.trim_start_matches('<').trim_end_matches('>')),
            "relay" => {
                ip = value
                    .split_once('[')
                    .and_then(|(_, rest)| rest.split_once(']'))
                    .map(|(ip, _)| ip)
                    .filter(|ip| !ip.is_empty());
            }
            "delay" => delay = value.parse().ok(),
            "dsn" => dsn = Some(value),
            _ => {}
        }
    }
    Some(Attempt {
        queue_id,
        to: to?,
        ip,
        delay,
        dsn,
        status,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_3_7_lines() {
        let sent = "Dec  2 14:00:01 mta postfix/smtp[4242]: 4QZ1xk0Lq2z9sT: to=<Bob@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=0.35, delays=0.02/0.01/0.2/0.12, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 7F3A)";
        let a = parse(sent).unwrap();
        assert_eq!(a.queue_id, "4QZ1xk0Lq2z9sT");
        assert_eq!(a.to, "Bob@example.org");
        assert_eq!(a.ip, Some("192.0.2.10"));
        assert_eq!(a.delay, Some(0.35));
        assert_eq!(a.dsn, Some("2.0.0"));
        assert_eq!(a.status, Status::Sent);
        assert_eq!(a.text, "250 2.0.0 Ok: queued as 7F3A");

        let deferred = "2026-12-02T14:00:02.123456+00:00 mta postfix/smtp[4243]: 4QZ1xk0Lq2z9sU: to=<full@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=4.2.2, status=deferred (host mx.example.org[192.0.2.10] said: 452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full (in reply to RCPT TO command))";
        let a = parse(deferred).unwrap();
        assert_eq!(a.status, Status::Deferred);
        assert_eq!(
            a.reply(),
            "452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full"
        );

        let none = "Dec  2 14:00:03 mta postfix/smtp[1]: 5ABC: to=<a@b.example>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to b.example[192.0.2.1]:25: Connection timed out)";
        let a = parse(none).unwrap();
        assert_eq!(a.ip, None);
        assert_eq!(
            a.reply(),
            "connect to b.example[192.0.2.1]:25: Connection timed out"
        );

        let orig_to = "Dec  2 14:00:04 mta postfix/lmtp[9]: 6DEF: to=<x@y.example>, orig_to=<alias@y.example>, relay=127.0.0.1[127.0.0.1]:2424, delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)";
        assert_eq!(parse(orig_to).unwrap().to, "x@y.example");
    }

    #[test]
    fn other_lines_are_skipped() {
        for line in [
            "Dec  2 14:00:00 mta postfix/qmgr[1]: 4QZ: from=<a@b.example>, size=300, nrcpt=1 (queue active)",
            "Dec  2 14:00:00 mta postfix/smtpd[2]: connect from localhost[127.0.0.1]",
            "Dec  2 14:00:00 mta postfix/cleanup[3]: 4QZ: message-id=<x@y>",
            "Dec  2 14:00:00 mta dovecot[4]: x: to=<a@b>, status=sent",
            "",
            "status=sent",
            "]: : to=<>, status=",
        ] {
            assert_eq!(parse(line), None, "{line}");
        }
    }
}
