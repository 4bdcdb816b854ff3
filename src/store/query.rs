//! What the REST API asks of the store: suppression list searches with keyset cursors,
//! the summary by source, message event searches, and the deliverability counters the
//! store keeps as events are committed. Plain values; the SQL is in `sqlite_query.rs`.

use super::{Account, SuppressionEntry, SuppressionType};
use base64::Engine as _;

/// A page's position in a listing, opaque to clients (URL-safe base64).
pub fn encode_cursor(parts: &[&str]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

/// The parts of a cursor made by [`encode_cursor`]; `None` when it is not one of ours.
pub fn decode_cursor(cursor: &str, parts: usize) -> Option<Vec<String>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let out: Vec<String> = text.split('\n').map(str::to_owned).collect();
    (out.len() == parts).then_some(out)
}

/// Where a suppression listing goes on from: the last entry of the page before, in
/// the listing's order (updated, recipient, account, type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressionKey {
    pub updated: u64,
    pub recipient: String,
    pub account: Account,
    pub kind: SuppressionType,
}

impl SuppressionKey {
    pub fn of(e: &SuppressionEntry) -> SuppressionKey {
        SuppressionKey {
            updated: e.updated,
            recipient: e.recipient.clone(),
            account: e.account,
            kind: e.kind,
        }
    }

    pub fn encode(&self) -> String {
        let account = self.account.map(|a| a.to_string()).unwrap_or_default();
        encode_cursor(&[
            &self.updated.to_string(),
            &self.recipient,
            &account,
            self.kind.as_str(),
        ])
    }

    pub fn decode(cursor: &str) -> Option<SuppressionKey> {
        let parts = decode_cursor(cursor, 4)?;
        Some(SuppressionKey {
            updated: parts[0].parse().ok()?,
            recipient: parts[1].clone(),
            account: match parts[2].as_str() {
                "" => None,
                a => Some(a.parse().ok()?),
            },
            kind: SuppressionType::parse(&parts[3])?,
        })
    }
}

/// A search of the suppression list.
#[derive(Clone, Debug, Default)]
pub struct SuppressionQuery {
    /// `None`: every account.
    pub account: Option<Account>,
    /// `updated` at or after / at or before (Unix seconds).
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// Empty: both.
    pub types: Vec<SuppressionType>,
    /// Empty: any.
    pub sources: Vec<String>,
    /// The recipients' domain, lower-case.
    pub domain: Option<String>,
    /// Words the description contains.
    pub description: Option<String>,
    pub descending: bool,
    /// Keyset paging: entries after this one.
    pub after: Option<SuppressionKey>,
    /// Page paging (when no cursor): entries skipped.
    pub offset: u64,
    pub limit: usize,
}

/// One page of a search and how many entries match in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuppressionPage {
    pub entries: Vec<SuppressionEntry>,
    pub total: u64,
}

/// Where an event listing goes on from (newest first: created, then event id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventKey {
    pub created: u64,
    pub event_id: u64,
}

impl EventKey {
    pub fn encode(&self) -> String {
        encode_cursor(&[&self.created.to_string(), &self.event_id.to_string()])
    }

    pub fn decode(cursor: &str) -> Option<EventKey> {
        let parts = decode_cursor(cursor, 2)?;
        Some(EventKey {
            created: parts[0].parse().ok()?,
            event_id: parts[1].parse().ok()?,
        })
    }
}

/// An event field a search may filter on, in SparkPost's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventField {
    Type,
    EventId,
    Recipient,
    RecipientDomain,
    FromAddress,
    SendingDomain,
    Subject,
    BounceClass,
    Reason,
    Campaign,
    Template,
    SendingIp,
    IpPool,
    Subaccount,
    Message,
    Transmission,
}

impl EventField {
    /// The field of the event object it reads.
    pub fn json_name(self) -> &'static str {
        match self {
            EventField::Type => "type",
            EventField::EventId => "event_id",
            EventField::Recipient => "rcpt_to",
            EventField::RecipientDomain => "recipient_domain",
            EventField::FromAddress => "msg_from",
            EventField::SendingDomain => "sending_domain",
            EventField::Subject => "subject",
            EventField::BounceClass => "bounce_class",
            EventField::Reason => "reason",
            EventField::Campaign => "campaign_id",
            EventField::Template => "template_id",
            EventField::SendingIp => "sending_ip",
            EventField::IpPool => "ip_pool",
            EventField::Subaccount => "subaccount_id",
            EventField::Message => "message_id",
            EventField::Transmission => "transmission_id",
        }
    }

    /// Matched as words within the field (SparkPost's keyword match) rather than whole.
    pub fn by_keyword(self) -> bool {
        matches!(self, EventField::Subject | EventField::Reason)
    }
}

/// A search of the stored message events, newest first.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// Unix seconds: at or after `from`, before `to`.
    pub from: u64,
    pub to: u64,
    /// Each field's accepted values (any of them); every field must match.
    pub filters: Vec<(EventField, Vec<String>)>,
    /// A subaccount key's scope: only its events (`Some(None)`: the main account's).
    pub account: Option<Account>,
    pub after: Option<EventKey>,
    pub offset: u64,
    pub limit: usize,
}

/// A page of events (the stored batch items) and how many match in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventPage {
    /// (key, item JSON).
    pub items: Vec<(EventKey, String)>,
    pub total: u64,
}

/// A dimension the deliverability counters are kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    Campaign,
    SendingDomain,
    Subaccount,
    IpPool,
    BounceClass,
}

impl Dimension {
    /// The counters' column.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Campaign => "campaign",
            Dimension::SendingDomain => "sending_domain",
            Dimension::Subaccount => "subaccount",
            Dimension::IpPool => "ip_pool",
            Dimension::BounceClass => "bounce_class",
        }
    }
}

/// A question to the deliverability counters.
#[derive(Clone, Debug, Default)]
pub struct MetricsQuery {
    /// Unix seconds, `from` inclusive, `to` exclusive; minute-aligned.
    pub from: u64,
    pub to: u64,
    /// `count_*` names, as kept.
    pub metrics: Vec<String>,
    /// Each dimension's accepted values (any of them).
    pub filters: Vec<(Dimension, Vec<String>)>,
    /// Group by this dimension.
    pub group: Option<Dimension>,
    /// Group by time buckets of this many seconds, starting at `from` shifted by
    /// `bucket_offset` (a time zone's offset).
    pub bucket: Option<u64>,
    pub bucket_offset: i64,
}

/// One row of an answer: the group's value (or bucket start), then each metric's sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsRow {
    pub group: Option<String>,
    pub bucket: Option<u64>,
    pub values: Vec<(String, u64)>,
}

/// A webhook made through the REST API: its SparkPost JSON as given (validated by the
/// API), kept beside those of the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWebhook {
    pub id: String,
    pub spec: String,
    pub created: u64,
    pub updated: u64,
}

/// One delivery of a sink's batch (the last 100 are kept), for `batch-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLogEntry {
    pub batch_id: String,
    pub ts: u64,
    pub attempts: u32,
    /// The HTTP status the webhook answered.
    pub response_code: Option<String>,
    /// Why there was no answer (timeout, cannot connect).
    pub failure_code: Option<String>,
}
