//! The lifecycle's unit tests: the transition table row by row
//! (`table`), the serialised forms (`serialisation`), each design
//! decision of `docs/lifecycle.md` (`decisions`) and the history
//! retention's snapshot rule (`history`). Shared event builders here.

mod decisions;
mod history;
mod serialisation;
mod table;

use super::*;
use crate::event::{AccountRef, EventType, SCHEMA_V1};
use chrono::{DateTime, Duration, TimeZone, Utc};

pub(crate) const INSTITUTION: &str = "101732";

/// 2026-11-20T10:15:00Z plus `second` seconds.
fn at(second: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 10, 15, 0).single().expect("valid date") + Duration::seconds(second)
}

/// An event of `event_type` at `second`, with nothing in its payload.
pub(crate) fn event(event_type: &str, second: i64) -> ConnectEvent {
    let occurred_at = at(second);
    ConnectEvent {
        schema: SCHEMA_V1.to_owned(),
        event_id: format!("{}-{event_type}", occurred_at.timestamp_millis()),
        event_type: EventType::parse(event_type),
        customer_id: "1005061234".parse().expect("a customer id"),
        program_id: crate::program::ProgramId::default(),
        consumer_id: None,
        institution_id: None,
        institution_login_id: None,
        oauth: None,
        mfa: None,
        accounts: vec![],
        deleted_account_ids: vec![],
        error_code: None,
        query: None,
        occurred_at,
        received_at: occurred_at + Duration::milliseconds(40),
        webhook_data: None,
        webhook_data_dropped: false,
        source: crate::event::EventSource::Finicity,
        revoked_by: None,
        reason: None,
        requested_by: None,
    }
}

fn account(account_id: &str, login_id: Option<&str>) -> AccountRef {
    AccountRef {
        account_id: Some(account_id.to_owned()),
        institution_login_id: login_id.map(str::to_owned),
        account_type: Some("checking".to_owned()),
        status: Some("active".to_owned()),
        last4: Some("1111".to_owned()),
        name: Some(format!("Account {account_id}")),
        aggregation_status_code: Some(0),
    }
}

/// `added` of `account_ids` under `login_id`, as `normalise` builds it.
fn added(second: i64, login_id: &str, account_ids: &[&str]) -> ConnectEvent {
    ConnectEvent {
        institution_id: Some(INSTITUTION.to_owned()),
        institution_login_id: Some(login_id.to_owned()),
        oauth: Some(false),
        accounts: account_ids.iter().map(|id| account(id, Some(login_id))).collect(),
        ..event("added", second)
    }
}

fn deleted(second: i64, account_ids: &[&str]) -> ConnectEvent {
    ConnectEvent {
        deleted_account_ids: account_ids.iter().map(|id| (*id).to_owned()).collect(),
        ..event("accountsDeleted", second)
    }
}

fn mfa_updated(second: i64, mfa: Option<bool>) -> ConnectEvent {
    ConnectEvent { mfa, ..event("credentialsUpdated", second) }
}

fn unable(second: i64, code: i64) -> ConnectEvent {
    ConnectEvent {
        institution_id: Some(INSTITUTION.to_owned()),
        error_code: Some(code),
        ..event("unableToConnect", second)
    }
}

/// `(account_id, login id, status)` of every account, in state order.
fn accounts_of(state: &Lifecycle) -> Vec<(String, Option<String>, AccountStatus)> {
    state
        .institution_logins
        .iter()
        .flat_map(|login| {
            login.accounts.iter().map(|a| (a.account_id.clone(), login.institution_login_id.clone(), a.status))
        })
        .collect()
}

/// Customer in the middle of a connection, then sharing `a1` and `a2` under `L1`.
fn shared() -> Vec<ConnectEvent> {
    vec![event("started", 0), event("adding", 1), added(2, "L1", &["a1", "a2"])]
}
