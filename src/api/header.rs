//! The `X-MSYS-API` header: unfold, decode RFC 2047, parse JSON, validate into [`SmtpApi`].
//! Validation runs in the order docs/behaviour.md section 2 fixes, so the first problem found
//! is the one reported.

use super::recipients::{Recipient, is_valid_mailbox};
use super::reply::{JsonType, Rejection};
use serde::Serialize;
use serde_json::{Map, Value};

/// The header's name; matched case-insensitively.
pub const HEADER_NAME: &str = "X-MSYS-API";

const MAX_CAMPAIGN_ID: usize = 64;
const MAX_TAGS: usize = 10;
/// Total entries of cc + bcc + archive, counted before dedupe.
pub const MAX_LIST_RECIPIENTS: usize = 1000;

/// The options of the header; `None` means "not given: use the configured default".
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ApiOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_tracking: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_tracking: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactional: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_suppression: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_css: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dkim_key: Option<String>,
}

/// A validated `X-MSYS-API` header.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SmtpApi {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    pub tags: Vec<String>,
    pub cc: Vec<Recipient>,
    pub bcc: Vec<Recipient>,
    pub archive: Vec<Recipient>,
    pub options: ApiOptions,
}

/// Names configured on this host that header values may refer to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known<'a> {
    pub ip_pools: &'a [String],
    pub dkim_keys: &'a [String],
}

/// Unfold a header value: every line break (LF or CRLF) plus the run of spaces and tabs
/// after it becomes one space, as SparkPost documents.
pub fn unfold(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        let is_break = b == b'\n' || (b == b'\r' && raw.get(i + 1) == Some(&b'\n'));
        if is_break {
            i += if b == b'\r' { 2 } else { 1 };
            while i < raw.len() && matches!(raw[i], b' ' | b'\t') {
                i += 1;
            }
            out.push(b' ');
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// Unfold, check UTF-8 and decode RFC 2047 encoded-words (any charset mail-parser knows).
pub fn decode_value(raw: &[u8]) -> Result<String, Rejection> {
    let unfolded = unfold(raw);
    let text = String::from_utf8(unfolded)
        .map_err(|_| Rejection::JsonSyntax("header value is not valid UTF-8".into()))?;
    if !text.contains("=?") {
        return Ok(text);
    }
    // mail-parser reads a header line up to its LF; the value is unfolded already.
    let mut line = text.into_bytes();
    line.push(b'\n');
    let decoded = mail_parser::parsers::MessageStream::new(&line).parse_unstructured();
    Ok(decoded.as_text().unwrap_or_default().to_owned())
}

/// Parse and validate the header values of one message (all `X-MSYS-API` occurrences).
/// `None` when the message has no header.
pub fn parse_header_values(
    values: &[&[u8]],
    known: Known<'_>,
) -> Result<Option<SmtpApi>, Rejection> {
    match values {
        [] => Ok(None),
        [value] => parse(value, known).map(Some),
        _ => Err(Rejection::HeaderRepeated),
    }
}

/// serde_json's "at line 1 column 267" counts in the unfolded value; quote the text
/// around that point too, so the sender finds it in a folded header.
fn json_error_detail(text: &str, e: &serde_json::Error) -> String {
    let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
    let chars: Vec<char> = line.chars().collect();
    let at = e.column().saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(20);
    let end = (at + 20).min(chars.len());
    let excerpt: String = chars[start..end]
        .iter()
        .map(|&c| if c.is_control() { ' ' } else { c })
        .collect();
    if excerpt.trim().is_empty() {
        return e.to_string();
    }
    let dots = |cond: bool| if cond { "..." } else { "" };
    format!(
        "{e} near '{}{excerpt}{}'",
        dots(start > 0),
        dots(end < chars.len())
    )
}

/// Parse and validate one raw header value.
pub fn parse(raw: &[u8], known: Known<'_>) -> Result<SmtpApi, Rejection> {
    let text = decode_value(raw)?;
    // serde_json stops at 128 levels of nesting, so hostile input cannot overflow the stack.
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Rejection::JsonSyntax(json_error_detail(&text, &e)))?;
    let Value::Object(mut obj) = value else {
        return Err(Rejection::NotAnObject);
    };
    let mut api = SmtpApi::default();

    if let Some(v) = take(&mut obj, "campaign_id") {
        let id = as_string(v, "campaign_id")?;
        if id.len() > MAX_CAMPAIGN_ID {
            return Err(Rejection::CampaignIdTooLong);
        }
        api.campaign_id = Some(id);
    }
    if let Some(v) = take(&mut obj, "metadata") {
        match v {
            Value::Object(map) => api.metadata = Some(map),
            _ => return Err(wrong_type("metadata", JsonType::Object)),
        }
    }
    if let Some(v) = take(&mut obj, "tags") {
        let Value::Array(tags) = v else {
            return Err(wrong_type("tags", JsonType::Array));
        };
        api.tags = tags
            .into_iter()
            .map(|t| match t {
                Value::String(s) => Ok(s),
                _ => Err(Rejection::TagNotString),
            })
            .collect::<Result<_, _>>()?;
        if api.tags.len() > MAX_TAGS {
            return Err(Rejection::TooManyTags);
        }
    }
    let mut total = 0;
    for (list, slot) in [
        ("cc", &mut api.cc),
        ("bcc", &mut api.bcc),
        ("archive", &mut api.archive),
    ] {
        if let Some(v) = take(&mut obj, list) {
            *slot = parse_list(list, v)?;
            total += slot.len();
        }
    }
    if let Some(v) = take(&mut obj, "options") {
        let Value::Object(options) = v else {
            return Err(wrong_type("options", JsonType::Object));
        };
        api.options = parse_options(options, known)?;
    }
    if total > MAX_LIST_RECIPIENTS {
        return Err(Rejection::TooManyRecipients);
    }
    for key in obj.keys() {
        tracing::debug!(key = %key, "ignoring unknown X-MSYS-API field");
    }
    Ok(api)
}

/// Remove a field; JSON `null` counts as absent.
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

fn wrong_type(field: &str, expected: JsonType) -> Rejection {
    Rejection::WrongType {
        field: field.to_owned(),
        expected,
    }
}

fn as_string(v: Value, field: &str) -> Result<String, Rejection> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(wrong_type(field, JsonType::String)),
    }
}

fn as_bool(v: Value, field: &str) -> Result<bool, Rejection> {
    match v {
        Value::Bool(b) => Ok(b),
        _ => Err(wrong_type(field, JsonType::Boolean)),
    }
}

fn parse_list(list: &'static str, v: Value) -> Result<Vec<Recipient>, Rejection> {
    let Value::Array(entries) = v else {
        return Err(wrong_type(list, JsonType::Array));
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            parse_recipient(entry).ok_or(Rejection::InvalidRecipient { list, entry: i + 1 })
        })
        .collect()
}

fn parse_recipient(entry: Value) -> Option<Recipient> {
    let (email, name) = match entry {
        Value::String(email) => (email, None),
        Value::Object(mut obj) => {
            let Some(Value::String(email)) = obj.remove("email") else {
                return None;
            };
            let name = match obj.remove("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(name)) => Some(name),
                Some(_) => return None,
            };
            (email, name)
        }
        _ => return None,
    };
    let email = email.trim().to_owned();
    // A name with a line break or NUL would let the sender inject headers.
    if name
        .as_deref()
        .is_some_and(|n| n.contains(['\r', '\n', '\0']))
    {
        return None;
    }
    is_valid_mailbox(&email).then_some(Recipient { email, name })
}

fn parse_options(
    mut options: Map<String, Value>,
    known: Known<'_>,
) -> Result<ApiOptions, Rejection> {
    let mut out = ApiOptions::default();
    for (name, slot) in [
        ("open_tracking", &mut out.open_tracking),
        ("click_tracking", &mut out.click_tracking),
        ("transactional", &mut out.transactional),
        ("sandbox", &mut out.sandbox),
        ("skip_suppression", &mut out.skip_suppression),
        ("inline_css", &mut out.inline_css),
    ] {
        if let Some(v) = take(&mut options, name) {
            *slot = Some(as_bool(v, &format!("options.{name}"))?);
        }
    }
    if let Some(v) = take(&mut options, "ip_pool") {
        let pool = as_string(v, "options.ip_pool")?;
        // `sp_shared` is SparkPost's name for the default route; always valid.
        if pool != "sp_shared" && !known.ip_pools.contains(&pool) {
            return Err(Rejection::NotConfigured {
                option: "ip_pool",
                value: pool,
            });
        }
        out.ip_pool = Some(pool);
    }
    if let Some(v) = take(&mut options, "dkim_key") {
        let key = as_string(v, "options.dkim_key")?;
        if !known.dkim_keys.contains(&key) {
            return Err(Rejection::NotConfigured {
                option: "dkim_key",
                value: key,
            });
        }
        out.dkim_key = Some(key);
    }
    for key in options.keys() {
        tracing::debug!(option = %key, "ignoring unknown X-MSYS-API option");
    }
    Ok(out)
}
