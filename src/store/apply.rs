//! Applying a batch of events in one transaction: record the distinct new
//! events (a known event id is a no-op), fold them into each affected
//! customer's lifecycle, write the customers and their accounts, commit.
//!
//! Customers are folded incrementally when every new event comes after the
//! last one applied in `(occurred_at, event_id)` order; an older event makes
//! the customer be recomputed from their whole recorded history, in the same
//! transaction. Either way the result is `fold` of the distinct events.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::event::ConnectEvent;
use crate::lifecycle::{self, Lifecycle};

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
pub async fn apply_batch(pool: &PgPool, events: &[ConnectEvent]) -> anyhow::Result<BatchOutcome> {
    let mut distinct: Vec<&ConnectEvent> = events.iter().collect();
    // One order for every writer, so concurrent batches (two consumers
    // during a rebalance) take the unique-index locks in the same order.
    distinct.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    distinct.dedup_by(|a, b| a.event_id == b.event_id);

    let mut tx = pool.begin().await.context("beginning the batch transaction")?;
    let inserted = insert_events(&mut tx, &distinct).await?;
    let new_events: Vec<&ConnectEvent> =
        distinct.into_iter().filter(|e| inserted.contains(e.event_id.as_str())).collect();
    let mut outcome = BatchOutcome {
        applied: new_events.len() as u64,
        duplicates: (events.len() - new_events.len()) as u64,
        recomputed: 0,
    };
    if new_events.is_empty() {
        tx.commit().await.context("committing the batch")?;
        return Ok(outcome);
    }

    let mut by_customer: BTreeMap<&str, Vec<&ConnectEvent>> = BTreeMap::new();
    for event in new_events {
        by_customer.entry(event.customer_id.as_str()).or_default().push(event);
    }
    let customer_ids: Vec<String> = by_customer.keys().map(|id| (*id).to_owned()).collect();
    let mut before = lock_and_load(&mut tx, &customer_ids).await?;

    let mut after: Vec<(String, Lifecycle)> = Vec::with_capacity(customer_ids.len());
    let mut recompute: Vec<String> = Vec::new();
    for (customer_id, mut events) in by_customer {
        events.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let mut state = before.get(customer_id).cloned().unwrap_or_default();
        if events.iter().all(|e| lifecycle::is_in_order(&state, e)) {
            for event in events {
                lifecycle::apply(&mut state, event);
            }
            after.push((customer_id.to_owned(), state));
        } else {
            recompute.push(customer_id.to_owned());
        }
    }
    if !recompute.is_empty() {
        outcome.recomputed = recompute.len() as u64;
        after.extend(recompute_from_history(&mut tx, &recompute).await?);
    }

    write_lifecycles(&mut tx, &after).await?;
    let changed_accounts: Vec<&(String, Lifecycle)> = after
        .iter()
        .filter(|(id, state)| before.remove(id).is_none_or(|old| old.institution_logins != state.institution_logins))
        .collect();
    write_accounts(&mut tx, &changed_accounts).await?;
    tx.commit().await.context("committing the batch")?;
    Ok(outcome)
}

/// Inserts the events, returning the ids that were new.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&ConnectEvent],
) -> anyhow::Result<HashSet<String>> {
    let mut ids = Vec::with_capacity(events.len());
    let mut customers = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut occurred = Vec::with_capacity(events.len());
    let mut received = Vec::with_capacity(events.len());
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.event_id.clone());
        customers.push(event.customer_id.clone());
        types.push(event.event_type.clone());
        occurred.push(event.occurred_at);
        received.push(event.received_at);
        records.push(serde_json::to_value(event).context("encoding an event")?);
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
    .context("recording events")?;
    Ok(inserted.into_iter().collect())
}

/// Locks these customers and loads their stored lifecycles (absent ones
/// have none yet), in one round trip.
///
/// The locks serialise writers of the same customer (two consumers during a
/// rebalance): transaction-scoped advisory locks, taken in the given (sorted)
/// order so two batches cannot deadlock on them. They are taken in the
/// ordered subquery, before the join reads any row.
pub async fn lock_and_load(
    tx: &mut Transaction<'_, Postgres>,
    sorted_ids: &[String],
) -> anyhow::Result<HashMap<String, Lifecycle>> {
    let rows = sqlx::query!(
        r#"
        SELECT l.id AS "customer_id!", c.lifecycle AS "lifecycle?"
        FROM (SELECT id, pg_advisory_xact_lock(hashtextextended(id, 0)) AS locked
              FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, n)
              ORDER BY n) AS l
        LEFT JOIN customers c ON c.customer_id = l.id
        "#,
        sorted_ids
    )
    .fetch_all(&mut **tx)
    .await
    .context("locking and loading customers")?;
    // A LEFT JOIN, so every id's lock is taken even for new customers.
    rows.into_iter()
        .filter_map(|row| Some((row.customer_id, row.lifecycle?)))
        .map(|(customer_id, lifecycle)| {
            let state: Lifecycle = serde_json::from_value(lifecycle)
                .with_context(|| format!("decoding the stored lifecycle of customer {customer_id}"))?;
            Ok((customer_id, state))
        })
        .collect()
}

/// Folds each customer's whole recorded history.
pub async fn recompute_from_history(
    tx: &mut Transaction<'_, Postgres>,
    customer_ids: &[String],
) -> anyhow::Result<Vec<(String, Lifecycle)>> {
    let rows = sqlx::query!(
        "SELECT customer_id, record FROM connect_events WHERE customer_id = ANY($1) ORDER BY customer_id, occurred_at, event_id",
        customer_ids
    )
    .fetch_all(&mut **tx)
    .await
    .context("loading event histories")?;
    let mut histories: BTreeMap<String, Vec<ConnectEvent>> = BTreeMap::new();
    for row in rows {
        let event: ConnectEvent = serde_json::from_value(row.record).context("decoding a recorded event")?;
        histories.entry(row.customer_id).or_default().push(event);
    }
    Ok(histories.into_iter().map(|(id, events)| (id, lifecycle::fold(&events))).collect())
}

/// Upserts the customers' rows.
pub async fn write_lifecycles(
    tx: &mut Transaction<'_, Postgres>,
    states: &[(String, Lifecycle)],
) -> anyhow::Result<()> {
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
        ids.push(customer_id.clone());
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
        documents.push(serde_json::to_value(state).context("encoding a lifecycle")?);
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
    .context("writing customers")?;
    Ok(())
}

/// Rewrites the institution logins and accounts of these customers.
pub async fn write_accounts(tx: &mut Transaction<'_, Postgres>, states: &[&(String, Lifecycle)]) -> anyhow::Result<()> {
    if states.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = states.iter().map(|(id, _)| id.clone()).collect();
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
            login_customer.push(customer_id.clone());
            login_id.push(login.institution_login_id.clone());
            login_institution.push(login.institution_id.clone());
            login_oauth.push(login.oauth);
            for account in &login.accounts {
                account_customer.push(customer_id.clone());
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
    .context("writing accounts")?;
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
    .context("writing institution logins")?;
    Ok(())
}

/// The contract name of a state enum (its serde name, e.g. `mfa_challenge`).
fn name_of<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    match serde_json::to_value(value).context("naming a state")? {
        serde_json::Value::String(name) => Ok(name),
        other => anyhow::bail!("state {other} has no name"),
    }
}
