//! Which deliverability counters (SparkPost's `count_*` metrics) an event adds to. Pure:
//! the store calls it for each event it commits and keeps the sums per minute and hour.

use super::{Event, EventType};
use serde_json::Value;

/// Every metric the counters answer, in SparkPost's names.
pub const METRICS: [&str; 23] = [
    "count_targeted",
    "count_injected",
    "count_sent",
    "count_accepted",
    "count_delivered",
    "count_bounce",
    "count_hard_bounce",
    "count_soft_bounce",
    "count_block_bounce",
    "count_admin_bounce",
    "count_undetermined_bounce",
    "count_inband_bounce",
    "count_outofband_bounce",
    "count_delayed",
    "count_rendered",
    "count_unique_rendered",
    "count_initial_rendered",
    "count_unique_confirmed_opened",
    "count_clicked",
    "count_unique_clicked",
    "count_spam_complaint",
    "count_unsubscribe",
    "total_msg_volume",
];

/// A count that only the first such event of a message (to one recipient) adds to:
/// (metric, what the store remembers was seen).
pub type Unique = (&'static str, &'static str);

/// SparkPost's bounce categories by bounce class (its bounce classification codes).
pub fn bounce_category(class: u32) -> &'static str {
    match class {
        10 | 30 | 90 => "Hard",
        20..=24 | 40 | 60 | 70 | 100 => "Soft",
        50..=54 => "Block",
        25 => "Admin",
        _ => "Undetermined",
    }
}

/// SparkPost's names of the bounce classes.
pub fn bounce_class_name(class: u32) -> &'static str {
    match class {
        1 => "Undetermined",
        10 => "Invalid Recipient",
        20 => "Soft Bounce",
        21 => "DNS Failure",
        22 => "Mailbox Full",
        23 => "Too Large",
        24 => "Timeout",
        25 => "Admin Failure",
        30 => "Generic Bounce: No RCPT",
        40 => "Generic Bounce",
        50 => "Mail Block",
        51 => "Spam Block",
        52 => "Spam Content",
        53 => "Prohibited Attachment",
        54 => "Relaying Denied",
        60 => "Auto-Reply",
        70 => "Transient Failure",
        80 => "Subscribe",
        90 => "Unsubscribe",
        100 => "Challenge-Response",
        _ => "Undetermined",
    }
}

fn field<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.fields.get(name).and_then(Value::as_str)
}

/// The event's bounce class, for bounces.
pub fn bounce_class(event: &Event) -> Option<u32> {
    matches!(event.kind, EventType::Bounce | EventType::OutOfBand)
        .then(|| field(event, "bounce_class").and_then(|c| c.parse().ok()))
        .flatten()
}

/// The counts `event` adds (metric, amount), and the unique counts it adds when it is
/// the first of its kind for its message.
pub fn counts(event: &Event) -> (Vec<(&'static str, u64)>, &'static [Unique]) {
    let mut out = Vec::with_capacity(4);
    let uniques: &'static [Unique] = match event.kind {
        EventType::Injection => {
            out.extend([("count_targeted", 1), ("count_injected", 1)]);
            &[]
        }
        EventType::PolicyRejection => {
            out.push(("count_targeted", 1));
            &[]
        }
        EventType::Delivery => {
            let size = field(event, "msg_size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            out.extend([
                ("count_sent", 1),
                ("count_accepted", 1),
                ("count_delivered", 1),
                ("total_msg_volume", size),
            ]);
            &[]
        }
        EventType::Bounce | EventType::OutOfBand => {
            out.push(("count_bounce", 1));
            if event.kind == EventType::Bounce {
                // An in-band bounce was an attempt: SparkPost counts it as sent.
                out.extend([("count_inband_bounce", 1), ("count_sent", 1)]);
            } else {
                out.push(("count_outofband_bounce", 1));
            }
            out.push((
                match bounce_category(bounce_class(event).unwrap_or(1)) {
                    "Hard" => "count_hard_bounce",
                    "Soft" => "count_soft_bounce",
                    "Block" => "count_block_bounce",
                    "Admin" => "count_admin_bounce",
                    _ => "count_undetermined_bounce",
                },
                1,
            ));
            &[]
        }
        EventType::Delay => {
            out.push(("count_delayed", 1));
            &[]
        }
        EventType::Open => {
            out.push(("count_rendered", 1));
            &[
                ("count_unique_rendered", "rendered"),
                ("count_unique_confirmed_opened", "confirmed"),
            ]
        }
        EventType::InitialOpen => {
            out.push(("count_initial_rendered", 1));
            &[
                ("count_unique_rendered", "rendered"),
                ("count_unique_confirmed_opened", "confirmed"),
            ]
        }
        EventType::Click => {
            out.push(("count_clicked", 1));
            &[
                ("count_unique_clicked", "clicked"),
                ("count_unique_confirmed_opened", "confirmed"),
            ]
        }
        EventType::SpamComplaint => {
            out.push(("count_spam_complaint", 1));
            &[]
        }
        EventType::ListUnsubscribe | EventType::LinkUnsubscribe => {
            out.push(("count_unsubscribe", 1));
            &[]
        }
    };
    (out, uniques)
}

/// The counters' dimensions of an event: campaign, sending domain, subaccount, IP pool
/// and bounce class (empty when it has none).
pub fn dimensions(event: &Event) -> [String; 5] {
    let text = |name| field(event, name).unwrap_or_default().to_owned();
    [
        text("campaign_id"),
        text("sending_domain"),
        text("subaccount_id"),
        text("ip_pool"),
        bounce_class(event)
            .map(|c| c.to_string())
            .unwrap_or_default(),
    ]
}

/// What identifies the message (one recipient's copy) a unique count is about.
pub fn message_key(event: &Event) -> String {
    format!(
        "{}\n{}",
        event.transmission_id,
        event.rcpt_to().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, fields: &[(&str, &str)]) -> Event {
        Event {
            event_id: 1,
            kind,
            timestamp: 0,
            transmission_id: "7".into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect(),
        }
    }

    #[test]
    fn bounces_count_by_category_and_band() {
        let (c, u) = counts(&event(EventType::Bounce, &[("bounce_class", "10")]));
        assert_eq!(
            c,
            [
                ("count_bounce", 1),
                ("count_inband_bounce", 1),
                ("count_sent", 1),
                ("count_hard_bounce", 1)
            ]
        );
        assert!(u.is_empty());
        let (c, _) = counts(&event(EventType::OutOfBand, &[("bounce_class", "51")]));
        assert!(c.contains(&("count_block_bounce", 1)));
        assert!(c.contains(&("count_outofband_bounce", 1)));
        assert_eq!(bounce_category(25), "Admin");
        assert_eq!(bounce_category(22), "Soft");
        assert_eq!(bounce_category(1), "Undetermined");
    }

    #[test]
    fn deliveries_add_their_size_and_opens_are_unique_per_message() {
        let (c, _) = counts(&event(EventType::Delivery, &[("msg_size", "1234")]));
        assert!(c.contains(&("total_msg_volume", 1234)));
        let (_, u) = counts(&event(EventType::Click, &[]));
        assert!(u.contains(&("count_unique_clicked", "clicked")));
        let e = event(
            EventType::Bounce,
            &[("campaign_id", "spring"), ("bounce_class", "21")],
        );
        assert_eq!(dimensions(&e)[0], "spring");
        assert_eq!(dimensions(&e)[4], "21");
    }
}
