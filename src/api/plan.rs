//! The plan for one message: from what the MTA told the milter (envelope, a few headers,
//! the SMTP AUTH user) and the configuration, decide the reply or the edits. Pure: the
//! transmission id comes from a closure so the clock stays outside.

use super::copies::{
    CopyPlan, FBL_HEADER, HeaderField, MARKER_HEADER, fbl_value, marker_value, verify_marker,
};
use super::header::{HEADER_NAME, Known, SmtpApi, parse_header_values};
use super::recipients::{RcptType, Recipient, address_list_header, dedupe, domain_of};
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
    /// Every header field, in order, as the MTA passed it.
    pub headers: Vec<HeaderField>,
    /// The SMTP AUTH user (`{auth_authen}`), if the client authenticated.
    pub auth_authen: Option<String>,
    /// When the message was received (Unix seconds); dates the copies' loop markers.
    pub received_at: u64,
}

impl MessageFacts {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.is(name))
            .map(|h| h.value.as_slice())
    }

    pub fn count(&self, name: &str) -> usize {
        self.values(name).count()
    }

    /// The first `From:` header's value.
    pub fn from_header(&self) -> Option<String> {
        self.values("From")
            .next()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// The message's `X-MSYS-API` header, parsed and validated (`None`: no header).
pub type ParsedApi = Result<Option<SmtpApi>, Rejection>;

/// Parse the message's `X-MSYS-API` header(s) against the configured names.
pub fn parse_api(facts: &MessageFacts, config: &Config) -> ParsedApi {
    let ip_pools = config.ip_pool_names();
    let dkim_keys = config.dkim_key_names();
    let values: Vec<&[u8]> = facts.values(HEADER_NAME).collect();
    parse_header_values(
        &values,
        Known {
            ip_pools: &ip_pools,
            dkim_keys: &dkim_keys,
        },
    )
}

/// What the delivered messages carry beyond the shared edits (docs/behaviour.md section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Engagement {
    pub open_tracking: bool,
    pub click_tracking: bool,
    pub inline_css: bool,
    /// `List-Unsubscribe` and `List-Unsubscribe-Post` are added (not transactional, and a
    /// tracking endpoint is configured).
    pub list_unsubscribe: bool,
}

impl Engagement {
    /// The header's options over the configured defaults. Links need an endpoint: without
    /// `[tracking] base_url` nothing is tracked and no List-Unsubscribe is added.
    pub fn new(api: Option<&SmtpApi>, config: &Config) -> Self {
        let options = api.map(|a| &a.options);
        let pick = |o: Option<bool>, default: bool| o.unwrap_or(default);
        let endpoint = config.tracking.base_url.is_some();
        Engagement {
            open_tracking: endpoint
                && pick(options.and_then(|o| o.open_tracking), config.tracking.open),
            click_tracking: endpoint
                && pick(
                    options.and_then(|o| o.click_tracking),
                    config.tracking.click,
                ),
            inline_css: pick(options.and_then(|o| o.inline_css), false),
            list_unsubscribe: endpoint && !pick(options.and_then(|o| o.transactional), false),
        }
    }

    /// Does every recipient's message differ (its own links or unsubscribe address)?
    pub fn per_recipient(&self) -> bool {
        self.open_tracking || self.click_tracking || self.list_unsubscribe
    }

    /// Is the body rewritten?
    pub fn rewrites_body(&self) -> bool {
        self.open_tracking || self.click_tracking || self.inline_css
    }
}

/// Whether the milter needs the body: to build personalised copies, to rewrite it, or to
/// check where AMPHTML parts sit (only a multipart message can have one). A message that
/// will be refused needs none.
pub fn needs_body(facts: &MessageFacts, api: &ParsedApi, config: &Config) -> bool {
    let Ok(api) = api else {
        return false;
    };
    let engagement = Engagement::new(api.as_ref(), config);
    let multipart = facts.values("Content-Type").next().is_some_and(|v| {
        String::from_utf8_lossy(v)
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/")
    });
    let copies = api.as_ref().is_some_and(|api| {
        added_recipients(facts, api)
            .iter()
            .any(|(kind, _)| personalised(*kind, &engagement))
    }) || (engagement.per_recipient() && facts.rcpts.len() > 1);
    let signed = dkim_key_name(config, api.as_ref(), facts).is_some();
    copies || engagement.rewrites_body() || multipart || signed
}

/// The name of the `[[dkim_key]]` that signs a message: the one `options.dkim_key`
/// names, else its From domain's `[[sending_domain]] dkim_key`; `None`: not signed.
/// Chosen among the configured names, as values: the keys themselves are loaded with
/// the configuration and used where the message is signed (render.rs).
fn dkim_key_name<'a>(
    config: &'a Config,
    api: Option<&SmtpApi>,
    facts: &MessageFacts,
) -> Option<&'a str> {
    let configured = |name: &str| {
        config
            .dkim_keys
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.name.as_str())
    };
    if let Some(name) = api.and_then(|a| a.options.dkim_key.as_deref()) {
        return configured(name);
    }
    let domain = sending_domain(facts)?;
    let name = config
        .sending_domains
        .iter()
        .find(|d| d.name.0 == domain)?
        .dkim_key
        .as_deref()?;
    configured(name)
}

/// Does this kind of added recipient get a copy of its own? Bcc recipients always (only
/// their copy shows their Bcc header); cc recipients when each message carries its own
/// links. Archive recipients get the first primary recipient's message.
fn personalised(kind: RcptType, engagement: &Engagement) -> bool {
    match kind {
        RcptType::Bcc => true,
        RcptType::Cc | RcptType::To => engagement.per_recipient(),
        RcptType::Archive => false,
    }
}

fn added_recipients<'a>(facts: &MessageFacts, api: &'a SmtpApi) -> Vec<(RcptType, &'a Recipient)> {
    dedupe(
        &facts.rcpts,
        [
            (RcptType::Cc, &api.cc),
            (RcptType::Bcc, &api.bcc),
            (RcptType::Archive, &api.archive),
        ],
    )
}

/// How a recipient gets its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// An envelope recipient of the original transaction.
    Original,
    /// Added to the original transaction with the add-recipient action.
    AddRecipient,
    /// Gets a personalised copy, re-injected before the original is accepted (an
    /// envelope recipient moved to a copy is deleted from the original).
    Copy,
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
    /// The new MAIL FROM; `None` leaves it unchanged. Copies use it too.
    pub mail_from: Option<String>,
    /// Personalised copies to hand to the MTA before the original is accepted.
    pub copies: Vec<CopyPlan>,
    /// Tracking, unsubscribe and CSS work on the messages.
    pub engagement: Engagement,
    /// A copy of ours that came back: passed once, unchanged but for the marker.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub returning_copy: bool,
    /// The parsed header, when the message had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<SmtpApi>,
    /// Recipients on the suppression list: delivered nothing (see `suppression.rs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<PlannedRecipient>,
    /// The pool the message leaves through (`options.ip_pool` or the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_pool: Option<String>,
    /// The pool's MTA transport, carried in [`ROUTE_HEADER`] for the MTA to act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Processed in full, then held by the MTA: nothing reaches a recipient.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// The `[[dkim_key]]` that signs the message (and its copies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dkim_key: Option<String>,
}

/// The header that tells the MTA which transport a message leaves through (Postfix:
/// `milter_header_checks` and the re-injection cleanup's `header_checks` turn it into
/// `FILTER`); removed from what a client sends, stripped at delivery.
pub const ROUTE_HEADER: &str = "X-MSYS-Route";
/// The header that makes the MTA hold a sandbox message's re-injected copies.
pub const SANDBOX_HEADER: &str = "X-MSYS-Sandbox";

impl Plan {
    /// Recipients the milter adds to the transaction.
    pub fn added_recipients(&self) -> impl Iterator<Item = &PlannedRecipient> {
        self.recipients
            .iter()
            .filter(|r| r.delivery == Delivery::AddRecipient)
    }

    /// Envelope recipients taken out of the original: moved into copies of their own,
    /// or suppressed.
    pub fn deleted_recipients(&self) -> impl Iterator<Item = &PlannedRecipient> {
        self.recipients
            .iter()
            .filter(|r| r.delivery == Delivery::Copy)
            .chain(&self.suppressed)
            .filter(|r| r.rcpt_type == RcptType::To)
    }

    /// Does the original message itself still go to anyone? When every recipient left
    /// gets a copy of its own, the original is discarded once the copies are handed over.
    pub fn original_delivered(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| matches!(r.delivery, Delivery::Original | Delivery::AddRecipient))
    }

    /// Is the message transactional (`options.transactional`)?
    pub fn transactional(&self) -> bool {
        self.api
            .as_ref()
            .and_then(|a| a.options.transactional)
            .unwrap_or(false)
    }
}

/// Decide what happens to a message: a rejection with its exact reply, or the plan.
pub fn plan(
    facts: &MessageFacts,
    config: &Config,
    next_id: impl FnOnce() -> Result<u64, IdError>,
) -> Result<Plan, Rejection> {
    plan_parsed(facts, parse_api(facts, config), config, next_id)
}

/// [`plan`] with the header already parsed by [`parse_api`].
pub fn plan_parsed(
    facts: &MessageFacts,
    api: ParsedApi,
    config: &Config,
    next_id: impl FnOnce() -> Result<u64, IdError>,
) -> Result<Plan, Rejection> {
    let secret = config.reinject.secret_bytes();
    let subaccount_id = facts.auth_authen.as_deref().and_then(subaccount);
    let marker_edits = delete_all(facts, MARKER_HEADER);
    if let Some(plan) = returning_copy(facts, secret, &marker_edits) {
        // Its original passed this check already; a marker never bypasses it.
        check_sending_domain(facts, config, subaccount_id)?;
        return Ok(plan);
    }
    let api = api?;
    check_sending_domain(facts, config, subaccount_id)?;

    let empty = SmtpApi::default();
    let lists = api.as_ref().unwrap_or(&empty);
    let added = added_recipients(facts, lists);
    let transmission_id = next_id().map_err(|_| Rejection::TransmissionId)?;
    let tid = transmission_id.to_string();

    let engagement = Engagement::new(api.as_ref(), config);
    let marker = |rcpt: &str| {
        config.reinject.loop_marker.then(|| {
            let value = marker_value(secret, &tid, rcpt, facts.received_at);
            (MARKER_HEADER.to_owned(), value)
        })
    };
    let mut recipients = Vec::new();
    let mut copies = Vec::new();
    // The original keeps the first envelope recipient; with per-recipient content every
    // other one gets its own copy.
    for (i, address) in facts.rcpts.iter().enumerate() {
        let delivery = if i > 0 && personalised(RcptType::To, &engagement) {
            copies.push(CopyPlan {
                address: address.clone(),
                rcpt_type: RcptType::To,
                extra_headers: marker(address).into_iter().collect(),
            });
            Delivery::Copy
        } else {
            Delivery::Original
        };
        recipients.push(PlannedRecipient {
            address: address.clone(),
            rcpt_type: RcptType::To,
            delivery,
        });
    }
    for (kind, rcpt) in &added {
        let delivery = if personalised(*kind, &engagement) {
            let mut extra_headers = Vec::new();
            if *kind == RcptType::Bcc {
                let bcc = address_list_header(std::slice::from_ref(*rcpt), "Bcc: ".len());
                extra_headers.push(("Bcc".to_owned(), bcc));
            }
            extra_headers.extend(marker(&rcpt.email));
            copies.push(CopyPlan {
                address: rcpt.email.clone(),
                rcpt_type: *kind,
                extra_headers,
            });
            Delivery::Copy
        } else {
            Delivery::AddRecipient
        };
        recipients.push(PlannedRecipient {
            address: rcpt.email.clone(),
            rcpt_type: *kind,
            delivery,
        });
    }

    let dkim_key = dkim_key_name(config, api.as_ref(), facts).map(str::to_owned);
    let mail_from = bounce_address(facts, config, transmission_id);
    let mut header_edits = marker_edits;
    if mail_from.is_some() {
        // Mail that leaves with our bounce address says which transmission and
        // recipient it is, signed, so a complaint can be tied back even when the
        // report strips the envelope.
        for copy in &mut copies {
            let value = fbl_value(secret, &tid, Some(&copy.address));
            copy.extra_headers.push((FBL_HEADER.to_owned(), value));
        }
        let in_original: Vec<&str> = recipients
            .iter()
            .filter(|r| r.delivery != Delivery::Copy)
            .map(|r| r.address.as_str())
            .collect();
        let only = (in_original.len() == 1).then(|| in_original[0]);
        header_edits.extend(delete_all(facts, FBL_HEADER));
        header_edits.push(HeaderEdit::Add {
            name: FBL_HEADER.into(),
            value: fbl_value(secret, &tid, only),
        });
    }
    header_edits.extend(delete_all(facts, HEADER_NAME));
    // Routing and holding are ours to say: whatever a client wrote goes.
    header_edits.extend(delete_all(facts, ROUTE_HEADER));
    header_edits.extend(delete_all(facts, SANDBOX_HEADER));
    let options = api.as_ref().map(|a| &a.options);
    let ip_pool = options
        .and_then(|o| o.ip_pool.clone())
        .or_else(|| config.envelope.default_ip_pool.clone());
    let route = ip_pool
        .as_deref()
        .filter(|p| *p != "sp_shared")
        .and_then(|p| config.ip_pools.iter().find(|c| c.name == p))
        .and_then(|c| c.transport.clone());
    if let Some(transport) = &route {
        header_edits.push(HeaderEdit::Add {
            name: ROUTE_HEADER.into(),
            value: transport.clone(),
        });
    }
    let sandbox = options.and_then(|o| o.sandbox).unwrap_or(false);
    if sandbox {
        header_edits.push(HeaderEdit::Add {
            name: SANDBOX_HEADER.into(),
            value: tid.clone(),
        });
    }
    if !lists.cc.is_empty() {
        let value = address_list_header(&lists.cc, "Cc: ".len());
        header_edits.extend(cc_edits(facts.count("Cc"), value));
    }
    // Copies and the original must share one Message-ID; the MTA would give each its own.
    if !copies.is_empty() && facts.count("Message-ID") == 0 {
        let domain = sending_domain(facts).unwrap_or_else(|| "localhost".into());
        header_edits.push(HeaderEdit::Add {
            name: "Message-ID".into(),
            value: format!("<msys.{tid}@{domain}>"),
        });
    }

    Ok(Plan {
        transmission_id: tid,
        subaccount_id,
        recipients,
        header_edits,
        mail_from,
        copies,
        engagement,
        returning_copy: false,
        api,
        suppressed: Vec::new(),
        ip_pool,
        route,
        sandbox,
        dkim_key,
    })
}

/// A message carrying our valid marker is one of our copies that came back to the
/// milter: pass it unchanged (only the marker goes), never copy it again.
fn returning_copy(
    facts: &MessageFacts,
    secret: &[u8],
    marker_edits: &[HeaderEdit],
) -> Option<Plan> {
    // A copy has exactly the one recipient its marker names.
    let [rcpt] = facts.rcpts.as_slice() else {
        return None;
    };
    let tid = facts
        .values(MARKER_HEADER)
        .find_map(|v| verify_marker(secret, v, rcpt, facts.received_at))?;
    Some(Plan {
        transmission_id: tid,
        subaccount_id: None,
        recipients: facts
            .rcpts
            .iter()
            .map(|address| PlannedRecipient {
                address: address.clone(),
                rcpt_type: RcptType::To,
                delivery: Delivery::Original,
            })
            .collect(),
        header_edits: marker_edits.to_vec(),
        mail_from: None,
        copies: Vec::new(),
        engagement: Engagement::default(),
        returning_copy: true,
        ip_pool: None,
        route: None,
        sandbox: false,
        dkim_key: None,
        api: None,
        suppressed: Vec::new(),
    })
}

/// Delete every occurrence of a header, highest index first so indexes stay valid.
fn delete_all(facts: &MessageFacts, name: &str) -> Vec<HeaderEdit> {
    let count = i32::try_from(facts.count(name)).unwrap_or(i32::MAX);
    (1..=count)
        .rev()
        .map(|index| HeaderEdit::Delete {
            name: name.into(),
            index,
        })
        .collect()
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

/// The first address of a `From:` header value.
pub fn from_header_address(value: &str) -> Option<String> {
    let mut line = super::header::unfold(value.as_bytes());
    line.push(b'\n');
    let parsed = mail_parser::parsers::MessageStream::new(&line).parse_address();
    parsed.as_address()?.first()?.address().map(str::to_owned)
}

/// The domain of the first address of a `From:` header value.
pub fn from_header_domain(value: &str) -> Option<String> {
    domain_of(&from_header_address(value)?)
}

/// The domain a message sends as: its From: header, else its MAIL FROM.
pub fn sending_domain(facts: &MessageFacts) -> Option<String> {
    facts
        .from_header()
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

/// The rewritten MAIL FROM (docs/behaviour.md section 4), or `None` to leave it alone.
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
        .or_else(|| of_sending_domain(facts.from_header().as_deref().and_then(from_header_domain)))
        .or_else(|| config.envelope.bounce_domain.as_ref().map(|d| d.0.clone()))?;
    Some(format!(
        "{}+{transmission_id}@{domain}",
        config.envelope.bounce_local_part.0
    ))
}
