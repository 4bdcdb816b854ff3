//! What every endpoint of the REST API shares: SparkPost's error body, the query
//! string (comma lists, repeated keys and `key[0]` arrays as the clients send them),
//! its time stamps, and JSON bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An answer in SparkPost's error shape:
/// `{"errors":[{"message":..., "description":..., "code":...}]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub description: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            description: None,
            code: None,
        }
    }

    pub fn with(mut self, code: &'static str, description: impl Into<String>) -> ApiError {
        self.code = Some(code);
        self.description = Some(description.into());
        self
    }

    /// 400 `invalid params` (SparkPost's code 1200) with what is wrong.
    pub fn invalid(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid params").with("1200", description)
    }

    /// 422 with SparkPost's "required field is missing" (code 1400).
    pub fn missing(field: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "required field is missing",
        )
        .with("1400", format!("{field} is required"))
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The store failed: 503, so clients try again (never a 500 with details).
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::error!("API: {what}: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable, try again later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("message".into(), json!(self.message));
        if let Some(d) = self.description {
            error.insert("description".into(), json!(d));
        }
        if let Some(c) = self.code {
            error.insert("code".into(), json!(c));
        }
        let mut response = (
            self.status,
            axum::Json(json!({ "errors": [Value::Object(error)] })),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// `200` with `value` as JSON.
pub fn ok(value: Value) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// Most parameters a query may carry; more is refused, never worked through.
const MAX_PARAMS: usize = 1000;
/// Most values in one comma list.
pub const MAX_LIST: usize = 1000;

/// A request's query parameters: each name's values in order, comma lists split.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let mut out = Vec::new();
        for (n, (name, value)) in form_urlencoded::parse(query.unwrap_or("").as_bytes()).enumerate()
        {
            if n >= MAX_PARAMS {
                return Err(ApiError::invalid(format!(
                    "too many query parameters (at most {MAX_PARAMS})"
                )));
            }
            // node-sparkpost sends arrays as `types[0]=a&types[1]=b`.
            let name = match name.split_once('[') {
                Some((base, _)) => base.to_owned(),
                None => name.into_owned(),
            };
            out.push((name, value.into_owned()));
        }
        Ok(Params(out))
    }

    /// Every (name, value) given, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The last value given for `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name`, comma lists split (`delimiter` when the query names one).
    pub fn list(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let delimiter = self.get("delimiter").unwrap_or(",");
        let values: Vec<String> = self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(delimiter))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        if values.len() > MAX_LIST {
            return Err(ApiError::invalid(format!(
                "{name}: at most {MAX_LIST} values"
            )));
        }
        Ok(values)
    }

    /// A whole number within `range`, or `default` when absent.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<u64, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        text.parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{name} must be a number from {} to {}",
                    range.start(),
                    range.end()
                ))
            })
    }

    /// A time stamp (SparkPost's `YYYY-MM-DDTHH:MM[:ss][Z|±hh:mm]`) as Unix seconds.
    pub fn time(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|t| {
                parse_time(t).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{name}: `{t}` is not a time; use YYYY-MM-DDTHH:MM (UTC) or YYYY-MM-DDTHH:MM:ssZ"
                    ))
                })
            })
            .transpose()
    }
}

/// `YYYY-MM-DDTHH:MM`, with optional seconds, fraction and zone (UTC when none), as
/// Unix seconds; `None` when not such a time or before 1970.
pub fn parse_time(text: &str) -> Option<u64> {
    let text = text.trim();
    let (date, clock) = text.split_once(['T', ' '])?;
    let zone_at = clock.find(['Z', 'z', '+', '-']).unwrap_or(clock.len());
    let (clock, zone) = clock.split_at(zone_at);
    let clock = if clock.matches(':').count() == 1 {
        format!("{clock}:00")
    } else {
        clock.to_owned()
    };
    let zone = match zone {
        "" => "Z".to_owned(),
        // `+0000` as well as `+00:00`.
        z if z.len() == 5 && z.is_ascii() && !z.contains(':') => format!("{}:{}", &z[..3], &z[3..]),
        z => z.to_owned(),
    };
    let stamp = format!("{date}T{clock}{zone}");
    let parsed = mail_parser::DateTime::parse_rfc3339(&stamp).filter(|d| d.is_valid())?;
    u64::try_from(parsed.to_timestamp()).ok()
}

/// `2017-02-01T01:01:01+00:00` (SparkPost's suppression list times).
pub fn format_time(secs: u64) -> String {
    format_time_in(secs, 0)
}

/// `2020-10-04T00:00:00-04:00`: `secs` shown in a zone `offset` seconds east of UTC.
pub fn format_time_in(secs: u64, offset: i64) -> String {
    let local = i64::try_from(secs).unwrap_or(0) + offset;
    let (days, rem) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, mo, d) = crate::events::civil_from_days(days);
    let sign = if offset < 0 { '-' } else { '+' };
    let off = offset.unsigned_abs();
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        off / 3600,
        off % 3600 / 60
    )
}

/// A request's JSON body: an object, or 400 saying what is wrong with it.
pub fn json_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        )),
        Err(e) => Err(
            ApiError::new(StatusCode::BAD_REQUEST, "Problems parsing request as json")
                .with("1300", e.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkpost_times() {
        assert_eq!(parse_time("1970-01-01T00:01"), Some(60));
        assert_eq!(parse_time("2017-02-01T01:01:01Z"), Some(1_485_910_861));
        assert_eq!(parse_time("2017-02-01T01:01:01+00:00"), Some(1_485_910_861));
        assert_eq!(parse_time("2017-02-01T02:01:01+0100"), Some(1_485_910_861));
        assert_eq!(parse_time("2017-02-01 01:01:01"), Some(1_485_910_861));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2017-13-01T00:00"), None);
        // Found by fuzzing: a zone of five bytes that are not five characters.
        assert_eq!(parse_time(")05D \0\0+\0\u{fffd}"), None);
        assert_eq!(format_time(1_485_910_861), "2017-02-01T01:01:01+00:00");
        assert_eq!(
            format_time_in(1_601_784_000, -4 * 3600),
            "2020-10-04T00:00:00-04:00"
        );
    }

    #[test]
    fn params_as_the_clients_send_them() {
        let p = Params::parse(Some("types%5B0%5D=a&types%5B1%5D=b&x=1,2&x=3&e=")).unwrap();
        assert_eq!(p.list("types").unwrap(), ["a", "b"]);
        assert_eq!(p.list("x").unwrap(), ["1", "2", "3"]);
        assert_eq!(p.get("e"), None);
        assert_eq!(p.number("x", 1..=5, 9).unwrap(), 3);
        assert!(p.number("x", 4..=5, 9).is_err());
        let many = vec!["a=1"; 5000].join("&");
        assert_eq!(
            Params::parse(Some(&many)).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
