//! `msys-milter explain`: what the milter would do with a message file, without an MTA.

use crate::api::plan::{MessageFacts, Plan, plan};
use crate::api::reply::Reply;
use crate::config::Config;
use crate::ids::IdGenerator;

/// Split a raw message into its header fields (name, raw value with folding kept).
pub fn header_fields(message: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content.is_empty() {
            break;
        }
        if matches!(content[0], b' ' | b'\t') {
            if let Some((_, value)) = fields.last_mut() {
                value.push(b'\n');
                value.extend_from_slice(content);
            }
            continue;
        }
        if let Some(colon) = content.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&content[..colon]).trim().to_owned();
            let mut value = &content[colon + 1..];
            if value.first() == Some(&b' ') {
                value = &value[1..];
            }
            fields.push((name, value.to_vec()));
        }
    }
    fields
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
    let fields = header_fields(message);
    let header_addresses = |name: &str| -> Vec<String> {
        let mut raw = Vec::new();
        for (n, v) in &fields {
            if n.eq_ignore_ascii_case(name) {
                raw.extend_from_slice(n.as_bytes());
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(v);
                raw.extend_from_slice(b"\r\n");
            }
        }
        raw.extend_from_slice(b"\r\n");
        let parsed = mail_parser::MessageParser::default().parse_headers(&raw);
        parsed
            .and_then(|m| {
                m.header(name).and_then(|h| h.as_address()).map(|a| {
                    a.iter()
                        .filter_map(|a| a.address().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    let mut facts = MessageFacts {
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
        ..MessageFacts::default()
    };
    for (name, value) in &fields {
        if name.eq_ignore_ascii_case("X-MSYS-API") {
            facts.api_values.push(value.clone());
        } else if name.eq_ignore_ascii_case("From") && facts.from_header.is_none() {
            facts.from_header = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case("Cc") {
            facts.cc_headers += 1;
        }
    }
    let ids = IdGenerator::new(config.node_id.0);
    plan(&facts, config, || ids.next()).map_err(|rejection| rejection.reply())
}
