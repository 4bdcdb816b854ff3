//! What the milter records for a message it accepts (pure): the transmission's shared
//! facts, an `injection` event for every recipient it goes to, and `injection` plus a
//! class-25 `bounce` for every suppressed one. Ids and the clock come from outside.

use crate::api::plan::{Delivery, MessageFacts, Plan, from_header_address};
use crate::api::recipients::RcptType;
use crate::config::Config;
use crate::events::{self, Recipient, Stamp, Transmission};
use crate::ids::IdError;
use crate::store::Commit;

/// How the message and its copies left the milter.
#[derive(Clone, Debug, Default)]
pub struct Handed {
    /// The MTA's queue id of the original.
    pub queue_id: Option<String>,
    /// Size of the original as delivered, when known.
    pub original_size: Option<usize>,
    /// Per copy, in the plan's order: its queue id (from the MTA's reply) and size.
    pub copies: Vec<(Option<String>, usize)>,
    /// The message has an AMPHTML part.
    pub amp_enabled: bool,
}

/// The queue id in an MTA's reply to a message: Postfix's `250 2.0.0 Ok: queued as
/// 4Xk2Lq0Zz`, Sendmail's `250 2.0.0 6B2GqOcU028373 Message accepted for delivery`.
pub fn queue_id_of_reply(reply: &str) -> Option<String> {
    let tail = match reply.split_once("queued as ") {
        Some((_, tail)) => tail,
        None if reply.starts_with('2') && reply.contains(" Message accepted for delivery") => {
            reply.split_whitespace().nth(2)?
        }
        None => return None,
    };
    let id: String = tail
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The decoded Subject (RFC 2047) of the message.
fn subject(facts: &MessageFacts) -> Option<String> {
    let value = facts.headers.iter().find(|h| h.is("Subject"))?;
    let mut head = b"Subject: ".to_vec();
    head.extend_from_slice(&value.value);
    head.extend_from_slice(b"\r\n\r\n");
    let message = mail_parser::MessageParser::default().parse_headers(&head)?;
    message.subject().map(str::to_owned)
}

/// The shared facts of the plan's transmission (its recipients are added as they are
/// recorded).
pub fn transmission(
    plan: &Plan,
    facts: &MessageFacts,
    handed: &Handed,
    config: &Config,
    now_ms: u64,
) -> Transmission {
    let api = plan.api.as_ref();
    let options = api.map(|a| &a.options);
    let friendly_from = facts.from_header().as_deref().and_then(from_header_address);
    let sending_domain = friendly_from
        .as_deref()
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase());
    Transmission {
        transmission_id: plan.transmission_id.clone(),
        campaign_id: api.and_then(|a| a.campaign_id.clone()),
        tags: api.map(|a| a.tags.clone()).unwrap_or_default(),
        metadata: api.and_then(|a| a.metadata.clone()).unwrap_or_default(),
        subaccount_id: plan.subaccount_id,
        friendly_from,
        sending_domain,
        msg_from: plan
            .mail_from
            .clone()
            .unwrap_or_else(|| facts.mail_from.clone()),
        subject: subject(facts),
        ip_pool: plan.ip_pool.clone(),
        injection_ms: now_ms,
        transactional: plan.transactional(),
        sandbox: options.and_then(|o| o.sandbox).unwrap_or(false),
        sending_ip: config
            .sending_ip(plan.ip_pool.as_deref())
            .map(|ip| ip.to_string()),
        customer_id: Some(config.events.customer_id.clone()),
        click_tracking: plan.engagement.click_tracking,
        open_tracking: plan.engagement.open_tracking,
        // The initial-open pixel goes in with the other one.
        initial_pixel: plan.engagement.open_tracking,
        amp_enabled: handed.amp_enabled,
        recipients: Default::default(),
    }
}

fn rcpt_type(kind: RcptType) -> Option<&'static str> {
    (kind != RcptType::To).then(|| kind.as_str())
}

/// Everything to commit before the message is accepted.
pub fn accepted(
    plan: &Plan,
    facts: &MessageFacts,
    handed: &Handed,
    config: &Config,
    now_ms: u64,
    mut next_id: impl FnMut() -> Result<u64, IdError>,
) -> Result<Commit, IdError> {
    let mut t = transmission(plan, facts, handed, config, now_ms);
    let timestamp = now_ms / 1000;
    let mut stamp = || -> Result<Stamp, IdError> {
        Ok(Stamp {
            event_id: next_id()?,
            timestamp,
        })
    };
    let original_id = stamp()?.event_id.to_string();
    let mut events = Vec::with_capacity(plan.recipients.len() + 2 * plan.suppressed.len());
    let mut copies = handed.copies.iter();
    for r in &plan.recipients {
        let (message_id, queue_id, msg_size) = match r.delivery {
            Delivery::Copy => {
                let (queue_id, size) = copies.next().cloned().unwrap_or((None, 0));
                (stamp()?.event_id.to_string(), queue_id, Some(size))
            }
            Delivery::Original | Delivery::AddRecipient => (
                original_id.clone(),
                handed.queue_id.clone(),
                handed.original_size,
            ),
        };
        let recipient = Recipient {
            raw: r.address.clone(),
            rcpt_type: rcpt_type(r.rcpt_type),
            message_id,
            queue_id,
            msg_size,
        };
        t.add_recipient(&recipient);
        events.push(events::injection(stamp()?, &t, &recipient));
    }
    for r in &plan.suppressed {
        let recipient = Recipient {
            raw: r.address.clone(),
            rcpt_type: rcpt_type(r.rcpt_type),
            message_id: original_id.clone(),
            queue_id: handed.queue_id.clone(),
            // The original it was taken out of.
            msg_size: handed.original_size,
        };
        t.add_recipient(&recipient);
        events.push(events::injection(stamp()?, &t, &recipient));
        events.push(events::suppressed(stamp()?, &t, &recipient));
    }
    Ok(Commit {
        events,
        transmission: Some(t),
        ..Commit::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_from_replies() {
        assert_eq!(
            queue_id_of_reply("250 2.0.0 Ok: queued as 4Xk2Lq0Zz1z3").as_deref(),
            Some("4Xk2Lq0Zz1z3")
        );
        assert_eq!(
            queue_id_of_reply("250 2.0.0 Ok: queued as ABC123 (x)").as_deref(),
            Some("ABC123")
        );
        assert_eq!(queue_id_of_reply("/usr/sbin/sendmail exited 0"), None);
        assert_eq!(
            queue_id_of_reply("250 2.0.0 6B2GqOcU028373 Message accepted for delivery").as_deref(),
            Some("6B2GqOcU028373")
        );
        assert_eq!(
            queue_id_of_reply("550 5.0.0 X Message accepted for delivery"),
            None
        );
    }
}
