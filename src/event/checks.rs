//! What every stage agrees a normalised event may hold: the receiver refuses
//! (400) what [`ConnectEvent::check`] refuses and the consumer parks it, so an
//! acknowledged event is one the store can keep and the API can show.
//! [`ConnectEvent::sanitise`] cleans what a customer typed instead of refusing
//! it: rejecting would lose a real event.

use serde_json::Value;

use super::ConnectEvent;

/// Longest `event_id`.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Longest account, institution, institution login or consumer id, and
/// longest event type.
pub const MAX_IDENTIFIER_LEN: usize = 64;
/// Free text (`query`, account `name`, `type`, `status`) is cut to this many
/// characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// `webhook_data` larger than this, serialised, is dropped from the record
/// (and `webhook_data_dropped` set).
pub const MAX_WEBHOOK_DATA_BYTES: usize = 16 * 1024;

/// A field of a normalised event that no stage can keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// The field's name in the normalised record (`accounts[].account_id`).
    pub field: &'static str,
    /// What is wrong with it, never its value.
    pub problem: String,
}

impl ConnectEvent {
    /// Checks the identifiers: `event_id` 1 to 128 printable ASCII
    /// characters; `event_type` and every other id at most 64 (ids may be
    /// empty, the event type may not). `customer_id` is checked by its type.
    pub fn check(&self) -> Result<(), InvalidField> {
        identifier("event_id", &self.event_id, 1, MAX_EVENT_ID_LEN)?;
        identifier("event_type", self.event_type.as_str(), 1, MAX_IDENTIFIER_LEN)?;
        optional_identifier("consumer_id", self.consumer_id.as_deref())?;
        optional_identifier("institution_id", self.institution_id.as_deref())?;
        optional_identifier("institution_login_id", self.institution_login_id.as_deref())?;
        for account in &self.accounts {
            optional_identifier("accounts[].account_id", account.account_id.as_deref())?;
            optional_identifier("accounts[].institution_login_id", account.institution_login_id.as_deref())?;
        }
        for id in &self.deleted_account_ids {
            identifier("deleted_account_ids[]", id, 0, MAX_IDENTIFIER_LEN)?;
        }
        Ok(())
    }

    /// Cleans free text in place: control characters (NUL included) removed
    /// and length capped at [`MAX_TEXT_CHARS`]; `last4` cut to four
    /// characters; NUL removed from `webhook_data`'s keys and strings, and
    /// `webhook_data` dropped (with `webhook_data_dropped`) when it is larger
    /// than [`MAX_WEBHOOK_DATA_BYTES`] serialised. Applying it twice changes
    /// nothing more.
    pub fn sanitise(&mut self) {
        clean_option(&mut self.query, MAX_TEXT_CHARS);
        clean_option(&mut self.reason, MAX_TEXT_CHARS);
        for account in &mut self.accounts {
            clean_option(&mut account.name, MAX_TEXT_CHARS);
            clean_option(&mut account.account_type, MAX_TEXT_CHARS);
            clean_option(&mut account.status, MAX_TEXT_CHARS);
            if let Some(last4) = &mut account.last4 {
                *last4 = last_chars(&clean_text(last4, usize::MAX), 4);
            }
        }
        if let Some(data) = &mut self.webhook_data {
            strip_nul(data);
            if serialised_len(data) > MAX_WEBHOOK_DATA_BYTES {
                self.webhook_data = None;
                self.webhook_data_dropped = true;
            }
        }
    }
}

fn identifier(field: &'static str, text: &str, min: usize, max: usize) -> Result<(), InvalidField> {
    if text.len() < min || text.len() > max {
        let problem = if min == 0 {
            format!("must be at most {max} characters")
        } else {
            format!("must be {min} to {max} characters")
        };
        return Err(InvalidField { field, problem });
    }
    if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(InvalidField { field, problem: "must be printable ASCII".into() });
    }
    Ok(())
}

fn optional_identifier(field: &'static str, text: Option<&str>) -> Result<(), InvalidField> {
    text.map_or(Ok(()), |text| identifier(field, text, 0, MAX_IDENTIFIER_LEN))
}

/// `text` without control characters, at most `max_chars` characters.
pub fn clean_text(text: &str, max_chars: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max_chars).collect()
}

fn clean_option(text: &mut Option<String>, max_chars: usize) {
    if let Some(value) = text
        && (value.chars().any(char::is_control) || value.chars().nth(max_chars).is_some())
    {
        *value = clean_text(value, max_chars);
    }
}

fn last_chars(text: &str, n: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(n)).collect()
}

/// Removes NUL (which Postgres cannot store in `jsonb`) from every key and
/// string; the partner's other characters are kept as they were.
fn strip_nul(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('\0') => text.retain(|c| c != '\0'),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                // Two keys that differ only by NUL collapse into one: the later wins, as in JSON.
                map.extend(entries.into_iter().map(|(k, v)| (k.replace('\0', ""), v)));
            }
            map.values_mut().for_each(strip_nul);
        }
        _ => {}
    }
}

fn serialised_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
