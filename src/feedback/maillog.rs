//! The MTA's delivery log lines, pure: a line in, the delivery attempts it reports out.
//! Postfix (`maillog_file` or syslog): the smtp/lmtp/local delivery agents' lines with
//! `status=`, one recipient each. Sendmail (syslog, `sm-mta` on Debian): lines with
//! `stat=`, which may name several recipients delivered together. Everything else is
//! skipped quickly.

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
    /// When the line was written: the time of the attempt.
    pub time: Option<LineTime>,
}

/// A log line's time stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTime {
    /// RFC 3339 (`2026-12-02T14:00:02.123456+00:00`, rsyslog's precise format): Unix
    /// milliseconds.
    Exact(u64),
    /// The traditional syslog stamp (`Dec  2 14:00:01`, Postfix's `maillog_file` too):
    /// local time with no year.
    Local {
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
        second: u32,
    },
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The time stamp a log line starts with, if it has one.
pub fn line_time(line: &str) -> Option<LineTime> {
    let head = line.get(..line.len().min(40))?;
    if head.as_bytes().first()?.is_ascii_digit() {
        return rfc3339(head.split(' ').next()?).map(LineTime::Exact);
    }
    let mut words = head.split_whitespace();
    let word = words.next()?;
    let month = MONTHS.iter().position(|m| *m == word)? as u32 + 1;
    let day: u32 = words.next()?.parse().ok()?;
    let mut clock = words.next()?.split(':').map(|p| p.parse::<u32>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    ((1..=31).contains(&day) && hour < 24 && minute < 60 && second <= 60).then_some(
        LineTime::Local {
            month,
            day,
            hour,
            minute,
            second,
        },
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` as Unix milliseconds.
fn rfc3339(stamp: &str) -> Option<u64> {
    let date = mail_parser::DateTime::parse_rfc3339(stamp).filter(|d| d.is_valid())?;
    let secs = u64::try_from(date.to_timestamp()).ok()?;
    // mail-parser skips the fraction: its first three digits are the milliseconds.
    let frac = stamp.split_once('.').map_or("", |(_, f)| f);
    let millis = frac
        .bytes()
        .take_while(u8::is_ascii_digit)
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |n, d| n * 10 + u64::from(d - b'0'));
    Some(secs * 1000 + millis)
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

/// The delivery attempts one log line reports, Postfix's or Sendmail's. Most lines
/// are not delivery results: they are turned away by one scan for the status key.
pub fn attempts(line: &str) -> Vec<Attempt<'_>> {
    if line.contains(", status=") {
        postfix(line).into_iter().collect()
    } else if line.contains(", stat=") {
        sendmail(line).unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Read one Postfix log line.
fn postfix(line: &str) -> Option<Attempt<'_>> {
    let (program, queue_id, fields) = tagged(line)?;
    if !program.starts_with("postfix") {
        return None;
    }
    let (head, tail) = fields.split_once(", status=")?;
    let (status_word, text) = tail.split_once(' ').unwrap_or((tail, ""));
    let status = match status_word {
        "sent" => Status::Sent,
        "deferred" => Status::Deferred,
        "bounced" => Status::Bounced,
        "expired" => Status::Expired,
        _ => return None,
    };
    let f = Fields::read(head);
    Some(Attempt {
        queue_id,
        to: f.to?.trim_start_matches('<').trim_end_matches('>'),
        ip: f.ip,
        delay: f.delay.and_then(|d| d.parse().ok()),
        dsn: f.dsn,
        status,
        text: in_parentheses(text),
        time: line_time(line),
    })
}

/// A line that says the MTA has a message in its queue, with its envelope sender:
/// Postfix's `qmgr: QID: from=<s>, size=N, nrcpt=N (queue active)` (logged once the
/// queue file is committed) or Sendmail's `QID: from=<s>, size=N, class=0, nrcpts=N,
/// ...` (logged once the message is accepted). (queue id, sender).
pub fn queued_sender(line: &str) -> Option<(&str, &str)> {
    let (program, queue_id, fields) = tagged(line)?;
    let queue_line = if program.starts_with("postfix") {
        program.ends_with("/qmgr") && fields.contains(", nrcpt=")
    } else {
        (program == "sendmail" || program == "sm-mta") && fields.contains(", nrcpts=")
    };
    if !queue_line {
        return None;
    }
    let sender = fields.strip_prefix("from=<")?.split_once(">,")?.0;
    Some((queue_id, sender))
}

/// Read one Sendmail log line, e.g. `sm-mta[812]: 6B2GqOcU028373: to=<a@example.org>,<b@example.org>,
/// delay=00:00:01, xdelay=00:00:01, mailer=relay, pri=120432, relay=mx.example.org.
/// [192.0.2.10], dsn=2.0.0, stat=Sent (6B2Gq... Message accepted for delivery)`.
fn sendmail(line: &str) -> Option<Vec<Attempt<'_>>> {
    let (program, queue_id, fields) = tagged(line)?;
    // The MTA daemon; not the submission queue runner (sm-msp-queue), whose queue ids
    // are not the ones the milter saw.
    if !(program == "sendmail" || program == "sm-mta") {
        return None;
    }
    let (head, stat) = fields.split_once(", stat=")?;
    let f = Fields::read(head);
    let (status, text) = if let Some(text) = stat.strip_prefix("Sent") {
        (Status::Sent, in_parentheses(text))
    } else if let Some(text) = stat.strip_prefix("Deferred") {
        (Status::Deferred, text.trim_start_matches(':').trim())
    } else if f.dsn.is_some_and(|d| d.starts_with('5')) {
        (Status::Bounced, stat.trim())
    } else {
        // `queued` and the like: not a delivery result.
        return None;
    };
    let delay = f.delay.and_then(sendmail_delay);
    let time = line_time(line);
    let attempts = f
        .to?
        .split(',')
        .map(|address| address.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|address| !address.is_empty())
        .map(|address| Attempt {
            queue_id,
            to: address,
            ip: f.ip,
            delay,
            dsn: f.dsn,
            status,
            text,
            time,
        })
        .collect();
    Some(attempts)
}

/// `... PROGRAM[PID]: QUEUEID: FIELDS` as (program, queue id, fields).
fn tagged(line: &str) -> Option<(&str, &str, &str)> {
    let tag_end = line.find("]: ")?;
    let tag = line[..tag_end].rsplit(' ').next()?;
    let program = tag.split('[').next()?;
    let (queue_id, fields) = line[tag_end + 3..].split_once(": ")?;
    if queue_id.is_empty() || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((program, queue_id, fields))
}

/// The fields before the status, as written.
struct Fields<'a> {
    to: Option<&'a str>,
    /// The remote address: the last bracketed part of `relay=` (Postfix
    /// `mx.example.org[192.0.2.10]:25`, Sendmail `mx.example.org. [192.0.2.10]`).
    ip: Option<&'a str>,
    delay: Option<&'a str>,
    dsn: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn read(head: &'a str) -> Self {
        let mut f = Fields {
            to: None,
            ip: None,
            delay: None,
            dsn: None,
        };
        for field in head.split(", ") {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "to" => f.to = Some(value),
                "relay" => {
                    f.ip = value
                        .rsplit_once('[')
                        .and_then(|(_, rest)| rest.split_once(']'))
                        .map(|(ip, _)| ip)
                        .filter(|ip| !ip.is_empty());
                }
                "delay" => f.delay = Some(value),
                "dsn" => f.dsn = Some(value),
                _ => {}
            }
        }
        f
    }
}

/// ` (text)` as `text`; other text trimmed.
fn in_parentheses(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text)
}

/// Sendmail's `delay=` (`HH:MM:SS`, `D+HH:MM:SS` past a day) in seconds.
fn sendmail_delay(value: &str) -> Option<f64> {
    let (days, clock) = match value.split_once('+') {
        Some((days, clock)) => (days.parse::<u64>().ok()?, clock),
        None => (0, value),
    };
    let mut seconds = 0u64;
    for part in clock.split(':') {
        seconds = seconds
            .checked_mul(60)?
            .checked_add(part.parse::<u64>().ok()?)?;
    }
    Some(days.checked_mul(86_400)?.checked_add(seconds)? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_senders() {
        let postfix = "Dec  6 06:14:53 mta postfix/qmgr[25037]: 468EA99604D: from=<bounces+3878-1a2b3c4d@bounces.example.net>, size=1672, nrcpt=1 (queue active)";
        assert_eq!(
            queued_sender(postfix),
            Some(("468EA99604D", "bounces+3878-1a2b3c4d@bounces.example.net"))
        );
        let sendmail = "Dec  6 06:14:53 mta sm-mta[812]: 6B2GqOcU028373: from=<bounces+3878-1a2b3c4d@bounces.example.net>, size=1672, class=0, nrcpts=1, msgid=<m@x>, proto=ESMTP, daemon=MTA-reinject, relay=localhost [127.0.0.1]";
        assert_eq!(
            queued_sender(sendmail),
            Some((
                "6B2GqOcU028373",
                "bounces+3878-1a2b3c4d@bounces.example.net"
            ))
        );
        // A message-id line, a delivery, a bounce's null sender: not queue lines of ours.
        assert_eq!(
            queued_sender("Dec  6 06:14:53 mta postfix/cleanup[1]: 468EA99604D: message-id=<m@x>"),
            None
        );
        assert_eq!(
            queued_sender(
                "Dec  6 06:14:53 mta postfix/smtp[1]: 468EA99604D: to=<a@b>, relay=x, delay=1, dsn=2.0.0, status=sent (ok)"
            ),
            None
        );
        assert_eq!(
            queued_sender(
                "Dec  6 06:14:53 mta postfix/qmgr[1]: 468EA99604D: from=<>, size=1, nrcpt=1 (queue active)"
            ),
            Some(("468EA99604D", ""))
        );
    }

    #[test]
    fn line_times() {
        assert_eq!(
            line_time("Dec  2 14:00:01 mta postfix/smtp[1]: x"),
            Some(LineTime::Local {
                month: 12,
                day: 2,
                hour: 14,
                minute: 0,
                second: 1
            })
        );
        // 2026-12-02T14:00:02.123Z
        let exact = 1_796_220_002_123;
        assert_eq!(
            line_time("2026-12-02T14:00:02.123456+00:00 mta postfix/smtp[1]: x"),
            Some(LineTime::Exact(exact))
        );
        assert_eq!(
            line_time("2026-12-02T15:30:02.123+01:30 mta x"),
            Some(LineTime::Exact(exact))
        );
        assert_eq!(
            line_time("2026-12-02T14:00:02Z mta x"),
            Some(LineTime::Exact(exact - 123))
        );
        for bad in [
            "",
            "Foo  2 14:00:01 x",
            "Dec 32 14:00:01 x",
            "2026-13-02T14:00:02Z x",
            "2026-12-02T14:00 x",
            "Dec  2 25:00:00",
        ] {
            assert_eq!(line_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn postfix_3_7_lines() {
        let sent = "Dec  2 14:00:01 mta postfix/smtp[4242]: 4QZ1xk0Lq2z9sT: to=<Bob@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=0.35, delays=0.02/0.01/0.2/0.12, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 7F3A)";
        let a = postfix(sent).unwrap();
        assert_eq!(a.queue_id, "4QZ1xk0Lq2z9sT");
        assert_eq!(a.to, "Bob@example.org");
        assert_eq!(a.ip, Some("192.0.2.10"));
        assert_eq!(a.delay, Some(0.35));
        assert_eq!(a.dsn, Some("2.0.0"));
        assert_eq!(a.status, Status::Sent);
        assert_eq!(a.text, "250 2.0.0 Ok: queued as 7F3A");

        let deferred = "2026-12-02T14:00:02.123456+00:00 mta postfix/smtp[4243]: 4QZ1xk0Lq2z9sU: to=<full@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=4.2.2, status=deferred (host mx.example.org[192.0.2.10] said: 452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full (in reply to RCPT TO command))";
        let a = postfix(deferred).unwrap();
        assert_eq!(a.status, Status::Deferred);
        assert_eq!(
            a.reply(),
            "452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full"
        );

        let none = "Dec  2 14:00:03 mta postfix/smtp[1]: 5ABC: to=<a@b.example>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to b.example[192.0.2.1]:25: Connection timed out)";
        let a = postfix(none).unwrap();
        assert_eq!(a.ip, None);
        assert_eq!(
            a.reply(),
            "connect to b.example[192.0.2.1]:25: Connection timed out"
        );

        let orig_to = "Dec  2 14:00:04 mta postfix/lmtp[9]: 6DEF: to=<x@y.example>, orig_to=<alias@y.example>, relay=127.0.0.1[127.0.0.1]:2424, delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok)";
        assert_eq!(postfix(orig_to).unwrap().to, "x@y.example");
    }

    #[test]
    fn sendmail_8_17_lines() {
        let sent = "Dec  2 16:52:24 mta sm-mta[28374]: 6B2GqOcU028373: to=<cc@example.com>,<To@example.org>, delay=00:00:01, xdelay=00:00:00, mailer=relay, pri=120432, relay=mx.example.org. [192.0.2.10], dsn=2.0.0, stat=Sent (6B2GqOdU028375 Message accepted for delivery)";
        let got = attempts(sent);
        let to: Vec<&str> = got.iter().map(|a| a.to).collect();
        assert_eq!(to, ["cc@example.com", "To@example.org"]);
        for a in &got {
            assert_eq!(a.queue_id, "6B2GqOcU028373");
            assert_eq!(a.ip, Some("192.0.2.10"));
            assert_eq!(a.delay, Some(1.0));
            assert_eq!(a.dsn, Some("2.0.0"));
            assert_eq!(a.status, Status::Sent);
            assert_eq!(a.text, "6B2GqOdU028375 Message accepted for delivery");
        }

        let deferred = "Dec  2 16:52:25 mta sendmail[28380]: 6B2GqOcV028379: to=<full@example.org>, delay=1+02:03:04, xdelay=00:00:00, mailer=relay, pri=120432, relay=[127.0.0.1] [127.0.0.1], dsn=4.2.2, stat=Deferred: 452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full";
        let [a] = attempts(deferred).try_into().unwrap();
        assert_eq!(a.status, Status::Deferred);
        assert_eq!(a.ip, Some("127.0.0.1"));
        assert_eq!(a.delay, Some(93_784.0));
        assert_eq!(
            a.reply(),
            "452 4.2.2 <full@example.org>: Recipient address rejected: Mailbox full"
        );

        let bounced = "Dec  2 16:52:26 mta sm-mta[28381]: 6B2GqOcW028380: to=<dead@example.org>, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=120432, relay=[127.0.0.1] [127.0.0.1], dsn=5.1.1, stat=User unknown";
        let [a] = attempts(bounced).try_into().unwrap();
        assert_eq!(
            (a.status, a.text, a.to),
            (Status::Bounced, "User unknown", "dead@example.org")
        );

        let refused = "Dec  2 16:52:27 mta sm-mta[1]: 6B2GqOcX: to=<a@b.example>, delay=00:00:00, mailer=relay, pri=1, relay=b.example, dsn=4.0.0, stat=Deferred: Connection refused by b.example";
        let [a] = attempts(refused).try_into().unwrap();
        assert_eq!((a.ip, a.reply()), (None, "Connection refused by b.example"));
    }

    #[test]
    fn other_sendmail_lines_are_skipped() {
        for line in [
            "Dec  2 16:52:24 mta sm-mta[1]: 6B2GqOcU028373: from=<a@b.example>, size=300, class=0, nrcpts=1, msgid=<x@y>, proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]",
            "Dec  2 16:52:24 mta sm-mta[1]: 6B2GqOcU028373: to=<a@b.example>, delay=00:00:00, mailer=relay, pri=1, stat=queued",
            "Dec  2 16:52:24 mta sm-msp-queue[2]: 6B2Gq: to=root, ctladdr=root (0/0), delay=00:00:00, mailer=relay, pri=1, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, stat=Sent (ok)",
            "Dec  2 16:52:24 mta sm-mta[1]: 6B2GqOcU028373: Milter: data, reject=550 5.6.0 JSON parsing error",
            "Dec  2 16:52:24 mta sm-mta[1]: : to=<a@b>, stat=Sent",
        ] {
            assert!(attempts(line).is_empty(), "{line}");
        }
    }

    /// Every cut of real lines, and each with one character dropped, reads without a
    /// panic (the follower reads whatever the log holds, half-written lines included).
    #[test]
    fn damaged_lines_never_panic() {
        let lines = [
            "Dec  2 16:52:24 mta sm-mta[28374]: 6B2GqOcU028373: to=<cc@example.com>,<To@example.org>, delay=1+00:00:01, xdelay=00:00:00, mailer=relay, pri=120432, relay=mx.example.org. [192.0.2.10], dsn=2.0.0, stat=Sent (6B2GqOdU028375 Message accepted for delivery)",
            "Dec  2 14:00:02 mta postfix/smtp[4243]: 4QZ1xk0Lq2z9sU: to=<full@example.org>, relay=mx.example.org[192.0.2.10]:25, delay=1.2, dsn=4.2.2, status=deferred (host mx.example.org[192.0.2.10] said: 452 4.2.2 Mailbox full (in reply to RCPT TO command))",
            "Dec  2 16:52:26 mta sendmail[1]: Ä: to=<dé@example.org>, delay=99999999999999999999:00:00, relay=[, dsn=5.1.1, stat=Üser unknown",
        ];
        for line in lines {
            for (at, _) in line.char_indices() {
                let _ = attempts(&line[..at]);
                let mut dropped = line.to_owned();
                dropped.remove(at);
                let _ = attempts(&dropped);
            }
        }
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
            assert_eq!(postfix(line), None, "{line}");
        }
    }
}
