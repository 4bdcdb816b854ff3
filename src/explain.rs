//! `msys-milter explain`: what the milter would do with a message file, without an MTA.

use crate::api::copies::HeaderField;
use crate::api::plan::{MessageFacts, Plan, plan};
use crate::api::reply::Reply;
use crate::config::Config;
use crate::ids::IdGenerator;

/// Split a raw message into its header fields (raw values with folding kept) and body.
pub fn split_message(message: &[u8]) -> (Vec<HeaderField>, &[u8]) {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut offset = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content.is_empty() {
            return (fields, &message[offset..]);
        }
        if matches!(content[0], b' ' | b'\t') {
            if let Some(field) = fields.last_mut() {
                field.value.push(b'\n');
                field.value.extend_from_slice(content);
            }
            continue;
        }
        if let Some(colon) = content.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&content[..colon]).trim().to_owned();
            let value = &content[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            fields.push(HeaderField::new(name, value));
        }
    }
    (fields, &[])
}

/// Explain `message` as if received with MAIL FROM `from` and RCPT TO `rcpts`. Without
/// `from`, the From: header's address is used; without `rcpts`, the To: header's.
/// The result is the plan, or the exact SMTP reply refusing the message.
pub fn explain(
    message: &[u8],
    from: Option<&str>,
    rcpts: &[String],
    auth_user: Option<&str>,
    config: &Config,
) -> Result<Plan, Reply> {
    let (headers, _body) = split_message(message);
    let header_addresses = |name: &str| -> Vec<String> {
        let mut raw = Vec::new();
        for field in headers.iter().filter(|f| f.is(name)) {
            raw.extend_from_slice(field.name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(&field.value);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        mail_parser::MessageParser::default()
            .parse_headers(&raw)
            .and_then(|m| {
                m.header(name).and_then(|h| h.as_address()).map(|a| {
                    a.iter()
                        .filter_map(|a| a.address().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    let facts = MessageFacts {
        mail_from: from
            .map(str::to_owned)
            .or_else(|| header_addresses("From").into_iter().next())
            .unwrap_or_default(),
        rcpts: if rcpts.is_empty() {
            header_addresses("To")
        } else {
            rcpts.to_vec()
        },
        auth_authen: auth_user.map(str::to_owned),
        headers: headers.clone(),
        received_at: crate::ids::unix_secs(),
    };
    let ids = IdGenerator::new(config.node_id.0);
    plan(&facts, config, || ids.next()).map_err(|rejection| rejection.reply())
}
