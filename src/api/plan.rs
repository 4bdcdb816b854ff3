//! The plan for one message: from what the MTA told the milter (envelope, a few headers,
//! the SMTP AUTH user) and the configuration, decide the reply or the edits. Pure: the
//! transmission id comes from a closure so the clock stays outside.

use super::header::{HEADER_NAME, Known, SmtpApi, parse_header_values};
use super::recipients::{RcptType, address_list_header, dedupe, domain_of};
use super::reply::Rejection;
use crate::config::Config;
use crate::ids::IdError;
use serde::Serialize;

/// What the milter collected for one message.
#[derive(Clone, Debug, Default)]
pub struct MessageFacts {
    /// MAIL FROM without angle brackets; empty for the null sender.
    pub mail_from: String,
    /// RCPT TO addresses without angle brackets: the primary recipients.
    pub rcpts: Vec<String>,
    /// Raw values of every `X-MSYS-API` header, in order.
    pub api_values: Vec<Vec<u8>>,
    /// The raw value of the first `From:` header.
    pub from_header: Option<String>,
    /// How many `Cc:` headers the message has.
    pub cc_headers: usize,
    /// The SMTP AUTH user (`{auth_authen}`), if the client authenticated.
    pub auth_authen: Option<String>,
}

/// How a recipient gets its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// An envelope recipient of the original transaction.
    Original,
    /// Added to the original transaction with the add-recipient action.
    AddRecipient,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedRecipient {
    pub address: String,
    pub rcpt_type: RcptType,
    pub delivery: Delivery,
}

/// A header change, in milter terms (index counts occurrences of that name from 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HeaderEdit {
    Delete {
        name: String,
        index: i32,
    },
    Change {
        name: String,
        index: i32,
        value: String,
    },
    Add {
        name: String,
        value: String,
    },
}

/// Everything the milter does to an accepted message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub transmission_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subaccount_id: Option<u64>,
    pub recipients: Vec<PlannedRecipient>,
    pub header_edits: Vec<HeaderEdit>,
    /// The new MAIL FROM; `None` leaves it unchanged.
    pub mail_from: Option<String>,
    /// The parsed header, when the message had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<SmtpApi>,
}

impl Plan {
    /// Recipients the milter adds to the transaction.
    pub fn added_recipients(&self) -> impl Iterator<Item = &PlannedRecipient> {
        self.recipients
            .iter()
            .filter(|r| r.delivery == Delivery::AddRecipient)
    }
}

/// Decide what happens to a message: a rejection with its exact reply, or the plan.
pub fn plan(
    facts: &MessageFacts,
    config: &Config,
    next_id: impl FnOnce() -> Result<u64, IdError>,
) -> Result<Plan, Rejection> {
    let ip_pools = config.ip_pool_names();
    let dkim_keys = config.dkim_key_names();
    let values: Vec<&[u8]> = facts.api_values.iter().map(Vec::as_slice).collect();
    let api = parse_header_values(
        &values,
        Known {
            ip_pools: &ip_pools,
            dkim_keys: &dkim_keys,
        },
    )?;
    let subaccount_id = facts.auth_authen.as_deref().and_then(subaccount);
    check_sending_domain(facts, config, subaccount_id)?;

    let empty = SmtpApi::default();
    let lists = api.as_ref().unwrap_or(&empty);
    let added = dedupe(
        &facts.rcpts,
        [
            (RcptType::Cc, &lists.cc),
            (RcptType::Bcc, &lists.bcc),
            (RcptType::Archive, &lists.archive),
        ],
    );
    // Until personalised copies exist, a bcc recipient cannot get its own Bcc header;
    // tempfail so the message is never delivered without its bcc copies.
    if added.iter().any(|(kind, _)| *kind == RcptType::Bcc) {
        return Err(Rejection::Unavailable("bcc copies are not available yet"));
    }

    let transmission_id = next_id().map_err(|_| Rejection::TransmissionId)?;

    let mut recipients: Vec<PlannedRecipient> = facts
        .rcpts
        .iter()
        .map(|address| PlannedRecipient {
            address: address.clone(),
            rcpt_type: RcptType::To,
            delivery: Delivery::Original,
        })
        .collect();
    recipients.extend(added.iter().map(|(kind, rcpt)| PlannedRecipient {
        address: rcpt.email.clone(),
        rcpt_type: *kind,
        delivery: Delivery::AddRecipient,
    }));

    let mut header_edits = Vec::new();
    if !facts.api_values.is_empty() {
        header_edits.push(HeaderEdit::Delete {
            name: HEADER_NAME.into(),
            index: 1,
        });
    }
    if !lists.cc.is_empty() {
        let value = address_list_header(&lists.cc, "Cc: ".len());
        header_edits.extend(cc_edits(facts.cc_headers, value));
    }

    Ok(Plan {
        transmission_id: transmission_id.to_string(),
        subaccount_id,
        recipients,
        header_edits,
        mail_from: bounce_address(facts, config, transmission_id),
        api,
    })
}

/// Replace the first `Cc:` header, delete any others (highest index first, so indexes
/// stay valid), or add one.
fn cc_edits(existing: usize, value: String) -> Vec<HeaderEdit> {
    let name = || "Cc".to_owned();
    if existing == 0 {
        return vec![HeaderEdit::Add {
            name: name(),
            value,
        }];
    }
    let mut edits = vec![HeaderEdit::Change {
        name: name(),
        index: 1,
        value,
    }];
    let existing = i32::try_from(existing).unwrap_or(i32::MAX);
    edits.extend((2..=existing).rev().map(|index| HeaderEdit::Delete {
        name: name(),
        index,
    }));
    edits
}

/// `SMTP_Injection:X-MSYS-SUBACCOUNT=123` -> 123.
pub fn subaccount(auth_user: &str) -> Option<u64> {
    let (_, tail) = auth_user.split_once(':')?;
    let (key, id) = tail.split_once('=')?;
    if !key.trim().eq_ignore_ascii_case("X-MSYS-SUBACCOUNT") {
        return None;
    }
    id.trim().parse().ok()
}

/// The domain of the first address of a `From:` header value.
pub fn from_header_domain(value: &str) -> Option<String> {
    let mut line = super::header::unfold(value.as_bytes());
    line.push(b'\n');
    let parsed = mail_parser::parsers::MessageStream::new(&line).parse_address();
    let addr = parsed.as_address()?.first()?.address()?;
    domain_of(addr)
}

/// The domain a message sends as: its From: header, else its MAIL FROM.
fn sending_domain(facts: &MessageFacts) -> Option<String> {
    facts
        .from_header
        .as_deref()
        .and_then(from_header_domain)
        .or_else(|| domain_of(&facts.mail_from))
}

fn check_sending_domain(
    facts: &MessageFacts,
    config: &Config,
    subaccount_id: Option<u64>,
) -> Result<(), Rejection> {
    // Bounces and DSNs are never refused for their sending domain.
    if config.sending_domains.is_empty() || facts.mail_from.is_empty() {
        return Ok(());
    }
    let domain = sending_domain(facts).unwrap_or_default();
    let configured = config.sending_domains.iter().find(|d| d.name.0 == domain);
    // Subaccount assignment applies once the operator assigns any domain to one.
    let assignments_used = config
        .sending_domains
        .iter()
        .any(|d| !d.subaccounts.is_empty());
    let allowed = match (configured, subaccount_id) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(_), Some(_)) if !assignments_used => true,
        (Some(d), Some(id)) => d.subaccounts.contains(&id),
    };
    if allowed {
        Ok(())
    } else {
        Err(Rejection::UnconfiguredSendingDomain(domain))
    }
}

/// The rewritten MAIL FROM (SPEC section 5), or `None` to leave it alone.
fn bounce_address(facts: &MessageFacts, config: &Config, transmission_id: u64) -> Option<String> {
    if !config.envelope.rewrite || facts.mail_from.is_empty() {
        return None;
    }
    let mail_from_domain = domain_of(&facts.mail_from);
    let own = mail_from_domain
        .as_ref()
        .filter(|d| config.bounce_domains().any(|b| &b.0 == *d));
    let of_sending_domain = |domain: Option<String>| {
        let domain = domain?;
        config
            .sending_domains
            .iter()
            .find(|s| s.name.0 == domain)
            .and_then(|s| s.bounce_domain.as_ref())
            .map(|b| b.0.clone())
    };
    let domain = own
        .cloned()
        .or_else(|| of_sending_domain(mail_from_domain.clone()))
        .or_else(|| of_sending_domain(facts.from_header.as_deref().and_then(from_header_domain)))
        .or_else(|| config.envelope.bounce_domain.as_ref().map(|d| d.0.clone()))?;
    Some(format!(
        "{}+{transmission_id}@{domain}",
        config.envelope.bounce_local_part.0
    ))
}
