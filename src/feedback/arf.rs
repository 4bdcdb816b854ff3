//! Spam complaints: ARF feedback reports (RFC 5965), parsed with mail-auth's report
//! module. Pure: bytes in, a [`Complaint`] out.

use mail_auth::report::{Feedback, FeedbackType};

/// What a feedback report says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Complaint {
    /// SparkPost's `fbtype`: `abuse`, `fraud`, `virus`, `other`, ...
    pub fbtype: String,
    /// `Original-Rcpt-To` (often redacted by the provider, RFC 6590).
    pub original_rcpt_to: Option<String>,
    /// `Original-Mail-From`: our bounce address, naming the transmission.
    pub original_mail_from: Option<String>,
    /// Our `X-MSFBL` header from the returned original.
    pub msfbl: Option<String>,
    /// The returned original's first `To:` address.
    pub original_to: Option<String>,
    /// `Reporting-MTA`, or the domain of the report's `From:` (SparkPost's `report_by`).
    pub report_by: Option<String>,
}

/// Read a feedback report; `None` when the message is not one. mail-auth parses it
/// with mail-parser, whose internal assertions fire on some hostile input in debug
/// builds (found by fuzzing): a panic there is "not a report".
pub fn parse(raw: &[u8]) -> Option<Complaint> {
    std::panic::catch_unwind(|| parse_report(raw))
        .ok()
        .flatten()
}

fn parse_report(raw: &[u8]) -> Option<Complaint> {
    let feedback = Feedback::parse_rfc5322(raw).ok()?;
    let fbtype = match feedback.feedback_type() {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Virus => "virus",
        FeedbackType::Other => "other",
    };
    let original = feedback
        .message()
        .or(feedback.headers())
        .and_then(|text| mail_parser::MessageParser::default().parse_headers(text.as_bytes()));
    let report = mail_parser::MessageParser::default().parse_headers(raw);
    let report_by = feedback
        .reporting_mta()
        .map(|m| m.split(';').next_back().unwrap_or(m).trim().to_owned())
        .or_else(|| {
            report
                .as_ref()
                .and_then(|r| r.from())
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .and_then(|a| a.rsplit_once('@'))
                .map(|(_, d)| d.to_ascii_lowercase())
        });
    let clean = |s: &str| s.trim().trim_matches(['<', '>']).to_owned();
    Some(Complaint {
        fbtype: fbtype.to_owned(),
        original_rcpt_to: feedback
            .original_rcpt_to()
            .map(clean)
            .filter(|s| !s.is_empty()),
        original_mail_from: feedback
            .original_mail_from()
            .map(clean)
            .filter(|s| !s.is_empty()),
        msfbl: original
            .as_ref()
            .and_then(|m| m.header_raw(crate::api::copies::FBL_HEADER))
            .map(|v| v.trim().to_owned()),
        original_to: original
            .as_ref()
            .and_then(|m| m.to())
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned),
        report_by,
    })
}
