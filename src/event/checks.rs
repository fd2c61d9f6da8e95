//! What every stage agrees a normalised event may hold: the receiver refuses
//! (400) what [`ConnectEvent::check`] refuses and the consumer parks it, so an
//! acknowledged event is one the store can keep and the API can show.
//! [`ConnectEvent::sanitise`] cleans what a customer typed instead of refusing
//! it: rejecting would lose a real event. Cleaning includes minimisation:
//! [`mask_digit_runs`] masks what could be an account or card number typed
//! into free text.

use std::borrow::Cow;

use serde_json::Value;

use super::ConnectEvent;

/// Longest `event_id`.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Longest account, institution, institution login or consumer id, and
/// longest event type.
pub const MAX_IDENTIFIER_LEN: usize = 64;
/// Free text (`query`, account `name`, `type`, `status`, a revocation's
/// `reason`) is cut to this many characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Digits of a group that [`mask_digit_runs`] keeps: the last four, what a
/// receipt shows.
pub const KEPT_DIGITS: usize = 4;
/// What [`mask_digit_runs`] writes for each masked digit (U+2022 BULLET).
pub const MASK: char = '\u{2022}';
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

    /// Cleans free text in place: control characters (NUL included)
    /// removed, length capped at [`MAX_TEXT_CHARS`] and digit runs masked
    /// ([`mask_digit_runs`]); identifiers are never masked; `last4` cut to four
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

/// Free text as every stage keeps it: without control characters, at most
/// `max_chars` characters, digit runs masked ([`mask_digit_runs`]; after the
/// control characters are gone, so a NUL cannot split a number in two).
pub fn clean_text(text: &str, max_chars: usize) -> String {
    let visible: String = text.chars().filter(|c| !c.is_control()).take(max_chars).collect();
    match mask_digit_runs(&visible) {
        Cow::Borrowed(_) => visible,
        Cow::Owned(masked) => masked,
    }
}

fn clean_option(text: &mut Option<String>, max_chars: usize) {
    if let Some(value) = text {
        let cleaned = clean_text(value, max_chars);
        if cleaned != *value {
            *value = cleaned;
        }
    }
}

/// Masks what could be an account, card or phone number in free text: every
/// digit of a *digit group* holding five or more digits is replaced by
/// [`MASK`], except the group's last [`KEPT_DIGITS`] (`Checking 123456789`
/// becomes `Checking •••••6789`, `4111 1111 1111 1111` becomes
/// `•••• •••• •••• 1111`).
///
/// A digit group is a run of ASCII digits in which two digits may be
/// separated by one space or one `-` (`1234-5678-9012` and `555 0100` are
/// one group each; `12 - 34` and `12  34` are two). Separators and every
/// other character are kept, so the text keeps its length in characters;
/// groups of up to four digits (`Savings 2024`, `Card 1`) are left as they
/// are. Only ASCII digits count. Applying it twice changes nothing more. A
/// date written `2024-01-15` is one group of eight digits and becomes
/// `••••-01-15`: in free text, a false alarm costs less than a number kept.
///
/// Identifiers (account, customer, institution and event ids) are never
/// passed through it.
pub fn mask_digit_runs(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut masked = String::new();
    // Bytes of `text` already written to `masked`.
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        if !bytes[at].is_ascii_digit() {
            at += 1;
            continue;
        }
        let (start, end, digits) = digit_group(bytes, at);
        if digits > KEPT_DIGITS {
            // `start` and `end` are at ASCII bytes, so at character boundaries.
            masked.push_str(&text[copied..start]);
            let mut to_mask = digits - KEPT_DIGITS;
            for &byte in &bytes[start..end] {
                if to_mask > 0 && byte.is_ascii_digit() {
                    masked.push(MASK);
                    to_mask -= 1;
                } else {
                    masked.push(char::from(byte));
                }
            }
            copied = end;
        }
        at = end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    masked.push_str(&text[copied..]);
    Cow::Owned(masked)
}

/// The digit group starting with the digit at `start`: its end (exclusive)
/// and how many digits it holds.
fn digit_group(bytes: &[u8], start: usize) -> (usize, usize, usize) {
    let mut end = start;
    let mut digits = 0;
    loop {
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
            digits += 1;
        }
        let joined = matches!(bytes.get(end), Some(b' ' | b'-')) && bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
        if !joined {
            return (start, end, digits);
        }
        end += 1;
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

#[cfg(test)]
mod tests;
