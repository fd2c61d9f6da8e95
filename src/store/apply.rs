//! Applying a batch of events in one transaction: record the distinct new
//! events (a known event id is a no-op), fold them into each affected
//! customer's lifecycle, write the customers and their accounts, commit.
//!
//! Customers are folded incrementally when every new event comes after the
//! last one applied in `(occurred_at, event_id)` order; an older event makes
//! the customer be recomputed from their whole recorded history, in the same
//! transaction. Either way the result is `fold` of the distinct events.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::event::{ConnectEvent, CustomerId};
use crate::lifecycle::{self, Advance, Lifecycle};
use crate::store::error::{StoreError, StoreResultExt};

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events recorded for the first time and applied.
    pub applied: u64,
    /// Events whose id was already recorded (or repeated within the batch).
    pub duplicates: u64,
    /// Customers recomputed from their whole history.
    pub recomputed: u64,
}

/// Records and applies `events` in one transaction.
///
/// Fails [transiently](StoreError::is_transient) when Postgres does, and
/// permanently when a record cannot be stored (the caller splits the batch to
/// find it). A stored lifecycle that does not decode is not an error: the
/// customer is recomputed from their recorded events instead.
pub async fn apply_batch<'a>(
    pool: &PgPool,
    events: impl IntoIterator<Item = &'a ConnectEvent>,
) -> Result<BatchOutcome, StoreError> {
    let mut distinct: Vec<&ConnectEvent> = events.into_iter().collect();
    let received = distinct.len();
    // One order for every writer, so concurrent batches take the
    // unique-index locks of shared event ids in the same order.
    distinct.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    distinct.dedup_by(|a, b| a.event_id == b.event_id);
    let mut batch_customers: Vec<&CustomerId> = distinct.iter().map(|e| &e.customer_id).collect();
    batch_customers.sort();
    batch_customers.dedup();

    let mut tx = pool.begin().await.store("beginning the batch transaction")?;
    // Locks first, in a statement of their own: every later statement of
    // this transaction then sees what an earlier writer of these customers
    // committed (see `lock_customers`).
    lock_customers(&mut tx, &batch_customers).await?;
    let inserted = insert_events(&mut tx, &distinct).await?;
    let new_events: Vec<&ConnectEvent> =
        distinct.into_iter().filter(|e| inserted.contains(e.event_id.as_str())).collect();
    let mut outcome = BatchOutcome {
        applied: new_events.len() as u64,
        duplicates: (received - new_events.len()) as u64,
        recomputed: 0,
    };
    if new_events.is_empty() {
        tx.commit().await.store("committing the batch")?;
        return Ok(outcome);
    }

    let mut by_customer: BTreeMap<&CustomerId, Vec<&ConnectEvent>> = BTreeMap::new();
    for event in new_events {
        by_customer.entry(&event.customer_id).or_default().push(event);
    }
    let customer_ids: Vec<&CustomerId> = by_customer.keys().copied().collect();
    let Loaded { mut states, undecodable } = load_lifecycles(&mut tx, &customer_ids).await?;

    let mut after: Vec<(CustomerId, Lifecycle)> = Vec::with_capacity(customer_ids.len());
    let mut recompute: Vec<&CustomerId> = undecodable.iter().collect();
    for (customer_id, events) in by_customer {
        if undecodable.contains(customer_id) {
            continue;
        }
        let mut state = states.get(customer_id).cloned().unwrap_or_default();
        match lifecycle::advance(&mut state, events) {
            Advance::Applied => after.push((customer_id.clone(), state)),
            Advance::Recompute => recompute.push(customer_id),
        }
    }
    if !recompute.is_empty() {
        outcome.recomputed = recompute.len() as u64;
        after.extend(recompute_from_history(&mut tx, &recompute).await?);
    }

    write_lifecycles(&mut tx, &after).await?;
    let changed_accounts: Vec<&(CustomerId, Lifecycle)> = after
        .iter()
        .filter(|(id, state)| states.remove(id).is_none_or(|old| old.institution_logins != state.institution_logins))
        .collect();
    write_accounts(&mut tx, &changed_accounts).await?;
    tx.commit().await.store("committing the batch")?;
    Ok(outcome)
}

/// Inserts the events, returning the ids that were new.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&ConnectEvent],
) -> Result<HashSet<String>, StoreError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut customers = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut occurred = Vec::with_capacity(events.len());
    let mut received = Vec::with_capacity(events.len());
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.event_id.clone());
        customers.push(event.customer_id.to_string());
        types.push(event.event_type.clone());
        occurred.push(event.occurred_at);
        received.push(event.received_at);
        records.push(serde_json::to_value(event).map_err(|err| StoreError::undecodable("encoding an event", &err))?);
    }
    let inserted = sqlx::query_scalar!(
        r#"
        INSERT INTO connect_events (event_id, customer_id, event_type, occurred_at, received_at, record)
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::jsonb[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
        "#,
        &ids,
        &customers,
        &types,
        &occurred,
        &received,
        &records,
    )
    .fetch_all(&mut **tx)
    .await
    .store("recording events")?;
    Ok(inserted.into_iter().collect())
}

/// Takes the transaction-scoped advisory locks of these customers, in the
/// given (sorted) order so two writers cannot deadlock on them.
///
/// The locks serialise writers of one customer: two consumers during a
/// rebalance, `reproject` beside the consumer. They are taken in a statement
/// of their own on purpose. Under READ COMMITTED a statement reads the
/// snapshot taken when it *started*, so a statement that waited for a lock
/// inside itself would still read the row as it was before the lock holder
/// committed, and its upsert would overwrite that writer's change. The next
/// statement starts after the lock is granted and sees it.
pub async fn lock_customers(tx: &mut Transaction<'_, Postgres>, sorted_ids: &[&CustomerId]) -> Result<(), StoreError> {
    let ids: Vec<&str> = sorted_ids.iter().map(|id| id.as_str()).collect();
    sqlx::query!(
        r#"
        SELECT count(pg_advisory_xact_lock(hashtextextended(id, 0))) AS "locked!"
        FROM (SELECT id FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, n) ORDER BY n) AS ordered
        "#,
        &ids as &[&str]
    )
    .fetch_one(&mut **tx)
    .await
    .store("locking customers")?;
    Ok(())
}

/// Stored lifecycles, as far as they decode.
pub struct Loaded {
    /// Customers with a stored lifecycle this binary can read.
    pub states: HashMap<CustomerId, Lifecycle>,
    /// Customers whose stored lifecycle does not decode (written by another
    /// version, or damaged): recompute them from their events.
    pub undecodable: HashSet<CustomerId>,
}

/// Loads the stored lifecycles of these customers (absent ones have none
/// yet). Call after [`lock_customers`], in a later statement.
pub async fn load_lifecycles(tx: &mut Transaction<'_, Postgres>, ids: &[&CustomerId]) -> Result<Loaded, StoreError> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        r#"SELECT customer_id, lifecycle FROM customers WHERE customer_id = ANY($1::text[])"#,
        &ids as &[&str]
    )
    .fetch_all(&mut **tx)
    .await
    .store("loading customers")?;
    let mut loaded = Loaded { states: HashMap::with_capacity(rows.len()), undecodable: HashSet::new() };
    for row in rows {
        let Ok(customer_id) = CustomerId::try_from(row.customer_id) else {
            continue;
        };
        match serde_json::from_value::<Lifecycle>(row.lifecycle) {
            Ok(state) => {
                loaded.states.insert(customer_id, state);
            }
            Err(err) => {
                tracing::warn!(customer_id = %customer_id, error = %err, "stored lifecycle does not decode; recomputing it from the recorded events");
                loaded.undecodable.insert(customer_id);
            }
        }
    }
    Ok(loaded)
}

/// Folds each customer's whole recorded history.
pub async fn recompute_from_history(
    tx: &mut Transaction<'_, Postgres>,
    customer_ids: &[&CustomerId],
) -> Result<Vec<(CustomerId, Lifecycle)>, StoreError> {
    let ids: Vec<&str> = customer_ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        "SELECT record FROM connect_events WHERE customer_id = ANY($1::text[]) ORDER BY customer_id, occurred_at, event_id",
        &ids as &[&str]
    )
    .fetch_all(&mut **tx)
    .await
    .store("loading event histories")?;
    let mut histories: BTreeMap<CustomerId, Vec<ConnectEvent>> = BTreeMap::new();
    for row in rows {
        let event: ConnectEvent = serde_json::from_value(row.record)
            .map_err(|err| StoreError::undecodable("decoding a recorded event", &err))?;
        histories.entry(event.customer_id.clone()).or_default().push(event);
    }
    Ok(histories.into_iter().map(|(id, events)| (id, lifecycle::fold(&events))).collect())
}

/// Upserts the customers' rows.
pub async fn write_lifecycles(
    tx: &mut Transaction<'_, Postgres>,
    states: &[(CustomerId, Lifecycle)],
) -> Result<(), StoreError> {
    let n = states.len();
    let mut ids = Vec::with_capacity(n);
    let mut consent = Vec::with_capacity(n);
    let mut consent_since: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut auth = Vec::with_capacity(n);
    let mut auth_since: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut reason: Vec<Option<String>> = Vec::with_capacity(n);
    let mut error_code: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut last_id = Vec::with_capacity(n);
    let mut last_type = Vec::with_capacity(n);
    let mut last_at = Vec::with_capacity(n);
    let mut count = Vec::with_capacity(n);
    let mut documents = Vec::with_capacity(n);
    for (customer_id, state) in states {
        let Some(last) = &state.last_event else {
            // A customer exists once an event was applied; nothing to write.
            continue;
        };
        ids.push(customer_id.to_string());
        consent.push(name_of(&state.consent.state)?);
        consent_since.push(state.consent.since);
        auth.push(name_of(&state.authentication.state)?);
        auth_since.push(state.authentication.since);
        reason.push(state.authentication.reason.as_ref().map(name_of).transpose()?);
        error_code.push(state.authentication.error_code);
        last_id.push(last.event_id.clone());
        last_type.push(last.event_type.clone());
        last_at.push(last.occurred_at);
        count.push(i64::try_from(state.event_count).unwrap_or(i64::MAX));
        documents
            .push(serde_json::to_value(state).map_err(|err| StoreError::undecodable("encoding a lifecycle", &err))?);
    }
    sqlx::query!(
        r#"
        INSERT INTO customers (customer_id, consent_state, consent_since, auth_state, auth_since, auth_reason,
                               auth_error_code, last_event_id, last_event_type, last_occurred_at, event_count,
                               lifecycle, updated_at)
        SELECT *, now() FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[],
                                    $6::text[], $7::int8[], $8::text[], $9::text[], $10::timestamptz[],
                                    $11::int8[], $12::jsonb[])
        ON CONFLICT (customer_id) DO UPDATE SET
            consent_state = EXCLUDED.consent_state, consent_since = EXCLUDED.consent_since,
            auth_state = EXCLUDED.auth_state, auth_since = EXCLUDED.auth_since,
            auth_reason = EXCLUDED.auth_reason, auth_error_code = EXCLUDED.auth_error_code,
            last_event_id = EXCLUDED.last_event_id, last_event_type = EXCLUDED.last_event_type,
            last_occurred_at = EXCLUDED.last_occurred_at, event_count = EXCLUDED.event_count,
            lifecycle = EXCLUDED.lifecycle, updated_at = EXCLUDED.updated_at
        "#,
        &ids,
        &consent,
        &consent_since as &[Option<DateTime<Utc>>],
        &auth,
        &auth_since as &[Option<DateTime<Utc>>],
        &reason as &[Option<String>],
        &error_code as &[Option<i64>],
        &last_id,
        &last_type,
        &last_at,
        &count,
        &documents,
    )
    .execute(&mut **tx)
    .await
    .store("writing customers")?;
    Ok(())
}

/// Rewrites the institution logins and accounts of these customers.
pub async fn write_accounts(
    tx: &mut Transaction<'_, Postgres>,
    states: &[&(CustomerId, Lifecycle)],
) -> Result<(), StoreError> {
    if states.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = states.iter().map(|(id, _)| id.to_string()).collect();
    let mut login_customer = Vec::new();
    let mut login_id: Vec<Option<String>> = Vec::new();
    let mut login_institution: Vec<Option<String>> = Vec::new();
    let mut login_oauth: Vec<Option<bool>> = Vec::new();
    let mut account_customer = Vec::new();
    let mut account_id = Vec::new();
    let mut account_login: Vec<Option<String>> = Vec::new();
    let mut account_institution: Vec<Option<String>> = Vec::new();
    let mut account_type: Vec<Option<String>> = Vec::new();
    let mut account_status = Vec::new();
    let mut account_last4: Vec<Option<String>> = Vec::new();
    let mut account_name: Vec<Option<String>> = Vec::new();
    for (customer_id, state) in states.iter().map(|s| (&s.0, &s.1)) {
        for login in &state.institution_logins {
            login_customer.push(customer_id.to_string());
            login_id.push(login.institution_login_id.clone());
            login_institution.push(login.institution_id.clone());
            login_oauth.push(login.oauth);
            for account in &login.accounts {
                account_customer.push(customer_id.to_string());
                account_id.push(account.account_id.clone());
                account_login.push(login.institution_login_id.clone());
                account_institution.push(login.institution_id.clone());
                account_type.push(account.account_type.clone());
                account_status.push(name_of(&account.status)?);
                account_last4.push(account.last4.clone());
                account_name.push(account.name.clone());
            }
        }
    }
    // Accounts are never dropped from a lifecycle (a deleted one stays with
    // status `deleted`), so they are upserted; logins can disappear (an
    // account moved to another login), so they are replaced. The delete of
    // the logins rides along in the same statement.
    sqlx::query!(
        r#"
        WITH cleared AS (DELETE FROM institution_logins WHERE customer_id = ANY($9))
        INSERT INTO accounts (customer_id, account_id, institution_login_id, institution_id, account_type, status,
                              last4, name)
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::text[])
        ON CONFLICT (customer_id, account_id) DO UPDATE SET
            institution_login_id = EXCLUDED.institution_login_id, institution_id = EXCLUDED.institution_id,
            account_type = EXCLUDED.account_type, status = EXCLUDED.status, last4 = EXCLUDED.last4,
            name = EXCLUDED.name
        "#,
        &account_customer,
        &account_id,
        &account_login as &[Option<String>],
        &account_institution as &[Option<String>],
        &account_type as &[Option<String>],
        &account_status,
        &account_last4 as &[Option<String>],
        &account_name as &[Option<String>],
        &ids,
    )
    .execute(&mut **tx)
    .await
    .store("writing accounts")?;
    sqlx::query!(
        r#"
        INSERT INTO institution_logins (customer_id, institution_login_id, institution_id, oauth)
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[])
        "#,
        &login_customer,
        &login_id as &[Option<String>],
        &login_institution as &[Option<String>],
        &login_oauth as &[Option<bool>],
    )
    .execute(&mut **tx)
    .await
    .store("writing institution logins")?;
    Ok(())
}

/// The contract name of a state enum (its serde name, e.g. `mfa_challenge`).
fn name_of<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    match serde_json::to_value(value).map_err(|err| StoreError::undecodable("naming a state", &err))? {
        serde_json::Value::String(name) => Ok(name),
        other => Err(StoreError::Permanent { context: "naming a state", reason: format!("state {other} has no name") }),
    }
}
