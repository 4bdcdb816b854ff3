//! SMTP replies for every way the core can refuse a message (docs/behaviour.md section 2).

use std::fmt;

/// An SMTP reply the MTA passes to the client at end of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code, e.g. `550`.
    pub code: &'static str,
    /// Enhanced status code, e.g. `5.6.0`.
    pub enhanced: &'static str,
    /// Reply text, already safe for one SMTP line.
    pub text: String,
}

impl Reply {
    fn new(code: &'static str, enhanced: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            text: sanitize(&text.into()),
        }
    }

    /// True for 4xx replies (the client should retry).
    pub fn is_temporary(&self) -> bool {
        self.code.starts_with('4')
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

/// Longest reply text line libmilter and indymilter accept.
const MAX_TEXT: usize = 980 - 10;

/// Replies never echo bytes that could break the SMTP line: control characters become
/// spaces, `%` (a format character for Sendmail) is dropped, and the text is cut to fit.
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    for ch in text.chars() {
        let ch = if ch.is_control() { ' ' } else { ch };
        if ch == '%' {
            continue;
        }
        if out.len() + ch.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(ch);
    }
    out
}

/// The JSON type names SparkPost uses in its replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonType {
    Object,
    Array,
    String,
    Boolean,
}

impl JsonType {
    fn name(self) -> &'static str {
        match self {
            JsonType::Object => "json object",
            JsonType::Array => "json array",
            JsonType::String => "string",
            JsonType::Boolean => "boolean",
        }
    }
}

/// Why a message is refused. Each maps to exactly one reply of docs/behaviour.md section 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    HeaderRepeated,
    /// The value is not JSON (or not UTF-8); carries the parser's line/column detail.
    JsonSyntax(String),
    NotAnObject,
    /// A field's value has the wrong type; the field is `metadata` or `options.<name>`.
    WrongType {
        field: String,
        expected: JsonType,
    },
    CampaignIdTooLong,
    TagNotString,
    TooManyTags,
    /// `list` is cc, bcc or archive; `entry` counts from 1.
    InvalidRecipient {
        list: &'static str,
        entry: usize,
    },
    TooManyRecipients,
    NotConfigured {
        option: &'static str,
        value: String,
    },
    UnconfiguredSendingDomain(String),
    TransmissionId,
    /// The body is larger than `max_message_size` and copies need it buffered.
    TooLarge,
    /// The copies together would be larger than `[reinject] max_copies_bytes`.
    CopiesTooLarge {
        limit: u64,
    },
    /// An AMPHTML part outside a multipart/alternative with an HTML or text sibling.
    AmpPlacement,
    /// Every recipient is on the suppression list.
    Suppressed,
    /// DKIM signing failed: the MTA keeps the message and the client retries.
    Signing,
}

impl Rejection {
    /// The exact reply for this rejection.
    pub fn reply(&self) -> Reply {
        match self {
            Rejection::HeaderRepeated => {
                Reply::new("550", "5.6.0", "X-MSYS-API header may appear only once")
            }
            Rejection::JsonSyntax(detail) if detail.is_empty() => {
                Reply::new("550", "5.6.0", "JSON parsing error in X-MSYS-API")
            }
            Rejection::JsonSyntax(detail) => Reply::new(
                "550",
                "5.6.0",
                format!("JSON parsing error in X-MSYS-API: {detail}"),
            ),
            Rejection::NotAnObject => {
                Reply::new("550", "5.6.0", "X-MSYS-API must be of type 'json object'")
            }
            Rejection::WrongType { field, expected } => Reply::new(
                "550",
                "5.6.0",
                format!("X-MSYS-API '{field}' must be of type '{}'", expected.name()),
            ),
            Rejection::CampaignIdTooLong => Reply::new(
                "550",
                "5.6.0",
                "smtpapi_campaign_id context is limited to 64 bytes",
            ),
            Rejection::TagNotString => Reply::new(
                "550",
                "5.6.0",
                "X-MSYS-API 'tags' entries must be of type 'string'",
            ),
            Rejection::TooManyTags => {
                Reply::new("550", "5.6.0", "X-MSYS-API 'tags' is limited to 10 entries")
            }
            Rejection::InvalidRecipient { list, entry } => Reply::new(
                "550",
                "5.6.0",
                format!("X-MSYS-API '{list}' entry {entry} is not a valid recipient"),
            ),
            Rejection::TooManyRecipients => Reply::new(
                "550",
                "5.6.0",
                "X-MSYS-API recipient lists are limited to 1000 recipients",
            ),
            Rejection::NotConfigured { option, value } => Reply::new(
                "550",
                "5.6.0",
                format!("X-MSYS-API '{option}' value '{value}' is not configured"),
            ),
            Rejection::UnconfiguredSendingDomain(domain) => Reply::new(
                "550",
                "5.7.1",
                format!("Unconfigured Sending Domain <{domain}>"),
            ),
            Rejection::TransmissionId => Reply::new(
                "421",
                "4.3.3",
                "[internal] smtpapi unable to generate unique transmission id",
            ),
            Rejection::TooLarge => Reply::new(
                "552",
                "5.3.4",
                "message too big for tracking and personalised copies",
            ),
            Rejection::CopiesTooLarge { limit } => Reply::new(
                "552",
                "5.3.4",
                format!(
                    "message too big for this many personalised copies (together over {limit} bytes)"
                ),
            ),
            Rejection::AmpPlacement => Reply::new(
                "550",
                "5.6.0",
                "text/x-amp-html must be inside multipart/alternative",
            ),
            Rejection::Signing => {
                Reply::new("451", "4.3.0", "DKIM signing failed, try again later")
            }
            Rejection::Suppressed => Reply::new(
                "554",
                "5.7.1",
                "recipient address was suppressed due to customer policy",
            ),
        }
    }
}

/// The tempfail reply for an internal failure; the detail goes to the log, not the client.
pub fn internal_error() -> Reply {
    Reply::new("451", "4.3.0", "internal error, try again later")
}

/// The tempfail reply when the store cannot be read or written: the message stays with
/// the MTA until what the milter tells about it can be committed.
pub fn store_failed() -> Reply {
    Reply::new("451", "4.3.0", "event store unavailable, try again later")
}

/// The tempfail reply when copies could not be handed to the MTA.
pub fn copies_failed() -> Reply {
    Reply::new(
        "451",
        "4.3.0",
        "personalised copies could not be handed over, try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_never_break_the_smtp_line() {
        let reply = Rejection::NotConfigured {
            option: "ip_pool",
            value: format!("a\r\nb%{}", "x".repeat(5000)),
        }
        .reply();
        assert!(!reply.text.contains(['\r', '\n', '%']));
        assert!(reply.to_string().len() <= 980);
        assert!(reply.text.starts_with("X-MSYS-API 'ip_pool' value 'a  b"));
    }

    #[test]
    fn exact_texts() {
        assert_eq!(
            Rejection::UnconfiguredSendingDomain("example.com".into())
                .reply()
                .to_string(),
            "550 5.7.1 Unconfigured Sending Domain <example.com>"
        );
        assert_eq!(
            Rejection::TransmissionId.reply().to_string(),
            "421 4.3.3 [internal] smtpapi unable to generate unique transmission id"
        );
        assert_eq!(
            Rejection::WrongType {
                field: "options.open_tracking".into(),
                expected: JsonType::Boolean
            }
            .reply()
            .to_string(),
            "550 5.6.0 X-MSYS-API 'options.open_tracking' must be of type 'boolean'"
        );
    }
}
