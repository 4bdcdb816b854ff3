//! Events in SparkPost's webhook format (pure): what happened to a message, built from
//! the facts of its transmission, serialised exactly as SparkPost's consumers parse it.
//! Every scalar is a JSON string but the four message flags SparkPost sends as booleans
//! (`click_tracking`, `open_tracking`, `initial_pixel`, `amp_enabled`); `timestamp` is
//! Unix seconds; `rcpt_meta` an object and `rcpt_tags` an array, also when empty.

pub mod counted;
mod redact;
pub mod sink;
pub mod webhook;

pub use redact::{redact, redact_addresses};

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// SparkPost's event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Injection,
    Delivery,
    Bounce,
    Delay,
    OutOfBand,
    SpamComplaint,
    PolicyRejection,
    Open,
    InitialOpen,
    Click,
    ListUnsubscribe,
    LinkUnsubscribe,
}

impl EventType {
    pub const ALL: [EventType; 12] = [
        EventType::Injection,
        EventType::Delivery,
        EventType::Bounce,
        EventType::Delay,
        EventType::OutOfBand,
        EventType::SpamComplaint,
        EventType::PolicyRejection,
        EventType::Open,
        EventType::InitialOpen,
        EventType::Click,
        EventType::ListUnsubscribe,
        EventType::LinkUnsubscribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Injection => "injection",
            EventType::Delivery => "delivery",
            EventType::Bounce => "bounce",
            EventType::Delay => "delay",
            EventType::OutOfBand => "out_of_band",
            EventType::SpamComplaint => "spam_complaint",
            EventType::PolicyRejection => "policy_rejection",
            EventType::Open => "open",
            EventType::InitialOpen => "initial_open",
            EventType::Click => "click",
            EventType::ListUnsubscribe => "list_unsubscribe",
            EventType::LinkUnsubscribe => "link_unsubscribe",
        }
    }

    /// The batch item's category key (`{"msys": {"<category>": {...}}}`).
    pub fn category(self) -> &'static str {
        match self {
            EventType::Open | EventType::InitialOpen | EventType::Click => "track_event",
            EventType::ListUnsubscribe | EventType::LinkUnsubscribe => "unsubscribe_event",
            _ => "message_event",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SparkPost's documented limit of `rcpt_meta` on open and click events.
pub const TRACK_META_LIMIT: usize = 1000;

/// The reply SparkPost gives (and reports) for a suppressed recipient.
pub const SUPPRESSED_REASON: &str =
    "554 5.7.1 recipient address was suppressed due to customer policy";

/// One event, ready to store and deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: u64,
    pub kind: EventType,
    pub timestamp: u64,
    pub transmission_id: String,
    /// The event's fields in SparkPost's names, `type`, `event_id` and `timestamp`
    /// included, in the order they are written.
    pub fields: Map<String, Value>,
}

impl Event {
    /// The batch item, `{"msys": {"<category>": {...}}}`, as JSON: written straight from
    /// the fields (building the item as a `Value` first cloned every field; a perf
    /// profile of the milter put 10% of its worker thread in that clone and its drop).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"msys\":{\"");
        out.extend_from_slice(self.kind.category().as_bytes());
        out.extend_from_slice(b"\":");
        // A map of strings to JSON values always serializes.
        let _ = serde_json::to_writer(&mut out, &self.fields);
        out.extend_from_slice(b"}}");
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn rcpt_to(&self) -> Option<&str> {
        self.fields.get("rcpt_to").and_then(Value::as_str)
    }
}

/// What every event of one transmission shares (stored at injection, so events from the
/// HTTP endpoint can join it).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Transmission {
    pub transmission_id: String,
    pub campaign_id: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub subaccount_id: Option<u64>,
    /// The From: header's address.
    pub friendly_from: Option<String>,
    /// The envelope sender as delivered (the bounce address).
    pub msg_from: String,
    pub subject: Option<String>,
    pub ip_pool: Option<String>,
    /// Unix milliseconds of the injection.
    pub injection_ms: u64,
    pub transactional: bool,
    pub sandbox: bool,
    /// The From: header's domain.
    pub sending_domain: Option<String>,
    /// The address the message leaves from, when configured (`sending_ip` of its pool).
    pub sending_ip: Option<String>,
    /// `[events] customer_id`.
    pub customer_id: Option<String>,
    pub click_tracking: bool,
    pub open_tracking: bool,
    /// The `initial_open` pixel was put at the top of the HTML.
    pub initial_pixel: bool,
    /// The message has an AMPHTML part.
    pub amp_enabled: bool,
    /// Every recipient's own message, by lower-cased address: what later events about
    /// the recipient (opens, clicks, bounces, complaints) say of it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub recipients: BTreeMap<String, RecipientFacts>,
}

/// One recipient's message, as stored with its transmission.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RecipientFacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcpt_type: Option<String>,
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_size: Option<u64>,
}

/// `cc`, `bcc`, `archive` as the static names events use; anything else is none.
pub fn static_rcpt_type(kind: Option<&str>) -> Option<&'static str> {
    match kind? {
        "cc" => Some("cc"),
        "bcc" => Some("bcc"),
        "archive" => Some("archive"),
        _ => None,
    }
}

impl Transmission {
    /// Remember `r`'s message for the events that come later.
    pub fn add_recipient(&mut self, r: &Recipient) {
        self.recipients.insert(
            r.raw.to_lowercase(),
            RecipientFacts {
                rcpt_type: r.rcpt_type.map(str::to_owned),
                message_id: r.message_id.clone(),
                queue_id: r.queue_id.clone(),
                msg_size: r.msg_size.map(|s| s as u64),
            },
        );
    }

    /// Did the transmission go to `raw`? Reports from the Internet may name anyone; only
    /// its recipients get events and suppression entries from them. A transmission
    /// stored before recipients were (an older store) knows none, and is taken at its word.
    pub fn went_to(&self, raw: &str) -> bool {
        self.recipients.is_empty() || self.recipients.contains_key(&raw.to_lowercase())
    }

    /// Recipient `raw` with what the transmission knows of its message (nothing for a
    /// transmission stored before recipients were, or an address it did not go to).
    pub fn recipient(&self, raw: &str) -> Recipient {
        let facts = self.recipients.get(&raw.to_lowercase());
        Recipient {
            raw: raw.to_owned(),
            rcpt_type: facts.and_then(|f| static_rcpt_type(f.rcpt_type.as_deref())),
            message_id: facts.map(|f| f.message_id.clone()).unwrap_or_default(),
            queue_id: facts.and_then(|f| f.queue_id.clone()),
            msg_size: facts
                .and_then(|f| f.msg_size)
                .and_then(|s| usize::try_from(s).ok()),
        }
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read the stored form back; `None` when it is not ours.
    pub fn from_json(text: &str) -> Option<Transmission> {
        serde_json::from_str(text).ok()
    }
}

/// One recipient of one delivered message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipient {
    /// As given (RCPT TO or the header's list).
    pub raw: String,
    /// `cc`, `bcc`, `archive`; `None` for a primary recipient.
    pub rcpt_type: Option<&'static str>,
    /// The delivered message's own id (the original and each copy differ).
    pub message_id: String,
    /// The MTA's queue id of the delivered message, when known.
    pub queue_id: Option<String>,
    /// Size in bytes of the delivered message, when known.
    pub msg_size: Option<usize>,
}

/// An event's id and time, from outside (the id generator and the clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub event_id: u64,
    pub timestamp: u64,
}

fn s(v: impl AsRef<str>) -> Value {
    Value::String(v.as_ref().to_owned())
}

fn flag(b: bool) -> Value {
    s(if b { "1" } else { "0" })
}

fn put_opt(m: &mut Map<String, Value>, key: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(key.into(), s(v));
    }
}

/// `2026-12-01T14:25:07.000Z` from Unix milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `rcpt_meta` cut to at most `limit` bytes of JSON: whole keys, in order, as many as
/// fit, so consumers still get an object.
pub fn truncate_meta(meta: &Map<String, Value>, limit: usize) -> Map<String, Value> {
    if Value::Object(meta.clone()).to_string().len() <= limit {
        return meta.clone();
    }
    let mut out = Map::new();
    let mut size = 2; // `{}`
    for (k, v) in meta {
        let entry = serde_json::to_string(k).unwrap_or_default().len()
            + 1
            + v.to_string().len()
            + usize::from(!out.is_empty());
        if size + entry > limit {
            break;
        }
        size += entry;
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The domain of an address, lower-cased.
fn routing_domain(rcpt: &str) -> Option<String> {
    rcpt.rsplit_once('@').map(|(_, d)| d.to_lowercase())
}

/// The fields every event of a recipient starts with, its message's included.
fn base(
    kind: EventType,
    stamp: Stamp,
    t: &Transmission,
    r: &Recipient,
    meta_limit: Option<usize>,
) -> Map<String, Value> {
    let rcpt = r.raw.as_str();
    // Room for every field at once: no rehash while it fills.
    let mut m = Map::with_capacity(40);
    m.insert("type".into(), s(kind.as_str()));
    m.insert("event_id".into(), s(stamp.event_id.to_string()));
    m.insert("timestamp".into(), s(stamp.timestamp.to_string()));
    m.insert("transmission_id".into(), s(&t.transmission_id));
    m.insert("rcpt_to".into(), s(rcpt.to_lowercase()));
    m.insert("raw_rcpt_to".into(), s(rcpt));
    message_fields(&mut m, r);
    put_opt(&mut m, "campaign_id", t.campaign_id.as_deref());
    m.insert(
        "customer_id".into(),
        s(t.customer_id.as_deref().unwrap_or(DEFAULT_CUSTOMER_ID)),
    );
    m.insert(
        "rcpt_tags".into(),
        Value::Array(t.tags.iter().map(s).collect()),
    );
    let meta = match meta_limit {
        Some(limit) => truncate_meta(&t.metadata, limit),
        None => t.metadata.clone(),
    };
    m.insert("rcpt_meta".into(), Value::Object(meta));
    if let Some(id) = t.subaccount_id {
        m.insert("subaccount_id".into(), s(id.to_string()));
    }
    put_opt(&mut m, "friendly_from", t.friendly_from.as_deref());
    if !t.msg_from.is_empty() {
        m.insert("msg_from".into(), s(&t.msg_from));
    }
    put_opt(&mut m, "sending_domain", t.sending_domain.as_deref());
    put_opt(&mut m, "subject", t.subject.as_deref());
    put_opt(&mut m, "ip_pool", t.ip_pool.as_deref());
    put_opt(&mut m, "sending_ip", t.sending_ip.as_deref());
    let domain = routing_domain(rcpt);
    put_opt(&mut m, "routing_domain", domain.as_deref());
    put_opt(&mut m, "recipient_domain", domain.as_deref());
    if t.injection_ms > 0 {
        m.insert("injection_time".into(), s(iso8601(t.injection_ms)));
    }
    m.insert("transactional".into(), flag(t.transactional));
    m.insert("click_tracking".into(), Value::Bool(t.click_tracking));
    m.insert("open_tracking".into(), Value::Bool(t.open_tracking));
    m.insert("initial_pixel".into(), Value::Bool(t.initial_pixel));
    m.insert("amp_enabled".into(), Value::Bool(t.amp_enabled));
    // Every message msys-milter sees came in and goes out by SMTP.
    m.insert("recv_method".into(), s("esmtp"));
    if kind != EventType::Injection {
        m.insert("delv_method".into(), s("esmtp"));
    }
    if t.sandbox {
        m.insert("sandbox".into(), s("true"));
    }
    m
}

/// SparkPost's `customer_id` when `[events] customer_id` is not set.
pub const DEFAULT_CUSTOMER_ID: &str = "1";

fn event(kind: EventType, stamp: Stamp, t: &Transmission, fields: Map<String, Value>) -> Event {
    Event {
        event_id: stamp.event_id,
        kind,
        timestamp: stamp.timestamp,
        transmission_id: t.transmission_id.clone(),
        fields,
    }
}

/// The fields of one delivered message to one recipient (what is known of it).
fn message_fields(m: &mut Map<String, Value>, r: &Recipient) {
    put_opt(m, "rcpt_type", r.rcpt_type);
    if !r.message_id.is_empty() {
        m.insert("message_id".into(), s(&r.message_id));
    }
    put_opt(m, "queue_id", r.queue_id.as_deref());
    if let Some(size) = r.msg_size {
        m.insert("msg_size".into(), s(size.to_string()));
    }
}

/// `injection`: the message was accepted for this recipient.
pub fn injection(stamp: Stamp, t: &Transmission, r: &Recipient) -> Event {
    let m = base(EventType::Injection, stamp, t, r, None);
    event(EventType::Injection, stamp, t, m)
}

/// What a delivery attempt told: the remote server, how long the message had been
/// queued, how many attempts failed before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// The remote server's address.
    pub ip_address: Option<String>,
    /// Milliseconds from injection to this attempt.
    pub queue_time_ms: Option<u64>,
    pub num_retries: u32,
}

fn attempt_fields(m: &mut Map<String, Value>, a: &Attempt) {
    put_opt(m, "ip_address", a.ip_address.as_deref());
    if let Some(ms) = a.queue_time_ms {
        m.insert("queue_time".into(), s(ms.to_string()));
    }
    m.insert("num_retries".into(), s(a.num_retries.to_string()));
}

/// `bounce` for a recipient on the suppression list (after its `injection`), as
/// SparkPost reports it: bounce class 25, error code 554.
pub fn suppressed(stamp: Stamp, t: &Transmission, r: &Recipient) -> Event {
    let mut m = base(EventType::Bounce, stamp, t, r, None);
    m.insert("bounce_class".into(), s("25"));
    m.insert("error_code".into(), s("554"));
    m.insert("reason".into(), s(SUPPRESSED_REASON));
    m.insert("raw_reason".into(), s(SUPPRESSED_REASON));
    m.insert("num_retries".into(), s("0"));
    event(EventType::Bounce, stamp, t, m)
}

/// What a returned message said about one recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounce {
    pub bounce_class: u8,
    /// The SMTP reply code (`550`), when the reply has one.
    pub error_code: Option<u16>,
    /// The reply as received.
    pub raw_reason: String,
}

/// `bounce`, `out_of_band` or `delay`, from the MTA's log or a returned message.
pub fn bounce(
    kind: EventType,
    stamp: Stamp,
    t: &Transmission,
    r: &Recipient,
    b: &Bounce,
    a: &Attempt,
) -> Event {
    let mut m = base(kind, stamp, t, r, None);
    m.insert("bounce_class".into(), s(b.bounce_class.to_string()));
    if let Some(code) = b.error_code {
        m.insert("error_code".into(), s(code.to_string()));
    }
    m.insert("reason".into(), s(redact(&b.raw_reason)));
    m.insert("raw_reason".into(), s(&b.raw_reason));
    attempt_fields(&mut m, a);
    event(kind, stamp, t, m)
}

/// `delivery`: the MTA handed the message to the recipient's server.
pub fn delivery(stamp: Stamp, t: &Transmission, r: &Recipient, a: &Attempt) -> Event {
    let kind = EventType::Delivery;
    let mut m = base(kind, stamp, t, r, None);
    attempt_fields(&mut m, a);
    event(kind, stamp, t, m)
}

/// `spam_complaint`: `fbtype` from the report, who reported it and where it was sent.
pub fn spam_complaint(
    stamp: Stamp,
    t: &Transmission,
    r: &Recipient,
    fbtype: &str,
    report_by: Option<&str>,
    report_to: &str,
) -> Event {
    let kind = EventType::SpamComplaint;
    let mut m = base(kind, stamp, t, r, None);
    m.insert("fbtype".into(), s(fbtype));
    put_opt(&mut m, "report_by", report_by);
    m.insert("report_to".into(), s(report_to));
    event(kind, stamp, t, m)
}

/// What a request to the HTTP endpoint tells about who made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visitor {
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    /// A privacy proxy or link scanner rather than a person.
    pub machine: bool,
}

/// A followed link: its target and its `data-msys-linkname`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link<'a> {
    pub url: Option<&'a str>,
    pub name: Option<&'a str>,
}

fn link_fields(m: &mut Map<String, Value>, link: Link<'_>) {
    put_opt(m, "target_link_url", link.url);
    put_opt(m, "target_link_name", link.name);
}

/// `open`, `initial_open` or `click` (`link` for clicks).
pub fn track(
    kind: EventType,
    stamp: Stamp,
    t: &Transmission,
    r: &Recipient,
    visitor: &Visitor,
    link: Link<'_>,
) -> Event {
    let mut m = base(kind, stamp, t, r, Some(TRACK_META_LIMIT));
    put_opt(&mut m, "user_agent", visitor.user_agent.as_deref());
    put_opt(&mut m, "ip_address", visitor.ip_address.as_deref());
    link_fields(&mut m, link);
    m.insert("machine_open".into(), s(visitor.machine.to_string()));
    event(kind, stamp, t, m)
}

/// `list_unsubscribe` (one-click, with its `visitor`, or mailto:) or `link_unsubscribe`
/// (with the followed `link`).
pub fn unsubscribe(
    kind: EventType,
    stamp: Stamp,
    t: &Transmission,
    r: &Recipient,
    visitor: Option<&Visitor>,
    link: Link<'_>,
) -> Event {
    let mut m = base(kind, stamp, t, r, None);
    m.insert("mailfrom".into(), s(&r.raw));
    put_opt(
        &mut m,
        "ip_address",
        visitor.and_then(|v| v.ip_address.as_deref()),
    );
    if kind == EventType::LinkUnsubscribe {
        put_opt(
            &mut m,
            "user_agent",
            visitor.and_then(|v| v.user_agent.as_deref()),
        );
        link_fields(&mut m, link);
    }
    event(kind, stamp, t, m)
}

/// A batch as POSTed: a JSON array of items, from their stored JSON texts.
pub fn batch_body<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_135_107_000), "2026-12-01T14:25:07.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    /// The item is SparkPost's batch shape, its fields in the order written.
    #[test]
    fn an_item_wraps_the_fields_in_their_category() {
        let t = Transmission {
            transmission_id: "42".into(),
            campaign_id: Some("spring \"sale\"".into()),
            ..Transmission::default()
        };
        let r = Recipient {
            raw: "Bob@Example.org".into(),
            message_id: "42".into(),
            ..Recipient::default()
        };
        let stamp = Stamp {
            event_id: 7,
            timestamp: 1_796_135_107,
        };
        let e = injection(stamp, &t, &r);
        let item: Value = serde_json::from_str(&e.to_json()).unwrap();
        let expected =
            serde_json::json!({"msys": {"message_event": Value::Object(e.fields.clone())}});
        assert_eq!(item, expected);
        let fields = &item["msys"]["message_event"];
        assert_eq!(fields["campaign_id"], "spring \"sale\"");
        let order: Vec<&String> = fields.as_object().unwrap().keys().collect();
        assert_eq!(order, e.fields.keys().collect::<Vec<_>>());
        assert_eq!(order[..3], ["type", "event_id", "timestamp"]);
    }

    #[test]
    fn meta_truncation_keeps_whole_keys() {
        let mut meta = Map::new();
        for i in 0..100 {
            meta.insert(format!("key{i:02}"), Value::String("x".repeat(20)));
        }
        let cut = truncate_meta(&meta, TRACK_META_LIMIT);
        let text = Value::Object(cut.clone()).to_string();
        assert!(text.len() <= TRACK_META_LIMIT, "{}", text.len());
        assert!(cut.len() > 20 && cut.len() < 100);
        assert_eq!(cut.keys().next().map(String::as_str), Some("key00"));
        let small: Map<String, Value> = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(truncate_meta(&small, TRACK_META_LIMIT), small);
    }
}
