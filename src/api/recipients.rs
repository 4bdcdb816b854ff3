//! Recipient addresses: RFC 5321 mailbox validation, display names for the `Cc:` header,
//! and the case-insensitive dedupe with precedence to > cc > bcc > archive.

use base64::Engine as _;
use serde::Serialize;

/// Which list a recipient came from; `To` are the envelope recipients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptType {
    To,
    Cc,
    Bcc,
    Archive,
}

impl RcptType {
    pub fn as_str(self) -> &'static str {
        match self {
            RcptType::To => "to",
            RcptType::Cc => "cc",
            RcptType::Bcc => "bcc",
            RcptType::Archive => "archive",
        }
    }
}

/// One entry of a cc, bcc or archive list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Is `addr` an RFC 5321 mailbox (`local@domain`)? UTF-8 is allowed in both parts
/// (RFC 6531), so SMTPUTF8 addresses pass.
pub fn is_valid_mailbox(addr: &str) -> bool {
    if addr.len() > 254 || addr.contains(['\r', '\n', '\0']) {
        return false;
    }
    let Some(at) = addr.rfind('@') else {
        return false;
    };
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    is_valid_local_part(local) && is_valid_domain(domain)
}

fn is_atext(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(ch) || !ch.is_ascii()
}

fn is_valid_local_part(local: &str) -> bool {
    if local.is_empty() || local.len() > 64 {
        return false;
    }
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        // Quoted string: printable ASCII (or UTF-8); `"` and `\` only escaped.
        let mut chars = inner.chars();
        while let Some(ch) = chars.next() {
            match ch {
                '\\' => match chars.next() {
                    Some(c) if (' '..='~').contains(&c) => {}
                    _ => return false,
                },
                '"' => return false,
                c if (' '..='~').contains(&c) || !c.is_ascii() => {}
                _ => return false,
            }
        }
        return true;
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A domain name of letter/digit/hyphen labels, or an address literal `[...]`.
pub fn is_valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// The domain part of an address, lowercased, for comparisons.
pub fn domain_of(addr: &str) -> Option<String> {
    addr.rfind('@')
        .map(|at| addr[at + 1..].trim_end_matches('>').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

/// Mailboxes of every form the validation accepts (shared by tests of other modules).
#[cfg(test)]
pub(crate) const VALID_MAILBOXES: &[&str] = &[
    "a@b.c",
    "first.last+tag@example.com",
    "\"john doe\"@example.com",
    "user@[127.0.0.1]",
    "user@[IPv6:::1]",
    "jöran@bücher.de",
    "x@localhost",
    "o'brien@example.com",
    "a!#$%&'*+-/=?^_`{|}~@example.com",
];

/// Strip the angle brackets an MTA passes around envelope addresses (`<a@b>` -> `a@b`).
pub fn strip_brackets(addr: &str) -> &str {
    let addr = addr.trim();
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

/// The case-insensitive key under which addresses are compared.
fn dedupe_key(addr: &str) -> String {
    addr.to_lowercase()
}

/// Recipients to add to the message, in precedence order: each address appears once and
/// never when it is already an envelope (to) recipient.
pub fn dedupe<'a>(
    envelope: &[String],
    lists: [(RcptType, &'a [Recipient]); 3],
) -> Vec<(RcptType, &'a Recipient)> {
    let mut seen: std::collections::HashSet<String> =
        envelope.iter().map(|a| dedupe_key(a)).collect();
    let mut added = Vec::new();
    for (kind, list) in lists {
        for rcpt in list {
            if seen.insert(dedupe_key(&rcpt.email)) {
                added.push((kind, rcpt));
            }
        }
    }
    added
}

/// Longest encoded-word RFC 2047 allows.
const MAX_ENCODED_WORD: usize = 75;
/// Fold header lines before this many octets (RFC 5322 recommends 78).
const FOLD_AT: usize = 76;

/// The value of an address-list header (`Cc:`) for `rcpts`: display names quoted or
/// RFC 2047-encoded, folded with LF + space (the milter protocol's line break; the MTA
/// writes CRLF) so no line exceeds 998 octets. `name_len` is the length of the header
/// name plus `": "`, so the first line is folded correctly too.
pub fn address_list_header(rcpts: &[Recipient], name_len: usize) -> String {
    let mut out = String::new();
    let mut line_len = name_len;
    for (i, rcpt) in rcpts.iter().enumerate() {
        let mut words = match &rcpt.name {
            Some(name) if !name.trim().is_empty() => display_name_words(name.trim()),
            _ => Vec::new(),
        };
        words.push(if words.is_empty() {
            rcpt.email.clone()
        } else {
            format!("<{}>", rcpt.email)
        });
        if i + 1 < rcpts.len()
            && let Some(last) = words.last_mut()
        {
            last.push(',');
        }
        for word in words {
            if line_len > 1 && line_len + 1 + word.len() > FOLD_AT {
                out.push_str("\n ");
                line_len = 1;
            } else if !out.is_empty() {
                out.push(' ');
                line_len += 1;
            }
            line_len += word.len();
            out.push_str(&word);
        }
    }
    out
}

/// A display name as header words: plain atoms, one quoted string, or a run of UTF-8
/// base64 encoded-words (each at most 75 octets, split on character boundaries).
fn display_name_words(name: &str) -> Vec<String> {
    let printable = name.chars().all(|c| (' '..='~').contains(&c));
    if printable {
        if name
            .split(' ')
            .all(|w| !w.is_empty() && w.chars().all(is_atext))
        {
            return name.split(' ').map(str::to_owned).collect();
        }
        let escaped: String = name
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        return vec![format!("\"{escaped}\"")];
    }
    // Non-ASCII (or control characters, already refused upstream): encode.
    const PREFIX: &str = "=?utf-8?b?";
    let max_raw = (MAX_ENCODED_WORD - PREFIX.len() - 2) / 4 * 3;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for ch in name.chars() {
        if chunk.len() + ch.len_utf8() > max_raw {
            words.push(encode_word(&chunk));
            chunk.clear();
        }
        chunk.push(ch);
    }
    if !chunk.is_empty() {
        words.push(encode_word(&chunk));
    }
    words
}

fn encode_word(text: &str) -> String {
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(email: &str, name: Option<&str>) -> Recipient {
        Recipient {
            email: email.into(),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn mailboxes() {
        for ok in VALID_MAILBOXES {
            assert!(is_valid_mailbox(ok), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a..b@example.com",
            ".a@example.com",
            "a@-example.com",
            "a@exa_mple.com",
            "a b@example.com",
            "a@example.com\r\nBcc: x@y.z",
            "a\0@example.com",
            "a@[999.1.1.1]",
            "<a@example.com>",
            "\"unterminated@example.com",
        ] {
            assert!(!is_valid_mailbox(bad), "{bad:?}");
        }
        assert!(!is_valid_mailbox(&format!(
            "{}@example.com",
            "a".repeat(65)
        )));
    }

    #[test]
    fn dedupe_keeps_first_list_case_insensitively() {
        let cc = [r("X@Example.com", None), r("cc@example.com", None)];
        let bcc = [r("cc@EXAMPLE.com", None), r("b@example.com", None)];
        let archive = [r("to@example.com", None), r("b@example.com", None)];
        let added = dedupe(
            &["To@Example.COM".into()],
            [
                (RcptType::Cc, &cc),
                (RcptType::Bcc, &bcc),
                (RcptType::Archive, &archive),
            ],
        );
        let got: Vec<_> = added.iter().map(|(t, r)| (*t, r.email.as_str())).collect();
        assert_eq!(
            got,
            [
                (RcptType::Cc, "X@Example.com"),
                (RcptType::Cc, "cc@example.com"),
                (RcptType::Bcc, "b@example.com"),
            ]
        );
    }

    #[test]
    fn cc_header_names() {
        let v = address_list_header(
            &[
                r("a@example.com", Some("CC 1")),
                r("b@example.com", Some("Doe, \"J\"")),
                r("c@example.com", None),
                r("d@example.com", Some("Jörg Müller")),
            ],
            4,
        );
        assert!(v.starts_with("CC 1 <a@example.com>, \"Doe, \\\"J\\\"\" <b@example.com>,"));
        assert!(v.contains(" c@example.com,"));
        assert!(v.contains("=?utf-8?b?SsO2cmcgTcO8bGxlcg==?= <d@example.com>"));
        // Decoding it back with mail-parser gives the names.
        let msg = format!("Cc: {v}\n\n").replace('\n', "\r\n");
        let parsed = mail_parser::MessageParser::default()
            .parse(msg.as_bytes())
            .unwrap();
        let names: Vec<_> = parsed
            .cc()
            .unwrap()
            .iter()
            .map(|a| a.name().map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            [
                Some("CC 1".into()),
                Some("Doe, \"J\"".into()),
                None,
                Some("Jörg Müller".into())
            ]
        );
    }

    #[test]
    fn long_lists_fold_and_long_names_split() {
        let rcpts: Vec<_> = (0..1000)
            .map(|i| r(&format!("user{i}@example.com"), Some(&"é".repeat(100))))
            .collect();
        let v = address_list_header(&rcpts, 4);
        for line in v.split('\n') {
            assert!(line.len() <= 998, "{}", line.len());
            for word in line.split(' ') {
                if word.starts_with("=?") {
                    assert!(word.trim_end_matches(',').len() <= 75, "{word}");
                }
            }
        }
    }
}
