use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::event::{AccountRef, CustomerId, EventSource, EventType, SCHEMA_V1};

#[test]
fn digit_runs_of_five_or_more_keep_their_last_four() {
    for (text, masked) in [
        ("Checking 123456789", "Checking •••••6789"),
        ("12345", "•2345"),
        ("Acct #987654321098", "Acct #••••••••1098"),
        ("1234-5678-9012", "••••-••••-9012"),
        ("4111 1111 1111 1111", "•••• •••• •••• 1111"),
        ("call 555 0100 now", "call ••• 0100 now"),
        ("12 - 34567 x", "12 - •4567 x"),
        ("12 3", "12 3"),
        ("1 2 3 4 5", "• 2 3 4 5"),
        ("opened 2024-01-15", "opened ••••-01-15"),
        ("12345-", "•2345-"),
        ("-12345 ", "-•2345 "),
        ("café 123456 ünï", "café ••3456 ünï"),
        ("a12345b67890c", "a•2345b•7890c"),
    ] {
        assert_eq!(mask_digit_runs(text), masked, "{text:?}");
    }
}

#[test]
fn short_runs_loosely_separated_digits_and_other_digits_are_kept() {
    for text in [
        "",
        "Savings 2024",
        "Card 1",
        "1234",
        "12  3456",
        "12--3456",
        "12.345",
        "12/34/56",
        "١٢٣٤٥٦٧٨",
        "１２３４５６",
        "•••••6789",
    ] {
        assert_eq!(mask_digit_runs(text), text, "{text:?}");
    }
    assert!(matches!(mask_digit_runs("Savings 2024"), Cow::Borrowed(_)), "nothing to mask: nothing copied");
}

#[test]
fn cleaning_masks_after_removing_control_characters() {
    assert_eq!(clean_text("1234\u{0}5678", MAX_TEXT_CHARS), "••••5678", "a NUL does not split a number");
    let long = format!("{}123456789", "x".repeat(MAX_TEXT_CHARS - 6));
    assert_eq!(clean_text(&long, MAX_TEXT_CHARS), format!("{}••3456", "x".repeat(MAX_TEXT_CHARS - 6)));
}

fn event() -> ConnectEvent {
    let at = chrono::DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
    ConnectEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: "1764000000123-123456789".into(),
        event_type: EventType::parse("added"),
        customer_id: CustomerId::parse("1005061234").expect("id"),
        program_id: Default::default(),
        consumer_id: Some("0bf46322167562".into()),
        institution_id: Some("101732".into()),
        institution_login_id: Some("1022599285".into()),
        oauth: None,
        mfa: None,
        accounts: vec![AccountRef {
            account_id: Some("1045121390".into()),
            institution_login_id: Some("1022599285".into()),
            account_type: Some("checking 12345".into()),
            status: Some("active 12345".into()),
            last4: Some("1111".into()),
            name: Some("Checking 987654321098".into()),
            aggregation_status_code: None,
        }],
        deleted_account_ids: vec!["5555555555".into()],
        error_code: None,
        query: Some("bank 987654321098".into()),
        occurred_at: at,
        received_at: at,
        webhook_data: Some(serde_json::json!({"ref": "partner-123456789"})),
        webhook_data_dropped: false,
        source: EventSource::Finicity,
        revoked_by: None,
        reason: Some("customer asked, card 4111-1111-1111-1111".into()),
        requested_by: None,
    }
}

#[test]
fn sanitise_masks_free_text_and_never_an_identifier() {
    let original = event();
    let mut event = original.clone();
    event.sanitise();
    assert_eq!(event.query.as_deref(), Some("bank ••••••••1098"));
    assert_eq!(event.reason.as_deref(), Some("customer asked, card ••••-••••-••••-1111"));
    let account = &event.accounts[0];
    assert_eq!(account.name.as_deref(), Some("Checking ••••••••1098"));
    assert_eq!(account.account_type.as_deref(), Some("checking •2345"));
    assert_eq!(account.status.as_deref(), Some("active •2345"));
    // Identifiers and the partner's own data are kept as they came.
    assert_eq!(account.account_id, original.accounts[0].account_id);
    assert_eq!(account.institution_login_id, original.accounts[0].institution_login_id);
    assert_eq!(account.last4, original.accounts[0].last4);
    assert_eq!(
        (&event.event_id, &event.customer_id, &event.consumer_id, &event.institution_id),
        (&original.event_id, &original.customer_id, &original.consumer_id, &original.institution_id)
    );
    assert_eq!(event.institution_login_id, original.institution_login_id);
    assert_eq!(event.deleted_account_ids, original.deleted_account_ids);
    assert_eq!(event.webhook_data, original.webhook_data);
    let again = event.clone();
    event.sanitise();
    assert_eq!(event, again, "cleaning twice changes nothing more");
}

/// `text` with every single space or `-` between two ASCII digits removed:
/// a digit group of [`mask_digit_runs`] becomes a plain run of digits (an
/// independent statement of what a group is).
fn joined(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let digit = |i: Option<usize>| i.and_then(|i| chars.get(i)).is_some_and(char::is_ascii_digit);
    chars
        .iter()
        .enumerate()
        .filter(|&(i, c)| !(matches!(c, ' ' | '-') && digit(i.checked_sub(1)) && digit(Some(i + 1))))
        .map(|(_, c)| *c)
        .collect()
}

fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0)
}

fn ascii_digits(text: &str) -> Vec<char> {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Text made of digits, the separators that join them, others, letters
/// (some not ASCII) and the mask itself.
fn any_text() -> impl Strategy<Value = String> {
    "[0-9 \\-./a-zé٣•]{0,48}"
}

/// Text whose digit runs are at most four long and never joined.
fn text_without_long_runs() -> impl Strategy<Value = String> {
    vec(("[0-9]{0,4}", "[ \\-]?", "[a-zé•/.]{1,4}", "[ \\-]?"), 0..8)
        .prop_map(|parts| parts.into_iter().map(|(d, s, w, t)| format!("{d}{s}{w}{t}")).collect())
}

proptest! {
    #[test]
    fn no_group_of_five_digits_survives(text in any_text()) {
        let masked = mask_digit_runs(&text);
        prop_assert!(longest_digit_run(&masked) < 5, "{text:?} -> {masked:?}");
        prop_assert!(longest_digit_run(&joined(&masked)) <= KEPT_DIGITS, "{text:?} -> {masked:?}");
    }

    #[test]
    fn only_digits_change_and_only_into_the_mask(text in any_text()) {
        let masked = mask_digit_runs(&text);
        prop_assert_eq!(masked.chars().count(), text.chars().count());
        for (before, after) in text.chars().zip(masked.chars()) {
            prop_assert!(before == after || (before.is_ascii_digit() && after == MASK), "{text:?} -> {masked:?}");
        }
        prop_assert_eq!(mask_digit_runs(&masked), masked.clone(), "masking twice changes nothing more");
    }

    #[test]
    fn the_last_four_digits_are_kept(text in any_text()) {
        let (before, after) = (ascii_digits(&text), ascii_digits(&mask_digit_runs(&text)));
        let kept = before.len().min(KEPT_DIGITS);
        prop_assert_eq!(&after[after.len() - kept..], &before[before.len() - kept..], "{}", text);
    }

    #[test]
    fn text_without_a_long_group_is_unchanged(text in text_without_long_runs()) {
        prop_assert_eq!(mask_digit_runs(&text), text.as_str());
    }

    #[test]
    fn text_is_changed_exactly_when_a_group_is_long(text in any_text()) {
        let changed = mask_digit_runs(&text) != text.as_str();
        prop_assert_eq!(changed, longest_digit_run(&joined(&text)) > KEPT_DIGITS, "{}", text);
    }
}
