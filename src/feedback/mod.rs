//! Feedback: what comes back to the bounce domains (DSNs, plain-text bounces,
//! auto-replies) becomes SparkPost events, and hard bounces feed the suppression list.
//! The parts here are pure; `inbound` does the I/O and `lmtp` is the listener.

pub mod arf;
pub mod classify;
pub mod dsn;
pub mod follow;
pub mod inbound;
pub mod lmtp;
pub mod maillog;

use crate::config::Config;
use crate::events::{self, Bounce, EventType, Stamp, Transmission};
use crate::ids::IdError;
use crate::store::{Commit, SuppressionEntry, SuppressionType};
use classify::BounceClass;
use dsn::{Action, Report, ReportKind};

/// Which of our feedback addresses a recipient is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedbackAddress {
    /// `<bounce_local_part>+<transmission_id>@<bounce domain>`: DSNs and replies.
    Verp { transmission_id: String },
    /// `unsub+<transmission_id>@<bounce domain>`: the `mailto:` List-Unsubscribe.
    Unsubscribe { transmission_id: String },
    /// Any other address at a bounce domain (`postmaster@`, a bare bounce address).
    Other,
}

/// Is `rcpt` at one of the configured bounce domains, and which address is it?
pub fn feedback_address(rcpt: &str, config: &Config) -> Option<FeedbackAddress> {
    let rcpt = rcpt.trim().trim_matches(['<', '>']);
    let (local, domain) = rcpt.rsplit_once('@')?;
    let domain = domain.to_ascii_lowercase();
    if !config.bounce_domains().any(|d| d.0 == domain) {
        return None;
    }
    let id_after = |prefix: &str| {
        let prefix = format!("{prefix}+");
        local
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(&prefix))
            .map(|_| &local[prefix.len()..])
            // A copy's own sender carries a tag after the id: `bounces+TID-1a2b3c4d@`.
            .map(|id| id.split_once('-').map_or(id, |(id, _)| id))
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
    };
    if let Some(transmission_id) = id_after(&config.envelope.bounce_local_part.0) {
        return Some(FeedbackAddress::Verp { transmission_id });
    }
    if let Some(transmission_id) = id_after(crate::tracking::MAILTO_LOCAL_PART) {
        return Some(FeedbackAddress::Unsubscribe { transmission_id });
    }
    Some(FeedbackAddress::Other)
}

/// The unsubscribe token in a `mailto:` unsubscribe's subject (`unsubscribe:<token>`,
/// also after a client's `Re:` or other decoration).
pub fn mailto_token(subject: &str) -> Option<&str> {
    let prefix = crate::tracking::MAILTO_SUBJECT_PREFIX;
    let at = subject.to_ascii_lowercase().find(prefix)?;
    let rest = &subject[at + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|t| !t.is_empty())
}

/// Mail for the bounce domains only: inbound feedback, which the milter passes untouched.
pub fn is_inbound(rcpts: &[String], config: &Config) -> bool {
    !rcpts.is_empty() && rcpts.iter().all(|r| feedback_address(r, config).is_some())
}

/// The transmission a report is about: the VERP address's id, else the envelope sender
/// the returned original names.
pub fn transmission_of(
    address: &FeedbackAddress,
    report: &Report,
    config: &Config,
) -> Option<String> {
    if let FeedbackAddress::Verp { transmission_id } = address {
        return Some(transmission_id.clone());
    }
    let from = report.original.mail_from.as_deref()?;
    match feedback_address(from, config)? {
        FeedbackAddress::Verp { transmission_id } => Some(transmission_id),
        _ => None,
    }
}

/// The store cursor holding the host names our MTA calls itself (the milter's `j`
/// macro: Postfix's `$myhostname`, Sendmail's `$j`), space-separated: remembered so a
/// DSN that comes right after a restart is still known as ours.
pub const MTA_NAMES_CURSOR: &str = "mta_names";

/// The names in the stored value.
pub fn mta_names(value: &str) -> Vec<String> {
    value.split_whitespace().map(str::to_owned).collect()
}

/// The MTA's names the milter has stored so far.
pub async fn stored_mta_names(
    store: &dyn crate::store::Store,
) -> crate::store::StoreResult<Vec<String>> {
    Ok(store
        .cursor(MTA_NAMES_CURSOR)
        .await?
        .as_deref()
        .map(mta_names)
        .unwrap_or_default())
}

/// Does the report come from our own MTA (it gave up: in-band)?
pub fn in_band(report: &Report, our_mtas: &[String]) -> bool {
    report.kind == ReportKind::Dsn && is_ours(report.reporting_mta.as_deref(), our_mtas)
}

/// Is `reporting_mta` one of ours (the DSN is our MTA giving up: in-band)?
fn is_ours(reporting_mta: Option<&str>, ours: &[String]) -> bool {
    reporting_mta.is_some_and(|mta| ours.iter().any(|o| o.eq_ignore_ascii_case(mta.trim())))
}

/// One recipient's outcome, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: EventType,
    pub recipient: String,
    pub class: BounceClass,
    /// The reply as received (or the status code when there is no reply).
    pub reason: String,
    /// The remote server's address, when the report gives it.
    pub ip_address: Option<String>,
    /// When the attempt was made (Unix seconds), when the report says.
    pub attempted: Option<u64>,
}

/// The events and suppression entries a report yields for transmission `t`.
/// `our_mtas`: the host names our MTA writes as `Reporting-MTA`.
pub fn findings(report: &Report, our_mtas: &[String]) -> Vec<Finding> {
    let in_band = in_band(report, our_mtas);
    report
        .recipients
        .iter()
        .filter_map(|r| {
            let text = r.diagnostic.as_deref().unwrap_or("");
            let (kind, class) = match (report.kind, r.action) {
                (ReportKind::AutoReply, _) => (EventType::OutOfBand, BounceClass::AutoReply),
                (_, Action::Delayed) => (
                    EventType::Delay,
                    match classify::classify(r.status.as_deref(), text) {
                        // A delay is never a hard bounce, whatever the text says.
                        c if c.is_hard() => BounceClass::SoftBounce,
                        c => c,
                    },
                ),
                (_, Action::Failed) => (
                    if in_band {
                        EventType::Bounce
                    } else {
                        EventType::OutOfBand
                    },
                    classify::classify(r.status.as_deref(), text),
                ),
                _ => return None,
            };
            Some(Finding {
                kind,
                recipient: r.recipient.clone(),
                class,
                reason: r
                    .diagnostic
                    .clone()
                    .or_else(|| r.status.clone())
                    .unwrap_or_default(),
                ip_address: r.remote_ip(),
                attempted: r.last_attempt.or(report.date),
            })
        })
        .collect()
}

/// Deferred attempts so far per recipient (lower-cased), as the store counted them from
/// the MTA's log.
pub type Retries = std::collections::HashMap<String, u32>;

/// Build the commit for a report about transmission `t`. Each event carries the time
/// of the attempt the report tells of (never later than `now`). Recipients the
/// transmission did not go to are left out: anyone can send a report to a bounce
/// address (every recipient sees it as Return-Path), naming whom they like.
pub fn commit(
    report: &Report,
    t: &Transmission,
    our_mtas: &[String],
    retries: &Retries,
    now: u64,
    mut next_id: impl FnMut() -> Result<u64, IdError>,
) -> Result<(Commit, Vec<Finding>), IdError> {
    let mut found = findings(report, our_mtas);
    found.retain(|f| t.went_to(&f.recipient));
    let mut commit = Commit::default();
    for finding in &found {
        let raw_reason = finding.reason.clone();
        let bounce = Bounce {
            bounce_class: finding.class.code(),
            error_code: classify::reply_code(&raw_reason),
            raw_reason: raw_reason.clone(),
        };
        let at = finding.attempted.filter(|t| *t <= now).unwrap_or(now);
        let stamp = Stamp {
            event_id: next_id()?,
            timestamp: at,
        };
        let attempt = events::Attempt {
            ip_address: finding.ip_address.clone(),
            // Our second-resolution attempt time may fall before the injection's
            // millisecond: then it was no time at all.
            queue_time_ms: (t.injection_ms > 0).then(|| (at * 1000).saturating_sub(t.injection_ms)),
            num_retries: retries
                .get(&finding.recipient.to_lowercase())
                .copied()
                .unwrap_or(0),
        };
        commit.events.push(events::bounce(
            finding.kind,
            stamp,
            t,
            &t.recipient(&finding.recipient),
            &bounce,
            &attempt,
        ));
        if finding.class.is_hard() {
            let kind = if t.transactional {
                SuppressionType::Transactional
            } else {
                SuppressionType::NonTransactional
            };
            commit.suppress.push(SuppressionEntry::new(
                &finding.recipient,
                t.subaccount_id,
                kind,
                "Bounce Rule",
                &raw_reason,
                now,
            ));
        }
    }
    Ok((commit, found))
}

/// The transmission and recipient a complaint is about: our signed `X-MSFBL` header
/// first (it survives reports that strip the envelope), else the bounce address in
/// `Original-Mail-From` (or the address it was sent to) with `Original-Rcpt-To` or the
/// original's `To:`.
pub fn complaint_target(
    c: &arf::Complaint,
    address: &FeedbackAddress,
    config: &Config,
) -> Option<(String, String)> {
    let secret = config.reinject.secret_bytes();
    let signed = c
        .msfbl
        .as_deref()
        .filter(|_| !secret.is_empty())
        .and_then(|v| crate::api::copies::verify_fbl(secret, v));
    let named_rcpt = || c.original_rcpt_to.clone().or_else(|| c.original_to.clone());
    if let Some((tid, rcpt)) = signed {
        return Some((tid, rcpt.or_else(named_rcpt)?));
    }
    let tid = match c
        .original_mail_from
        .as_deref()
        .and_then(|from| feedback_address(from, config))
    {
        Some(FeedbackAddress::Verp { transmission_id }) => transmission_id,
        _ => match address {
            FeedbackAddress::Verp { transmission_id } => transmission_id.clone(),
            _ => return None,
        },
    };
    Some((tid, named_rcpt()?))
}

/// The `spam_complaint` event and the non-transactional suppression entry.
pub fn complaint_commit(
    c: &arf::Complaint,
    t: &Transmission,
    rcpt: &str,
    report_to: &str,
    now: u64,
    next_id: impl FnOnce() -> Result<u64, IdError>,
) -> Result<Commit, IdError> {
    let stamp = Stamp {
        event_id: next_id()?,
        timestamp: now,
    };
    Ok(Commit {
        events: vec![events::spam_complaint(
            stamp,
            t,
            &t.recipient(rcpt),
            &c.fbtype,
            c.report_by.as_deref(),
            report_to,
        )],
        transmission: None,
        suppress: vec![SuppressionEntry::new(
            rcpt,
            t.subaccount_id,
            SuppressionType::NonTransactional,
            "Spam Complaint",
            &format!(
                "{} report by {}",
                c.fbtype,
                c.report_by.as_deref().unwrap_or("unknown")
            ),
            now,
        )],
        ..Commit::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[envelope]\nbounce_domain = \"bounces.example.net\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn verp_addresses() {
        let c = config();
        assert_eq!(
            feedback_address("bounces+123@Bounces.Example.net", &c),
            Some(FeedbackAddress::Verp {
                transmission_id: "123".into()
            })
        );
        assert_eq!(
            feedback_address("bounces+123-1a2b3c4d@bounces.example.net", &c),
            Some(FeedbackAddress::Verp {
                transmission_id: "123".into()
            })
        );
        assert_eq!(
            feedback_address("postmaster@bounces.example.net", &c),
            Some(FeedbackAddress::Other)
        );
        assert_eq!(
            feedback_address("bounces+12x@bounces.example.net", &c),
            Some(FeedbackAddress::Other)
        );
        assert_eq!(feedback_address("user@example.org", &c), None);
        assert_eq!(
            feedback_address("unsub+77@bounces.example.net", &c),
            Some(FeedbackAddress::Unsubscribe {
                transmission_id: "77".into()
            })
        );
        assert_eq!(mailto_token("unsubscribe:AbC-_9"), Some("AbC-_9"));
        assert_eq!(mailto_token("Re: Unsubscribe:xyz please"), Some("xyz"));
        assert_eq!(mailto_token("unsubscribe me"), None);
        assert!(is_inbound(&["<bounces+1@bounces.example.net>".into()], &c));
        assert!(!is_inbound(
            &[
                "bounces+1@bounces.example.net".into(),
                "a@example.org".into()
            ],
            &c
        ));
        assert!(!is_inbound(&[], &c));
    }

    /// A DSN sent to a bounce address may name any address: only the transmission's
    /// own recipients get a bounce event and a suppression entry.
    #[test]
    fn reports_about_addresses_the_transmission_did_not_go_to_are_ignored() {
        let text = "Reporting-MTA: dns; mx.example.org\r\n\r\n\
            Final-Recipient: rfc822; victim@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\
            Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n\
            Final-Recipient: rfc822; Dead@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\
            Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n";
        let message = format!(
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\n{text}\r\n--b--\r\n"
        );
        let report = dsn::parse(message.as_bytes());
        assert_eq!(findings(&report, &[]).len(), 2, "{report:?}");
        let mut t = Transmission::default();
        t.add_recipient(&events::Recipient {
            raw: "dead@example.org".into(),
            ..events::Recipient::default()
        });
        let mut id = 0;
        let (commit, found) = commit(&report, &t, &[], &Retries::new(), 1_000, || {
            id += 1;
            Ok(id)
        })
        .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].recipient.to_lowercase(), "dead@example.org");
        assert_eq!(commit.events.len(), 1);
        let suppressed: Vec<_> = commit
            .suppress
            .iter()
            .map(|s| s.recipient.as_str())
            .collect();
        assert_eq!(suppressed, ["dead@example.org"]);
        // A transmission from an older store, without its recipients, is taken at its word.
        let old = Transmission::default();
        assert!(old.went_to("anyone@example.com"));
        assert!(!t.went_to("victim@example.com"));
    }
}
