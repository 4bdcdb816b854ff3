//! The exactly-once ledger of copies: which copies of a message were handed over, so a
//! client's retry of the same message (after a tempfail, a kill, a lost answer) does not
//! hand any of them over again, and does not count its events twice. Pure: bytes in,
//! digests out; the store keeps the rows.
//!
//! A message is "the same" when its envelope, its header fields (but `Received`, which
//! the MTA stamps with a new queue id at every attempt) and its body are byte for byte
//! the same. A copy is named by its envelope and kind, not by its bytes: its tracking
//! links carry an expiry that moves with the clock, so two renderings of one copy differ.

use crate::api::MessageFacts;
use crate::api::recipients::RcptType;
use sha2::{Digest, Sha256};

/// The ledger's key for the message a client sent: hex SHA-256 of its envelope, its
/// header fields but `Received`, and its body.
pub fn message_digest(facts: &MessageFacts, body: &[u8]) -> String {
    let mut h = Sha256::new();
    // Lengths before every part: no two different messages hash the same bytes.
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(facts.mail_from.as_bytes());
    for rcpt in &facts.rcpts {
        part(rcpt.as_bytes());
    }
    part(b"");
    for field in facts.headers.iter().filter(|f| !f.is("Received")) {
        part(field.name.as_bytes());
        part(&field.value);
    }
    part(b"");
    part(body);
    hex(&h.finalize())
}

/// The ledger's key for one copy of a message: its MAIL FROM, recipient and kind.
pub fn copy_key(from: &str, to: &str, rcpt_type: RcptType) -> String {
    let mut h = Sha256::new();
    for part in [
        from.as_bytes(),
        to.to_lowercase().as_bytes(),
        rcpt_type.as_str().as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    // 128 bits: unique enough among one message's copies.
    hex(&h.finalize()[..16])
}

/// A copy's own MAIL FROM: the message's bounce address (`bounces+TID@domain`) with a
/// tag of the recipient (`bounces+TID-1a2b3c4d@domain`). The MTA logs it when the copy
/// is in its queue, so a retry after a kill can tell whether the MTA took a copy whose
/// `250` never arrived. DSNs to it still name the transmission.
pub fn copy_sender(bounce_address: &str, rcpt: &str) -> String {
    let Some((local, domain)) = bounce_address.rsplit_once('@') else {
        return bounce_address.to_owned();
    };
    let tag = Sha256::digest(rcpt.to_lowercase().as_bytes());
    format!("{local}-{}@{domain}", hex(&tag[..4]))
}

/// A copy's ledger value: its size and the MTA's reply (which names its queue id).
pub fn copy_value(size: usize, reply: &str) -> String {
    format!("{size} {reply}")
}

/// The size and reply of a copy's ledger value.
pub fn parse_copy_value(value: &str) -> (usize, &str) {
    value
        .split_once(' ')
        .and_then(|(size, reply)| Some((size.parse().ok()?, reply)))
        .unwrap_or((0, value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::copies::HeaderField;

    fn facts(received: &str) -> MessageFacts {
        MessageFacts {
            mail_from: "app@example.com".into(),
            rcpts: vec!["to@example.org".into()],
            headers: vec![
                HeaderField::new("Received", received.as_bytes()),
                HeaderField::new("Subject", &b"Hi"[..]),
            ],
            ..MessageFacts::default()
        }
    }

    #[test]
    fn a_retry_through_another_queue_id_is_the_same_message() {
        let first = message_digest(&facts("by mta (Postfix) with ESMTP id 4Q1"), b"body\r\n");
        let retry = message_digest(&facts("by mta (Postfix) with ESMTP id 4Q2"), b"body\r\n");
        assert_eq!(first, retry);
        assert_eq!(first.len(), 64);
        let other_body = message_digest(&facts("id 4Q1"), b"body!\r\n");
        assert_ne!(first, other_body);
        let mut other_rcpt = facts("id 4Q1");
        other_rcpt.rcpts.push("two@example.org".into());
        assert_ne!(first, message_digest(&other_rcpt, b"body\r\n"));
    }

    #[test]
    fn parts_cannot_slide_into_each_other() {
        let mut a = facts("x");
        a.headers[1] = HeaderField::new("Subject", &b"Hib"[..]);
        let b = facts("x");
        assert_ne!(message_digest(&a, b"ody"), message_digest(&b, b"body"));
    }

    #[test]
    fn a_copy_is_named_by_its_envelope_and_kind() {
        let from = "bounces+1@b.example";
        let one = copy_key(from, "B@example.com", RcptType::Bcc);
        assert_eq!(one, copy_key(from, "b@example.com", RcptType::Bcc));
        assert_eq!(one.len(), 32);
        assert_ne!(one, copy_key(from, "b@example.com", RcptType::Cc));
        assert_ne!(
            one,
            copy_key("other@b.example", "b@example.com", RcptType::Bcc)
        );
    }

    #[test]
    fn each_copy_has_a_sender_of_its_own() {
        let a = copy_sender("bounces+42@b.example.net", "A@example.org");
        assert_eq!(a, copy_sender("bounces+42@b.example.net", "a@example.org"));
        assert!(
            a.starts_with("bounces+42-") && a.ends_with("@b.example.net"),
            "{a}"
        );
        assert_eq!(a.len(), "bounces+42-12345678@b.example.net".len());
        assert_ne!(a, copy_sender("bounces+42@b.example.net", "b@example.org"));
    }

    #[test]
    fn copy_values_round_trip() {
        let value = copy_value(1234, "250 2.0.0 Ok: queued as 4Q3");
        assert_eq!(
            parse_copy_value(&value),
            (1234, "250 2.0.0 Ok: queued as 4Q3")
        );
        assert_eq!(parse_copy_value("junk"), (0, "junk"));
    }
}
