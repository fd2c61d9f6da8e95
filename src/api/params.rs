//! What the API reads from a request besides its body: the query string
//! (through [`Params`], so a malformed one is the JSON 400 like every other
//! error), page sizes, cursors, times, state names and ids.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use chrono::{DateTime, Datelike, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::event::CustomerId;

/// The customer a `/v1/customers/{customer_id}/...` route is about (checked
/// by [`valid_customer_id`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CustomerPath {
    /// Finicity customer id, 1 to 22 digits
    #[param(pattern = "^[0-9]{1,22}$", min_length = 1, max_length = 22)]
    pub customer_id: String,
}

/// Which program's customers a listing or statistic counts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProgramFilter {
    /// Only this program's customers: one the token holds (403 `forbidden`
    /// otherwise). Default: every program the token holds.
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,31}$")]
    pub program_id: Option<String>,
}

/// Paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// row's key).
    #[param(pattern = r"^313a(3[0-9]){1,16}3a([2-6][0-9a-f]|7[0-9a-e]){1,128}$")]
    pub cursor: Option<String>,
}

/// Largest page.
pub const MAX_LIMIT: i64 = 500;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;

/// The query string's parameters as `T`; a query string that does not
/// deserialise is a 400 in the JSON error shape (not axum's plain-text
/// rejection).
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Self(params))
            .map_err(|_| ApiError::BadRequest("invalid query string".into()))
    }
}

/// A cursor is the last row's sort key, `(timestamp, id)`, made opaque.
/// Microsecond precision: Postgres keeps microseconds, and the cursor must
/// compare exactly with the stored key.
pub(super) fn encode_cursor((at, id): &(DateTime<Utc>, String)) -> String {
    hex::encode(format!("1:{}:{id}", at.timestamp_micros()))
}

/// The key of a cursor made by [`encode_cursor`], or a 400.
pub(super) fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let malformed = || ApiError::BadRequest("malformed cursor".into());
    let bytes = hex::decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let mut parts = text.splitn(3, ':');
    let (Some("1"), Some(micros), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        // Every key the server writes is a timestamp of years 1 to 9999;
        // anything else is not one of its cursors (and Postgres would refuse
        // years before 4713 BC).
        .filter(|at| (1..=9999).contains(&at.year()))
        .ok_or_else(malformed)?;
    // The id part is an event id or a customer id: printable ASCII.
    if id.is_empty()
        || id.len() > crate::event::MAX_EVENT_ID_LEN
        || !id.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(malformed());
    }
    Ok((at, id.to_owned()))
}

/// A changes cursor: the last version on the page, made opaque.
pub(super) fn encode_version_cursor(version: i64) -> String {
    hex::encode(format!("v:{version}"))
}

/// The version of a cursor made by [`encode_version_cursor`], or a 400.
pub(super) fn decode_version_cursor(cursor: &str) -> Result<i64, ApiError> {
    let malformed = || ApiError::BadRequest("cursor is malformed".into());
    let bytes = hex::decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    text.strip_prefix("v:").and_then(|v| v.parse::<i64>().ok()).filter(|v| *v >= 0).ok_or_else(malformed)
}

/// `customer_id` must be a [`CustomerId`]: exactly the ids the receiver
/// accepts.
pub(super) fn valid_customer_id(customer_id: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(customer_id).map_err(|_| ApiError::BadRequest("customer_id must be 1 to 22 digits".into()))
}

/// An institution id as the event schema allows it: 1 to 64 printable
/// ASCII characters.
pub(super) fn valid_institution_id(id: String) -> Result<String, ApiError> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Ok(id)
    } else {
        Err(ApiError::BadRequest("institution_id must be 1 to 64 printable ASCII characters".into()))
    }
}

/// The page size asked for, bounded.
pub(super) fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
    }
}

/// An RFC 3339 time from the query string.
pub(super) fn parse_time(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = value else { return Ok(None) };
    DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| ApiError::BadRequest(format!("{name} must be an RFC 3339 time")))
}

/// A state name from the query string, as the state it names (its serde
/// name, the one the API shows).
pub(super) fn parse_state<T: DeserializeOwned>(name: &str, value: Option<&str>) -> Result<Option<T>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    serde_json::from_value::<T>(serde_json::Value::String(value.to_owned()))
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("{name} is not a known state: {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{AuthState, ConsentState};

    #[test]
    fn customer_ids_are_digits() {
        assert!(valid_customer_id("1005061234").is_ok());
        assert!(valid_customer_id("1234567890123456789012").is_ok());
        assert!(valid_customer_id("12345678901234567890123").is_err());
        assert!(valid_customer_id("").is_err());
        assert!(valid_customer_id("12a").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = (DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("time"), "10:05".to_owned());
        assert_eq!(decode_cursor(&encode_cursor(&key)).ok(), Some(key));
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor(&hex::encode("2:1:x")).is_err());
        assert!(decode_cursor(&hex::encode("1:abc:x")).is_err());
        assert!(decode_cursor("").is_err());
        // Well-formed but never produced by the server: 400, never a 500.
        assert!(decode_cursor(&hex::encode(format!("1:{}:x", i64::MIN / 2))).is_err(), "year out of range");
        assert!(decode_cursor(&hex::encode("1:-300000000000000000:x")).is_err(), "before year 1");
        assert!(decode_cursor(&hex::encode("1:0:a\u{0}b")).is_err(), "NUL in the id");
        assert!(decode_cursor(&hex::encode("1:0:")).is_err(), "empty id");
        assert!(decode_cursor(&hex::encode(format!("1:0:{}", "x".repeat(200)))).is_err(), "long id");
    }

    /// Every cursor the changes listing documents (its pattern) decodes: the
    /// longest run of digits the pattern allows still fits a version.
    #[test]
    fn version_cursors_round_trip_and_every_documented_one_decodes() {
        assert_eq!(decode_version_cursor(&encode_version_cursor(42)).ok(), Some(42));
        for digits in ["0", "7", "000000000000000000", "999999999999999999"] {
            let cursor = hex::encode(format!("v:{digits}"));
            assert!(decode_version_cursor(&cursor).is_ok(), "{cursor}");
            let pattern = "^763a(3[0-9]){1,18}$";
            let matches = cursor.starts_with("763a")
                && cursor[4..].len() % 2 == 0
                && (1..=18).contains(&(cursor[4..].len() / 2))
                && cursor.as_bytes()[4..].chunks(2).all(|c| c[0] == b'3' && c[1].is_ascii_digit());
            assert!(matches, "{cursor} matches {pattern}");
        }
        assert!(decode_version_cursor(&hex::encode("v:-1")).is_err());
        assert!(decode_version_cursor(&hex::encode("1:0: ")).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None).ok(), Some(50));
        assert_eq!(parse_limit(Some("500")).ok(), Some(500));
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("501")).is_err());
        assert!(parse_limit(Some("ten")).is_err());
    }

    #[test]
    fn state_names_are_checked() {
        assert_eq!(parse_state::<ConsentState>("consent", Some("granted")).ok(), Some(Some(ConsentState::Granted)));
        assert!(parse_state::<ConsentState>("consent", Some("maybe")).is_err());
        assert_eq!(
            parse_state::<AuthState>("authentication", Some("mfa_challenge")).ok(),
            Some(Some(AuthState::MfaChallenge))
        );
        assert!(parse_state::<AuthState>("authentication", Some("granted")).is_err());
    }
}
