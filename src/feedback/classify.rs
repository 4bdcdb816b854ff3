//! SparkPost's bounce classes from a remote server's reply: a pure rule table over the
//! enhanced status code and the reply text, first match wins. The corpus of real-world
//! replies in `tests/data/bounce-corpus.json` measures it.

/// SparkPost's bounce classes (the numbers consumers see as `bounce_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BounceClass {
    Undetermined = 1,
    InvalidRecipient = 10,
    SoftBounce = 20,
    DnsFailure = 21,
    MailboxFull = 22,
    TooLarge = 23,
    Timeout = 24,
    AdminFailure = 25,
    NoRcpt = 30,
    Generic = 40,
    MailBlock = 50,
    SpamBlock = 51,
    SpamContent = 52,
    ProhibitedAttachment = 53,
    RelayingDenied = 54,
    AutoReply = 60,
    TransientFailure = 70,
    Subscribe = 80,
    Unsubscribe = 90,
    ChallengeResponse = 100,
}

impl BounceClass {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Hard bounces put the recipient on the suppression list.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            BounceClass::InvalidRecipient | BounceClass::NoRcpt | BounceClass::Unsubscribe
        )
    }
}

/// Text rules: any of the phrases (lower case) in the reply gives the class. Ordered:
/// a reply naming a block list is a spam block even when it also says "rejected".
const TEXT_RULES: &[(BounceClass, &[&str])] = &[
    (
        BounceClass::SpamBlock,
        &[
            "spamhaus",
            "spamcop",
            "barracuda",
            "sorbs",
            "dnsbl",
            "block list",
            "blocklist",
            "blacklist",
            "black list",
            "blocked using",
            "listed at",
            "banned sending ip",
            "not accepted from this ip",
            "user complaints",
            "unsolicited mail originating",
            "poor reputation",
            "ip reputation",
            "[tss04]",
            "[bl21]",
        ],
    ),
    (
        BounceClass::ProhibitedAttachment,
        &["attachment", "virus", "malware", "potential security issue"],
    ),
    (
        BounceClass::SpamContent,
        &[
            "likely unsolicited",
            "rejected as spam",
            "detected as spam",
            "looks like spam",
            "spam content",
            "content filter",
            "message content rejected",
            "spam message rejected",
        ],
    ),
    (
        BounceClass::RelayingDenied,
        &[
            "relay access denied",
            "relaying denied",
            "relay not permitted",
            "relaying not allowed",
            "unable to relay",
            "list of allowed rcpthosts",
            "not permitted to relay",
        ],
    ),
    (
        BounceClass::MailboxFull,
        &[
            "mailbox full",
            "mailbox is full",
            "over quota",
            "quota exceeded",
            "exceeded storage",
            "over the allowed quota",
            "insufficient storage",
            "mailbox has exceeded",
            "quotaexceeded",
        ],
    ),
    (
        BounceClass::TooLarge,
        &[
            "too large",
            "size exceeds",
            "exceeds size limit",
            "message size limit",
            "exceeded google's message size",
            "sizelimit",
        ],
    ),
    (
        BounceClass::InvalidRecipient,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "does not exist",
            "doesn't have a",
            "mailbox unavailable",
            "mailbox not found",
            "no mailbox here",
            "invalid recipient",
            "invalid mailbox",
            "recipient not found",
            "recipnotfound",
            "recipientnotfound",
            "address rejected",
            "unrouteable address",
            "user not found",
            "no such recipient",
            "account is disabled",
            "is disabled",
            "unknown recipient",
        ],
    ),
    (
        BounceClass::DnsFailure,
        &[
            "host or domain name not found",
            "name service error",
            "host not found",
            "domain not found",
            "couldn't find any host",
            "couldn't find a mail exchanger",
            "nonexistentdomain",
            "nonexistent domain",
            "non-existent hosts",
            "no mx",
            "loops back to myself",
        ],
    ),
    (
        BounceClass::Timeout,
        &[
            "timed out",
            "timeout",
            "in the queue too long",
            "retry time not reached",
            "retry timeout exceeded",
            "message expired",
            "queue.expired",
            "wasn't able to establish an smtp connection",
            "read error",
        ],
    ),
    (
        BounceClass::TransientFailure,
        &[
            "greylist",
            "graylist",
            "try again later",
            "server busy",
            "temporarily deferred",
        ],
    ),
    (
        BounceClass::MailBlock,
        &[
            "policy",
            "blocked",
            "access denied",
            "administrative prohibition",
            "not authorized",
            "authentication required",
            "unauthenticated",
        ],
    ),
];

/// Status-code rules for replies whose text said nothing the table knows.
fn by_status(status: &str) -> Option<BounceClass> {
    let class = match status {
        "5.1.0" | "5.1.1" | "5.1.6" | "5.1.10" | "5.2.1" => BounceClass::InvalidRecipient,
        "4.2.2" | "5.2.2" => BounceClass::MailboxFull,
        "5.2.3" | "5.3.4" => BounceClass::TooLarge,
        "5.1.2" | "4.4.3" | "5.4.4" => BounceClass::DnsFailure,
        "4.4.1" | "4.4.2" | "4.4.7" | "5.4.7" => BounceClass::Timeout,
        "5.7.1" | "5.7.0" => BounceClass::MailBlock,
        "5.4.6" | "5.4.14" => BounceClass::Generic,
        _ if status.starts_with('4') => BounceClass::SoftBounce,
        _ if status.starts_with('5') => BounceClass::Generic,
        _ => return None,
    };
    Some(class)
}

/// The enhanced status code (`5.1.1`) in a reply, if it has one.
pub fn enhanced_status(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if boundary
            && matches!(bytes[i], b'2' | b'4' | b'5')
            && let Some(len) = status_len(&bytes[i..])
        {
            return Some(text[i..i + len].to_owned());
        }
        i += 1;
    }
    None
}

/// `c.sss.ddd` at the start of `b`, followed by a non-digit: its length.
fn status_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize, max: usize| {
        b[from..]
            .iter()
            .take(max + 1)
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    if b.get(1) != Some(&b'.') {
        return None;
    }
    let subject = digits(2, 3);
    if subject == 0 || subject > 3 || b.get(2 + subject) != Some(&b'.') {
        return None;
    }
    let detail_at = 3 + subject;
    let detail = digits(detail_at, 3);
    if detail == 0 || detail > 3 {
        return None;
    }
    let end = detail_at + detail;
    match b.get(end) {
        Some(c)
            if c.is_ascii_alphanumeric()
                || (*c == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit)) =>
        {
            None
        }
        _ => Some(end),
    }
}

/// The basic SMTP reply code at the start of a reply (`550`), if any.
pub fn reply_code(text: &str) -> Option<u16> {
    let t = text.trim_start();
    let t = t.strip_prefix("smtp;").map(str::trim_start).unwrap_or(t);
    let t = t.trim_start_matches('#');
    let code = t.get(..3)?;
    let after = t.as_bytes().get(3);
    if !matches!(after, None | Some(b' ' | b'-' | b':')) {
        return None;
    }
    code.parse().ok().filter(|c| (200..600).contains(c))
}

/// Classify a reply: `status` is the DSN's `Status:` (or `None`), `text` the diagnostic.
pub fn classify(status: Option<&str>, text: &str) -> BounceClass {
    let lower = text.to_lowercase();
    let found = enhanced_status(text);
    // A temporary reply is never a hard bounce, whatever its text says.
    let temporary = status
        .or(found.as_deref())
        .is_some_and(|s| s.starts_with('4'))
        || reply_code(text).is_some_and(|c| (400..500).contains(&c));
    for (class, phrases) in TEXT_RULES {
        if !(temporary && class.is_hard()) && phrases.iter().any(|p| lower.contains(p)) {
            return *class;
        }
    }
    let status = status
        .filter(|s| !s.is_empty() && *s != "5.0.0" && *s != "4.0.0")
        .or(found.as_deref())
        .or(status);
    if let Some(class) = status.and_then(by_status) {
        return if temporary && class.is_hard() {
            BounceClass::SoftBounce
        } else {
            class
        };
    }
    match reply_code(text) {
        _ if temporary => BounceClass::SoftBounce,
        Some(c) if c >= 500 => BounceClass::Generic,
        Some(c) if c >= 400 => BounceClass::SoftBounce,
        _ => BounceClass::Undetermined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_enhanced_codes_and_reply_codes() {
        assert_eq!(
            enhanced_status("550-5.1.1 The email account").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_status("quota (size). (#5.2.2)").as_deref(),
            Some("5.2.2")
        );
        assert_eq!(enhanced_status("from 10.5.1.1 said"), None);
        assert_eq!(enhanced_status("version 1.2.3"), None);
        assert_eq!(
            enhanced_status("550 5.1.10 RESOLVER").as_deref(),
            Some("5.1.10")
        );
        assert_eq!(reply_code("smtp; 550 5.1.1 x"), Some(550));
        assert_eq!(reply_code("#550 5.1.1 x"), Some(550));
        assert_eq!(reply_code("5501 nope"), None);
        assert_eq!(reply_code("Sorry"), None);
    }

    #[test]
    fn text_outranks_status_and_blocklists_outrank_rejections() {
        assert_eq!(
            classify(
                Some("5.7.1"),
                "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
            ),
            BounceClass::SpamBlock
        );
        assert_eq!(
            classify(Some("5.7.1"), "554 5.7.1 <a@b>: Relay access denied"),
            BounceClass::RelayingDenied
        );
        assert_eq!(
            classify(Some("5.1.1"), "550 5.1.1 something new"),
            BounceClass::InvalidRecipient
        );
        assert_eq!(
            classify(None, "451 4.3.0 local problem"),
            BounceClass::SoftBounce
        );
        assert_eq!(classify(None, "no idea"), BounceClass::Undetermined);
        assert_eq!(
            classify(Some("5.0.0"), "554 5.0.0 go away"),
            BounceClass::Generic
        );
    }

    #[test]
    fn hard_classes() {
        let hard: Vec<u8> = [
            BounceClass::InvalidRecipient,
            BounceClass::NoRcpt,
            BounceClass::Unsubscribe,
            BounceClass::MailboxFull,
            BounceClass::SpamBlock,
        ]
        .into_iter()
        .filter(|c| c.is_hard())
        .map(BounceClass::code)
        .collect();
        assert_eq!(hard, [10, 30, 90]);
    }
}
