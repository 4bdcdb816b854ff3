//! The suppression policy (pure): which recipients of a plan are looked up, and what the
//! plan becomes once some of them are on the list. The lookups themselves are the
//! store's (`Store::suppressed`); the CSV format of `suppression import/export` is here.

use crate::api::plan::{Plan, PlannedRecipient};
use crate::api::{Rejection, SmtpApi};
use crate::store::{Account, SuppressionEntry, SuppressionType};

/// Sources SparkPost gives entries.
pub const SOURCE_MANUAL: &str = "Manually Added";
pub const SOURCE_LIST_UNSUBSCRIBE: &str = "List Unsubscribe";
pub const SOURCE_UNSUBSCRIBE_LINK: &str = "Unsubscribe Link";

/// The list and account a message is checked against, or `None` when it is not checked
/// (`options.skip_suppression`, or a copy of ours coming back).
pub fn scope(plan: &Plan) -> Option<(Account, SuppressionType)> {
    let skip = plan
        .api
        .as_ref()
        .and_then(|a: &SmtpApi| a.options.skip_suppression)
        .unwrap_or(false);
    if skip || plan.returning_copy {
        return None;
    }
    Some((
        plan.subaccount_id,
        SuppressionType::of_message(plan.transactional()),
    ))
}

/// Every address the plan delivers to, lower-cased, each once.
pub fn addresses(plan: &Plan) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(plan.recipients.len());
    plan.recipients
        .iter()
        .map(|r| r.address.to_lowercase())
        .filter(|a| seen.insert(a.clone()))
        .collect()
}

/// Take the `suppressed` addresses (lower-cased) out of the plan: they are neither
/// delivered, added nor copied; envelope recipients among them are deleted from the
/// transaction. With nobody left the message is refused with SparkPost's 554.
pub fn apply(plan: &mut Plan, suppressed: &[String]) -> Result<(), Rejection> {
    if suppressed.is_empty() {
        return Ok(());
    }
    let hit = |address: &str| suppressed.iter().any(|s| s.eq_ignore_ascii_case(address));
    let (out, keep): (Vec<PlannedRecipient>, Vec<PlannedRecipient>) =
        std::mem::take(&mut plan.recipients)
            .into_iter()
            .partition(|r| hit(&r.address));
    plan.recipients = keep;
    plan.suppressed = out;
    plan.copies.retain(|c| !hit(&c.address));
    if plan.recipients.is_empty() {
        return Err(Rejection::Suppressed);
    }
    Ok(())
}

/// The CSV header of SparkPost's suppression list export.
pub const CSV_HEADER: [&str; 3] = ["recipient", "type", "description"];

/// One CSV record problem, with its line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct CsvError {
    pub line: u64,
    pub message: String,
}

/// Read SparkPost's CSV (`recipient,type,description`; a header row is optional; a
/// missing type means `default_kind`).
pub fn read_csv<R: std::io::Read>(
    input: R,
    default_kind: Option<SuppressionType>,
    account: Account,
    now: u64,
    mut each: impl FnMut(SuppressionEntry) -> Result<(), CsvError>,
) -> Result<u64, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut count = 0;
    for (n, record) in reader.records().enumerate() {
        let line = n as u64 + 1;
        let record = record.map_err(|e| CsvError {
            line,
            message: e.to_string(),
        })?;
        let recipient = record.get(0).unwrap_or_default();
        if line == 1 && recipient.eq_ignore_ascii_case("recipient") {
            continue;
        }
        if recipient.is_empty() && record.len() <= 1 {
            continue; // blank line
        }
        if !crate::api::recipients::is_valid_mailbox(recipient) {
            return Err(CsvError {
                line,
                message: format!("`{recipient}` is not an email address"),
            });
        }
        let kind = match record.get(1).filter(|t| !t.is_empty()) {
            Some(t) => SuppressionType::parse(t).ok_or_else(|| CsvError {
                line,
                message: format!("type `{t}` is neither `transactional` nor `non_transactional`"),
            })?,
            None => default_kind.ok_or_else(|| CsvError {
                line,
                message: "no type: give one in the file or with --type".into(),
            })?,
        };
        let description = record.get(2).unwrap_or_default();
        each(SuppressionEntry::new(
            recipient,
            account,
            kind,
            SOURCE_MANUAL,
            description,
            now,
        ))?;
        count += 1;
    }
    Ok(count)
}

/// Write entries as SparkPost's CSV export, header first.
pub fn write_csv<W: std::io::Write>(
    out: W,
    entries: impl IntoIterator<Item = SuppressionEntry>,
) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(CSV_HEADER)?;
    for e in entries {
        writer.write_record([
            e.recipient.as_str(),
            e.kind.as_str(),
            e.description.as_str(),
        ])?;
    }
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_with_quoting() {
        let entries = vec![
            SuppressionEntry::new(
                "A@Example.com",
                None,
                SuppressionType::Transactional,
                SOURCE_MANUAL,
                "said \"stop\", twice",
                1,
            ),
            SuppressionEntry::new(
                "b@example.com",
                None,
                SuppressionType::NonTransactional,
                SOURCE_MANUAL,
                "line\nbreak",
                1,
            ),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, entries.clone()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("recipient,type,description\n"), "{text}");
        assert!(text.contains("\"said \"\"stop\"\", twice\""), "{text}");
        let mut back = Vec::new();
        let n = read_csv(out.as_slice(), None, None, 1, |e| {
            back.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(back, entries);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = read_csv(
            "a@example.com,transactional\nnot-an-address,transactional\n".as_bytes(),
            None,
            None,
            1,
            |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
        let e = read_csv("a@example.com\n".as_bytes(), None, None, 1, |_| Ok(())).unwrap_err();
        assert!(e.message.contains("--type"), "{e}");
        let n = read_csv(
            "a@example.com\n\nb@example.com,,x\n".as_bytes(),
            Some(SuppressionType::NonTransactional),
            Some(7),
            1,
            |e| {
                assert_eq!(e.account, Some(7));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, 2);
    }
}
