//! Applying a batch of events in one transaction: record the distinct new
//! events (a known event id is a no-op), fold them into each affected
//! customer's lifecycle, write the customers and their accounts, commit.
//!
//! Customers are folded incrementally when every new event comes after the
//! last one applied in `(occurred_at, event_id)` order; an older event makes
//! the customer be recomputed from their whole recorded history (their
//! history snapshot and the events kept), in the same transaction. Either
//! way the result is `fold` of the distinct events (`fold_from` the
//! snapshot, with a history retention).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use crate::change::{LifecycleChange, Versioner};
use crate::event::{ConnectEvent, CustomerId};
use crate::institution::session_outcome;
use crate::lifecycle::{self, Account, Advance, AuthReason, InstitutionLogin, Lifecycle};
use crate::program::ProgramId;
use crate::store::changes::{Announce, HandOff, record_changes};
use crate::store::erasure::{self, Erasure, Tombstone};
use crate::store::error::{StoreError, StoreResultExt};
use crate::store::history::load_snapshots;
use crate::store::institutions::{self, EndedSession};
use crate::store::positions::{self, Positions};

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events recorded for the first time and applied.
    pub applied: u64,
    /// Events whose id was already recorded (or repeated within the batch).
    pub duplicates: u64,
    /// Customers recomputed from their whole history.
    pub recomputed: u64,
    /// Lifecycle changes recorded in the outbox (the caller wakes its relay
    /// for those not handed off).
    pub changes: u64,
    /// The changes written already leased to the caller's relay
    /// ([`Announce::HandOff`]): the caller gives them to it.
    pub handed_off: Option<HandOff>,
    /// Events neither recorded nor applied because their customer belongs
    /// to another program: the caller parks them (`program_conflict`).
    pub conflicts: Vec<ProgramConflict>,
    /// Customers erased.
    pub erased: u64,
    /// Events dropped unrecorded because they occurred at or before their
    /// customer's erasure.
    pub suppressed: u64,
    /// Whether the consumer's positions given with the batch were recorded
    /// in its transaction: not when events are to be parked for a program
    /// conflict, because they are parked after the commit (the caller
    /// records the positions once they are).
    pub positions_recorded: bool,
}

/// What the batch's transaction knows of its customers, which an erasure
/// changes: an erased customer's lifecycle is gone, its tombstone new.
struct Known<'a> {
    states: &'a mut HashMap<CustomerId, Stored>,
    undecodable: &'a mut HashMap<CustomerId, i64>,
    programs: &'a HashMap<CustomerId, ProgramId>,
    tombstones: &'a mut HashMap<CustomerId, Tombstone>,
}

/// What [`apply_erasures`] did.
struct Erased {
    applied: u64,
    duplicates: u64,
}

/// Erases the customers of these erasure events (the latest per customer),
/// except those already erased by then (a repeated erasure: a duplicate),
/// and appends their erased changes to `changes`. `known` is updated: an
/// erased customer has no stored lifecycle and a new tombstone.
async fn apply_erasures(
    tx: &mut Transaction<'_, Postgres>,
    erasures: &[&ConnectEvent],
    known: Known<'_>,
    recorded_at: DateTime<Utc>,
    changes: &mut Vec<LifecycleChange>,
) -> Result<Erased, StoreError> {
    let mut latest: BTreeMap<&CustomerId, &ConnectEvent> = BTreeMap::new();
    for event in erasures {
        let entry = latest.entry(&event.customer_id).or_insert(event);
        if event.order_key() > entry.order_key() {
            *entry = event;
        }
    }
    let mut outcome = Erased { applied: 0, duplicates: (erasures.len() - latest.len()) as u64 };
    let mut erased: Vec<(&ConnectEvent, ProgramId, Option<Stored>, i64)> = Vec::with_capacity(latest.len());
    for (customer_id, event) in latest {
        if known.tombstones.get(customer_id).is_some_and(|t| event.occurred_at <= t.erased_at) {
            outcome.duplicates += 1;
            continue;
        }
        let stored = known.states.remove(customer_id);
        let undecodable = known.undecodable.remove(customer_id);
        let version = stored
            .as_ref()
            .map(|s| s.version)
            .or(undecodable)
            .or_else(|| known.tombstones.get(customer_id).map(|t| t.last_version))
            .unwrap_or(0);
        let program_id = known.programs.get(customer_id).unwrap_or(&event.program_id).clone();
        let mut versioner = Versioner::new(customer_id, &program_id, version, true, recorded_at);
        versioner.erased(stored.as_ref().map(|s| &s.lifecycle), event);
        changes.append(&mut versioner.changes);
        known.tombstones.insert(
            customer_id.clone(),
            Tombstone {
                program_id: program_id.clone(),
                erased_at: event.occurred_at,
                erasure_event_id: event.event_id.clone(),
                last_version: version + 1,
            },
        );
        erased.push((event, program_id, stored, version + 1));
    }
    let erasures: Vec<Erasure<'_>> = erased
        .iter()
        .map(|(event, program_id, stored, version)| Erasure {
            event,
            program_id,
            lifecycle: stored.as_ref().map(|s| &s.lifecycle),
            version: *version,
        })
        .collect();
    erasure::erase(tx, &erasures).await?;
    outcome.applied = erasures.len() as u64;
    Ok(outcome)
}

/// An event for a customer of another program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramConflict {
    /// The event's id.
    pub event_id: String,
    /// The program the event came for.
    pub program_id: ProgramId,
    /// The program the customer belongs to.
    pub owner: ProgramId,
}

/// The version of the stored lifecycle (`customers.lifecycle`) this binary
/// writes and reads: raised whenever a release stores a lifecycle an older
/// one would misread (a state it does not know). A consumer meets a stored
/// lifecycle of a higher version only during a rolling upgrade (or a
/// rollback): it stalls then rather than recompute the customer with older
/// rules ([`StoreError::StoredState`]).
pub const STORED_LIFECYCLE_VERSION: i32 = 1;

/// An event with the bytes it was published as, when they are to be kept
/// verbatim (`connect_events.published`).
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    /// The decoded, sanitised event.
    pub event: &'a ConnectEvent,
    /// The record's value as published, when sanitising left it as it was.
    pub bytes: Option<&'a str>,
}

/// Records and applies `events` in one transaction, keeping no published
/// bytes and no consumer positions ([`apply_published`] does).
pub async fn apply_batch<'a>(
    pool: &PgPool,
    events: impl IntoIterator<Item = &'a ConnectEvent>,
) -> Result<BatchOutcome, StoreError> {
    apply_published(
        pool,
        events.into_iter().map(|event| Published { event, bytes: None }),
        &Positions::default(),
        Announce::InProcess,
    )
    .await
}

/// Records and applies `events` in one transaction, each recorded with the
/// bytes it was published as, when given, and records the consumer's
/// `positions` in the same transaction (unless some events are for a
/// customer of another program: see [`BatchOutcome::positions_recorded`]).
/// The lifecycle changes are announced as `announce` says (the consumer's
/// lanes hand them off to their relay when it has room).
///
/// Fails [transiently](StoreError::is_transient) when Postgres does,
/// permanently when a record cannot be stored (the caller splits the batch to
/// find it), and with [`StoreError::StoredState`] when what is stored for a
/// customer is in the way (the caller stalls; the events are not at fault).
/// A stored lifecycle that does not decode and is not of a newer version is
/// not an error: the customer is recomputed from their recorded events
/// instead.
pub async fn apply_published<'a>(
    pool: &PgPool,
    events: impl IntoIterator<Item = Published<'a>>,
    positions: &Positions<'_>,
    announce: Announce,
) -> Result<BatchOutcome, StoreError> {
    let mut published: HashMap<&str, &str> = HashMap::new();
    let events: Vec<&ConnectEvent> = events
        .into_iter()
        .map(|p| {
            if let Some(bytes) = p.bytes {
                published.entry(p.event.event_id.as_str()).or_insert(bytes);
            }
            p.event
        })
        .collect();
    let mut batch_customers: Vec<&CustomerId> = events.iter().map(|e| &e.customer_id).collect();
    batch_customers.sort();
    batch_customers.dedup();

    let mut tx = pool.begin().await.store("beginning the batch transaction")?;
    reuse_plans(&mut tx).await?;
    // Locks first, in a statement of their own: every later statement of
    // this transaction then sees what an earlier writer of these customers
    // committed (see `lock_customers`).
    lock_customers(&mut tx, &batch_customers).await?;
    let Loaded { mut states, mut undecodable, mut programs } = load_lifecycles(&mut tx, &batch_customers).await?;
    let mut tombstones = erasure::load(&mut tx, &batch_customers).await?;
    // An erased customer's id stays its program's while the record is kept.
    for (customer_id, tombstone) in &tombstones {
        programs.entry(customer_id.clone()).or_insert_with(|| tombstone.program_id.clone());
    }
    let (events, conflicts) = split_program_conflicts(events, &programs);
    // With the batch, so a failover loses both or neither.
    let positions_recorded = conflicts.is_empty() && !positions.is_empty();
    if positions_recorded {
        positions::record(&mut tx, positions).await?;
    }
    let (erasures, events): (Vec<&ConnectEvent>, Vec<&ConnectEvent>) = events.into_iter().partition(|e| e.is_erasure());
    let recorded_at = Utc::now();
    let mut changes: Vec<LifecycleChange> = Vec::new();
    let erased = apply_erasures(
        &mut tx,
        &erasures,
        Known { states: &mut states, undecodable: &mut undecodable, programs: &programs, tombstones: &mut tombstones },
        recorded_at,
        &mut changes,
    )
    .await?;
    // What occurred at or before a customer's erasure never comes back:
    // Finicity's retries, `dlq replay`, an offset reset.
    let (suppressed, events): (Vec<&ConnectEvent>, Vec<&ConnectEvent>) =
        events.into_iter().partition(|e| tombstones.get(&e.customer_id).is_some_and(|t| e.occurred_at <= t.erased_at));
    let received = events.len();
    let mut distinct = events;
    // One order for every writer, so concurrent batches take the
    // unique-index locks of shared event ids in the same order.
    distinct.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    distinct.dedup_by(|a, b| a.event_id == b.event_id);
    let inserted = insert_events(&mut tx, &distinct, &published).await?;
    let new_events: Vec<&ConnectEvent> =
        distinct.into_iter().filter(|e| inserted.contains(e.event_id.as_str())).collect();
    let mut outcome = BatchOutcome {
        applied: new_events.len() as u64,
        duplicates: (received - new_events.len()) as u64 + erased.duplicates,
        recomputed: 0,
        changes: 0,
        handed_off: None,
        conflicts,
        erased: erased.applied,
        suppressed: suppressed.len() as u64,
        positions_recorded,
    };
    if new_events.is_empty() {
        outcome.changes = changes.len() as u64;
        outcome.handed_off =
            record_changes(&mut tx, &changes, announce).await.map_err(|err| changes_in_the_way(err, &changes))?;
        tx.commit().await.store("committing the batch")?;
        return Ok(outcome);
    }
    // A customer without a stored lifecycle starts at version 0, or where
    // their erased lifecycle's changes ended.
    let base_version = |customer_id: &CustomerId| tombstones.get(customer_id).map_or(0, |t| t.last_version);

    let mut by_customer: BTreeMap<&CustomerId, Vec<&ConnectEvent>> = BTreeMap::new();
    for event in new_events {
        by_customer.entry(&event.customer_id).or_default().push(event);
    }
    let customer_ids: Vec<&CustomerId> = by_customer.keys().copied().collect();

    // Each customer's events are folded into the stored state one by one,
    // and each event that moves the visible lifecycle becomes a change; a
    // late event makes the customer be recomputed, and that is one change.
    let mut after: Vec<Projected> = Vec::with_capacity(customer_ids.len());
    let mut recompute: Vec<&CustomerId> = Vec::new();
    // The Connect sessions the new events ended, for the institutions'
    // health (`advance` calls back only when it applies the events).
    let mut sessions: Vec<EndedSession> = Vec::new();
    for (customer_id, events) in &by_customer {
        if undecodable.contains_key(*customer_id) {
            recompute.push(customer_id);
            continue;
        }
        let stored = states.get(*customer_id);
        if stored.is_some_and(|s| s.lifecycle.funnel.is_missing(s.lifecycle.event_count)) {
            // Stored before the funnel existed: its progress can only come
            // from the whole history.
            recompute.push(customer_id);
            continue;
        }
        let mut state = stored.map(|s| s.lifecycle.clone()).unwrap_or_default();
        let program_id = program_of(&programs, customer_id, events);
        let version = stored.map_or_else(|| base_version(customer_id), |s| s.version);
        let mut versioner = Versioner::new(customer_id, &program_id, version, stored.is_some(), recorded_at);
        let advanced = lifecycle::advance(&mut state, events.iter().copied(), |event, before, after| {
            versioner.observe(before, after, &[event], false, false);
            sessions.extend(ended_session(before, after, event));
        });
        match advanced {
            Advance::Applied => {
                after.push(Projected {
                    customer_id: (*customer_id).clone(),
                    program_id: program_id.clone(),
                    version: versioner.version(),
                    lifecycle: state,
                });
                changes.append(&mut versioner.changes);
            }
            Advance::Recompute => recompute.push(customer_id),
        }
    }
    if !recompute.is_empty() {
        outcome.recomputed = recompute.len() as u64;
        let new_ids: HashSet<&str> =
            recompute.iter().flat_map(|id| &by_customer[*id]).map(|event| event.event_id.as_str()).collect();
        let (recomputed, ended) = recompute_watching(&mut tx, &recompute, &new_ids).await?;
        sessions.extend(ended);
        for (customer_id, state) in recomputed {
            let stored = states.get(&customer_id);
            let version = stored
                .map(|s| s.version)
                .or_else(|| undecodable.get(&customer_id).copied())
                .unwrap_or_else(|| base_version(&customer_id));
            let before = stored.map(|s| s.lifecycle.clone()).unwrap_or_default();
            let causes = by_customer.get(&customer_id).map(Vec::as_slice).unwrap_or_default();
            let program_id = program_of(&programs, &customer_id, causes);
            let mut versioner = Versioner::new(&customer_id, &program_id, version, stored.is_some(), recorded_at);
            versioner.observe(&before, &state, causes, true, false);
            changes.append(&mut versioner.changes);
            after.push(Projected {
                version: versioner.version(),
                customer_id: customer_id.clone(),
                program_id: program_id.clone(),
                lifecycle: state,
            });
        }
    }

    write_lifecycles(&mut tx, &after).await?;
    let projections: Vec<(&CustomerId, Prior<'_>, &Lifecycle)> = after
        .iter()
        .map(|p| {
            let prior = match states.get(&p.customer_id) {
                Some(stored) => Prior::Known(&stored.lifecycle),
                None if undecodable.contains_key(&p.customer_id) => Prior::Unknown,
                None => Prior::Nothing,
            };
            (&p.customer_id, prior, &p.lifecycle)
        })
        .collect();
    write_accounts(&mut tx, &projections).await?;
    institutions::record_sessions(&mut tx, &sessions).await?;
    outcome.changes = changes.len() as u64;
    outcome.handed_off =
        record_changes(&mut tx, &changes, announce).await.map_err(|err| changes_in_the_way(err, &changes))?;
    tx.commit().await.store("committing the batch")?;
    Ok(outcome)
}

/// A change version already in `lifecycle_changes` (a database restored to
/// an earlier point, its changes table not) is the stored state's fault,
/// never the new events': [`StoreError::StoredState`], naming the customers
/// of the changes.
fn changes_in_the_way(err: StoreError, changes: &[LifecycleChange]) -> StoreError {
    if !err.is_unique_violation() {
        return err;
    }
    let mut customers: Vec<&str> = changes.iter().map(|c| c.customer_id.as_str()).collect();
    customers.sort_unstable();
    customers.dedup();
    let shown = customers.iter().take(10).copied().collect::<Vec<_>>().join(",");
    StoreError::StoredState {
        context: "recording lifecycle changes",
        customer_id: shown,
        reason: "a change of this version is already recorded (a restored database?)".into(),
    }
}

/// The program of `customer_id`: the stored one, else (a new customer) that
/// of its events, which [`split_program_conflicts`] made all the same.
fn program_of(
    programs: &HashMap<CustomerId, ProgramId>,
    customer_id: &CustomerId,
    events: &[&ConnectEvent],
) -> ProgramId {
    programs.get(customer_id).or_else(|| events.first().map(|e| &e.program_id)).cloned().unwrap_or_default()
}

/// Separates the events for a customer of another program. A customer
/// belongs to the program of its first applied event: the stored one, or
/// for a new customer the program of its first event in the batch (records
/// of one customer arrive in partition order, since the customer id is the
/// record key).
fn split_program_conflicts<'a>(
    events: Vec<&'a ConnectEvent>,
    stored: &HashMap<CustomerId, ProgramId>,
) -> (Vec<&'a ConnectEvent>, Vec<ProgramConflict>) {
    let mut owners: HashMap<&CustomerId, &ProgramId> = HashMap::new();
    let mut kept = Vec::with_capacity(events.len());
    let mut conflicts = Vec::new();
    for event in events {
        let owner = *owners
            .entry(&event.customer_id)
            .or_insert_with(|| stored.get(&event.customer_id).unwrap_or(&event.program_id));
        if *owner == event.program_id {
            kept.push(event);
        } else {
            conflicts.push(ProgramConflict {
                event_id: event.event_id.clone(),
                program_id: event.program_id.clone(),
                owner: owner.clone(),
            });
        }
    }
    (kept, conflicts)
}

/// A customer's lifecycle as it is to be written, with its change version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projected {
    /// The customer.
    pub customer_id: CustomerId,
    /// Its program (written for a new customer, never changed after).
    pub program_id: ProgramId,
    /// Its folded lifecycle.
    pub lifecycle: Lifecycle,
    /// Its visible changes so far.
    pub version: i64,
}

/// A stored lifecycle and its change version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The lifecycle.
    pub lifecycle: Lifecycle,
    /// How many visible changes it has had.
    pub version: i64,
}

/// Inserts the events, returning the ids that were new.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&ConnectEvent],
    published: &HashMap<&str, &str>,
) -> Result<HashSet<String>, StoreError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut customers = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut occurred = Vec::with_capacity(events.len());
    let mut received = Vec::with_capacity(events.len());
    let mut records = Vec::with_capacity(events.len());
    let mut verbatim: Vec<Option<&str>> = Vec::with_capacity(events.len());
    for event in events {
        verbatim.push(published.get(event.event_id.as_str()).copied());
        ids.push(event.event_id.as_str());
        customers.push(event.customer_id.as_str());
        types.push(event.event_type.as_str());
        occurred.push(event.occurred_at);
        received.push(event.received_at);
        records.push(Json(*event));
    }
    // An id folded into a history snapshot (and deleted from
    // connect_events) is as known as a recorded one: a retry or a replay of
    // it is a duplicate too. The folding job holds the customer's lock while
    // it moves an id from one table to the other, and so does this batch.
    let inserted = sqlx::query_scalar!(
        r#"
        INSERT INTO connect_events (event_id, customer_id, event_type, occurred_at, received_at, record, published)
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::jsonb[],
                             $7::text[])
            AS incoming(event_id, customer_id, event_type, occurred_at, received_at, record, published)
        WHERE NOT EXISTS (SELECT 1 FROM history_folded_events f WHERE f.event_id = incoming.event_id)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
        "#,
        &ids as &[&str],
        &customers as &[&str],
        &types as &[&str],
        &occurred,
        &received,
        &records as _,
        &verbatim as &[Option<&str>],
    )
    .fetch_all(&mut **tx)
    .await
    .store("recording events")?;
    Ok(inserted.into_iter().collect())
}

/// Lets this transaction's statements reuse their connection's generic
/// plans (`plan_cache_mode = auto`, until the transaction ends) instead of
/// planning every statement again, as every connectflow connection does
/// otherwise (see [`crate::store::pool`]).
///
/// A batch's statements are the same dozen every time, written for the
/// plans they need whatever the parameters: rows by key from `UNNEST`ed
/// arrays, `= ANY` on primary keys, `ON CONFLICT` on unique indexes. Planning
/// them again was a quarter of Postgres's CPU when batches are small (the
/// consumer keeping up with live traffic: 20 to 40 events a batch), and a
/// generic plan made while a table was still empty is replaced as soon as
/// autovacuum analyses the table (which invalidates the cached plans). The
/// API's queries, whose filters are optional parameters and whose best plan
/// depends on which are set, keep custom plans.
async fn reuse_plans(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT set_config('plan_cache_mode', 'auto', true)")
        .execute(&mut **tx)
        .await
        .store("reusing plans in the batch")?;
    Ok(())
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
    pub states: HashMap<CustomerId, Stored>,
    /// Customers whose stored lifecycle does not decode (damaged: one of a
    /// newer version is an error instead), with their version: recompute
    /// them from their events.
    pub undecodable: HashMap<CustomerId, i64>,
    /// The program of every stored customer, readable or not.
    pub programs: HashMap<CustomerId, ProgramId>,
}

/// Loads the stored lifecycles of these customers (absent ones have none
/// yet). Call after [`lock_customers`], in a later statement.
pub async fn load_lifecycles(tx: &mut Transaction<'_, Postgres>, ids: &[&CustomerId]) -> Result<Loaded, StoreError> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        r#"SELECT customer_id, lifecycle::text AS "lifecycle!", version, program_id, lifecycle_schema_version FROM customers WHERE customer_id = ANY($1::text[])"#,
        &ids as &[&str]
    )
    .fetch_all(&mut **tx)
    .await
    .store("loading customers")?;
    let mut loaded = Loaded {
        states: HashMap::with_capacity(rows.len()),
        undecodable: HashMap::new(),
        programs: HashMap::with_capacity(rows.len()),
    };
    for row in rows {
        let Ok(customer_id) = CustomerId::try_from(row.customer_id) else {
            continue;
        };
        // Written by connectflow from a checked id; anything else would be
        // damage, which cannot make another program's events apply here.
        let program = ProgramId::try_from(row.program_id).map_err(|_| StoreError::Permanent {
            context: "loading customers",
            reason: "a stored program_id is not a program id".into(),
        })?;
        loaded.programs.insert(customer_id.clone(), program);
        if row.lifecycle_schema_version > STORED_LIFECYCLE_VERSION {
            return Err(StoreError::StoredState {
                context: "loading customers",
                customer_id: customer_id.as_str().to_owned(),
                reason: format!(
                    "its lifecycle was written by a newer version (stored lifecycle version {}, this binary reads up to {STORED_LIFECYCLE_VERSION}); finish the upgrade",
                    row.lifecycle_schema_version
                ),
            });
        }
        match serde_json::from_str::<Lifecycle>(&row.lifecycle) {
            Ok(lifecycle) => {
                loaded.states.insert(customer_id, Stored { lifecycle, version: row.version });
            }
            Err(err) => {
                tracing::warn!(customer_id = %customer_id, error = %err, "stored lifecycle does not decode; recomputing it from the recorded events");
                loaded.undecodable.insert(customer_id, row.version);
            }
        }
    }
    Ok(loaded)
}

/// Folds each customer's recorded history: their history snapshot, when
/// older events were folded into one, then the events kept
/// ([`lifecycle::fold_from`]). A customer whose every event was folded is
/// their snapshot.
pub async fn recompute_from_history(
    tx: &mut Transaction<'_, Postgres>,
    customer_ids: &[&CustomerId],
) -> Result<Vec<(CustomerId, Lifecycle)>, StoreError> {
    Ok(recompute_watching(tx, customer_ids, &HashSet::new()).await?.0)
}

/// The session ended by `event`, as the institutions' health records it.
fn ended_session(before: &Lifecycle, after: &Lifecycle, event: &ConnectEvent) -> Option<EndedSession> {
    session_outcome(before, after, event).map(|session| EndedSession {
        institution_id: session.institution_id,
        occurred_at: event.occurred_at,
        outcome: session.outcome,
    })
}

/// [`recompute_from_history`], with the sessions ended by the events
/// `new_ids` names, each classified against the lifecycle before it in fold
/// order.
async fn recompute_watching(
    tx: &mut Transaction<'_, Postgres>,
    customer_ids: &[&CustomerId],
    new_ids: &HashSet<&str>,
) -> Result<(Vec<(CustomerId, Lifecycle)>, Vec<EndedSession>), StoreError> {
    let snapshots = load_snapshots(tx, customer_ids).await?;
    let ids: Vec<&str> = customer_ids.iter().map(|id| id.as_str()).collect();
    let rows = sqlx::query!(
        r#"SELECT customer_id, coalesce(published, record::text) AS "record!" FROM connect_events WHERE customer_id = ANY($1::text[]) ORDER BY customer_id, occurred_at, event_id"#,
        &ids as &[&str]
    )
    .fetch_all(&mut **tx)
    .await
    .store("loading event histories")?;
    let mut histories: BTreeMap<CustomerId, Vec<ConnectEvent>> =
        snapshots.keys().map(|id| (id.clone(), Vec::new())).collect();
    for row in rows {
        // The published bytes when kept (a newer consumer reads the fields
        // an older one did not know), else the record. One that no longer
        // decodes is the stored history's fault, not the new event's.
        let event: ConnectEvent = serde_json::from_str(&row.record).map_err(|err| StoreError::StoredState {
            context: "decoding a recorded event",
            customer_id: row.customer_id.clone(),
            reason: format!("a recorded event does not decode: {err}"),
        })?;
        histories.entry(event.customer_id.clone()).or_default().push(event);
    }
    let mut sessions = Vec::new();
    let empty = Lifecycle::default();
    let recomputed = histories
        .into_iter()
        .map(|(id, events)| {
            let state = lifecycle::fold_from_watching(
                snapshots.get(&id).unwrap_or(&empty),
                &events,
                |event| new_ids.contains(event.event_id.as_str()),
                |event, before, after| sessions.extend(ended_session(before, after, event)),
            );
            (id, state)
        })
        .collect();
    Ok((recomputed, sessions))
}

/// Upserts the customers' rows.
pub async fn write_lifecycles(tx: &mut Transaction<'_, Postgres>, states: &[Projected]) -> Result<(), StoreError> {
    let n = states.len();
    let mut versions = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut program_ids: Vec<&str> = Vec::with_capacity(n);
    let mut consent: Vec<&str> = Vec::with_capacity(n);
    let mut consent_since: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut authorized_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut auth: Vec<&str> = Vec::with_capacity(n);
    let mut auth_since: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut reason: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut error_code: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut last_id = Vec::with_capacity(n);
    let mut last_type = Vec::with_capacity(n);
    let mut last_at = Vec::with_capacity(n);
    let mut count = Vec::with_capacity(n);
    let mut documents = Vec::with_capacity(n);
    let mut first_event_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut funnel_steps: Vec<i16> = Vec::with_capacity(n);
    let mut institution: Vec<Option<&str>> = Vec::with_capacity(n);
    for Projected { customer_id, program_id, lifecycle: state, version } in states {
        let Some(last) = &state.last_event else {
            // A customer exists once an event was applied; nothing to write.
            continue;
        };
        ids.push(customer_id.as_str());
        program_ids.push(program_id.as_str());
        versions.push(*version);
        consent.push(state.consent.state.as_str());
        consent_since.push(state.consent.since);
        authorized_at.push(state.consent.authorized_at);
        auth.push(state.authentication.state.as_str());
        auth_since.push(state.authentication.since);
        reason.push(state.authentication.reason.map(AuthReason::as_str));
        error_code.push(state.authentication.error_code);
        last_id.push(last.event_id.as_str());
        last_type.push(last.event_type.as_str());
        last_at.push(last.occurred_at);
        count.push(i64::try_from(state.event_count).unwrap_or(i64::MAX));
        first_event_at.push(state.funnel.first_event_at);
        funnel_steps.push(state.funnel.steps.bits());
        institution.push(state.funnel.institution_id.as_deref());
        // Serialised straight into the bind buffer, no `Value` in between.
        documents.push(Json(state));
    }
    sqlx::query!(
        r#"
        INSERT INTO customers (customer_id, consent_state, consent_since, auth_state, auth_since, auth_reason,
                               auth_error_code, last_event_id, last_event_type, last_occurred_at, event_count,
                               lifecycle, version, consent_authorized_at, first_event_at, funnel_steps,
                               chosen_institution_id, program_id, lifecycle_schema_version, updated_at)
        SELECT *, $19::int4, now() FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[],
                                    $6::text[], $7::int8[], $8::text[], $9::text[], $10::timestamptz[],
                                    $11::int8[], $12::jsonb[], $13::int8[], $14::timestamptz[],
                                    $15::timestamptz[], $16::int2[], $17::text[], $18::text[])
        ON CONFLICT (customer_id) DO UPDATE SET
            consent_state = EXCLUDED.consent_state, consent_since = EXCLUDED.consent_since,
            auth_state = EXCLUDED.auth_state, auth_since = EXCLUDED.auth_since,
            auth_reason = EXCLUDED.auth_reason, auth_error_code = EXCLUDED.auth_error_code,
            last_event_id = EXCLUDED.last_event_id, last_event_type = EXCLUDED.last_event_type,
            last_occurred_at = EXCLUDED.last_occurred_at, event_count = EXCLUDED.event_count,
            lifecycle = EXCLUDED.lifecycle, version = EXCLUDED.version,
            consent_authorized_at = EXCLUDED.consent_authorized_at, first_event_at = EXCLUDED.first_event_at,
            funnel_steps = EXCLUDED.funnel_steps, chosen_institution_id = EXCLUDED.chosen_institution_id,
            lifecycle_schema_version = EXCLUDED.lifecycle_schema_version, updated_at = EXCLUDED.updated_at
        "#,
        &ids as &[&str],
        &consent as &[&str],
        &consent_since as &[Option<DateTime<Utc>>],
        &auth as &[&str],
        &auth_since as &[Option<DateTime<Utc>>],
        &reason as &[Option<&str>],
        &error_code as &[Option<i64>],
        &last_id as &[&str],
        &last_type as &[&str],
        &last_at,
        &count,
        &documents as _,
        &versions,
        &authorized_at as &[Option<DateTime<Utc>>],
        &first_event_at as &[Option<DateTime<Utc>>],
        &funnel_steps,
        &institution as &[Option<&str>],
        &program_ids as &[&str],
        STORED_LIFECYCLE_VERSION,
    )
    .execute(&mut **tx)
    .await
    .store("writing customers")?;
    Ok(())
}

/// What the accounts projection holds for a customer before a write.
#[derive(Debug, Clone, Copy)]
pub enum Prior<'a> {
    /// No rows: a customer seen for the first time.
    Nothing,
    /// The rows of this lifecycle, as written when it was stored.
    Known(&'a Lifecycle),
    /// Unknown (the stored lifecycle did not decode, or the projection is
    /// being repaired): the customer's logins are replaced and every account
    /// upserted.
    Unknown,
}

/// A customer's institution login row: `(institution_id, oauth)` by login id.
type LoginRows<'a> = HashMap<Option<&'a str>, (Option<&'a str>, Option<bool>)>;
/// A customer's account rows by account id, with the login that holds it.
type AccountRows<'a> = HashMap<&'a str, (&'a InstitutionLogin, &'a Account)>;

fn login_rows(state: &Lifecycle) -> LoginRows<'_> {
    state
        .institution_logins
        .iter()
        .map(|l| (l.institution_login_id.as_deref(), (l.institution_id.as_deref(), l.oauth)))
        .collect()
}

fn account_rows(state: &Lifecycle) -> AccountRows<'_> {
    state
        .institution_logins
        .iter()
        .flat_map(|login| login.accounts.iter().map(move |account| (account.account_id.as_str(), (login, account))))
        .collect()
}

/// Brings the institution logins and accounts of these customers from what
/// is stored to `state`, writing only the rows that differ.
///
/// Accounts are never dropped from a lifecycle (a deleted one stays with
/// status `deleted`), so they are only upserted; a login can disappear (its
/// accounts moved to another login), so a login row that is no longer in the
/// state is deleted by its key. For a customer whose stored rows are
/// [`Prior::Unknown`] every login row is replaced and every account upserted.
pub async fn write_accounts(
    tx: &mut Transaction<'_, Postgres>,
    customers: &[(&CustomerId, Prior<'_>, &Lifecycle)],
) -> Result<(), StoreError> {
    let unknown: Vec<&str> = customers
        .iter()
        .filter(|(_, stored, _)| matches!(stored, Prior::Unknown))
        .map(|(id, _, _)| id.as_str())
        .collect();
    if !unknown.is_empty() {
        // Rare (a repair, or a lifecycle another version wrote): the
        // customers' login rows are not known, so they all go.
        sqlx::query!("DELETE FROM institution_logins WHERE customer_id = ANY($1::text[])", &unknown as &[&str])
            .execute(&mut **tx)
            .await
            .store("clearing institution logins")?;
    }

    let mut removed_customer: Vec<&str> = Vec::new();
    let mut removed_login: Vec<Option<&str>> = Vec::new();
    let mut login_customer: Vec<&str> = Vec::new();
    let mut login_id: Vec<Option<&str>> = Vec::new();
    let mut login_institution: Vec<Option<&str>> = Vec::new();
    let mut login_oauth: Vec<Option<bool>> = Vec::new();
    let mut account_customer: Vec<&str> = Vec::new();
    let mut account_id: Vec<&str> = Vec::new();
    let mut account_login: Vec<Option<&str>> = Vec::new();
    let mut account_institution: Vec<Option<&str>> = Vec::new();
    let mut account_type: Vec<Option<&str>> = Vec::new();
    let mut account_status: Vec<&'static str> = Vec::new();
    let mut account_last4: Vec<Option<&str>> = Vec::new();
    let mut account_name: Vec<Option<&str>> = Vec::new();
    let empty = Lifecycle::default();
    for (customer_id, stored, state) in customers {
        let customer_id = customer_id.as_str();
        let (old, replace) = match stored {
            Prior::Known(old) => (*old, false),
            Prior::Nothing => (&empty, false),
            Prior::Unknown => (&empty, true),
        };
        if !replace && old.institution_logins == state.institution_logins {
            continue;
        }
        let (old_logins, new_logins) = (login_rows(old), login_rows(state));
        for key in old_logins.keys().filter(|key| !new_logins.contains_key(*key)) {
            removed_customer.push(customer_id);
            removed_login.push(*key);
        }
        for (key, row) in &new_logins {
            if replace || old_logins.get(key) != Some(row) {
                login_customer.push(customer_id);
                login_id.push(*key);
                login_institution.push(row.0);
                login_oauth.push(row.1);
            }
        }
        let old_accounts = account_rows(old);
        for (id, (login, account)) in account_rows(state) {
            let same = old_accounts.get(id).is_some_and(|(old_login, old_account)| {
                old_login.institution_login_id == login.institution_login_id
                    && old_login.institution_id == login.institution_id
                    && *old_account == account
            });
            if replace || !same {
                account_customer.push(customer_id);
                account_id.push(id);
                account_login.push(login.institution_login_id.as_deref());
                account_institution.push(login.institution_id.as_deref());
                account_type.push(account.account_type.as_deref());
                account_status.push(account.status.as_str());
                account_last4.push(account.last4.as_deref());
                account_name.push(account.name.as_deref());
            }
        }
    }
    if removed_customer.is_empty() && login_customer.is_empty() && account_customer.is_empty() {
        return Ok(());
    }
    // One statement: the removed logins, the new or changed logins, the new
    // or changed accounts (no row is touched twice, so they can share it).
    sqlx::query!(
        r#"
        WITH removed AS (
            DELETE FROM institution_logins AS l
            USING UNNEST($1::text[], $2::text[]) AS gone(customer_id, institution_login_id)
            WHERE l.customer_id = gone.customer_id
              AND l.institution_login_id IS NOT DISTINCT FROM gone.institution_login_id
        ), logins AS (
            INSERT INTO institution_logins (customer_id, institution_login_id, institution_id, oauth)
            SELECT * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bool[])
            ON CONFLICT (customer_id, institution_login_id) DO UPDATE SET
                institution_id = EXCLUDED.institution_id, oauth = EXCLUDED.oauth
        )
        INSERT INTO accounts (customer_id, account_id, institution_login_id, institution_id, account_type, status,
                              last4, name)
        SELECT * FROM UNNEST($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                             $14::text[])
        ON CONFLICT (customer_id, account_id) DO UPDATE SET
            institution_login_id = EXCLUDED.institution_login_id, institution_id = EXCLUDED.institution_id,
            account_type = EXCLUDED.account_type, status = EXCLUDED.status, last4 = EXCLUDED.last4,
            name = EXCLUDED.name
        "#,
        &removed_customer as &[&str],
        &removed_login as &[Option<&str>],
        &login_customer as &[&str],
        &login_id as &[Option<&str>],
        &login_institution as &[Option<&str>],
        &login_oauth as &[Option<bool>],
        &account_customer as &[&str],
        &account_id as &[&str],
        &account_login as &[Option<&str>],
        &account_institution as &[Option<&str>],
        &account_type as &[Option<&str>],
        &account_status as &[&str],
        &account_last4 as &[Option<&str>],
        &account_name as &[Option<&str>],
    )
    .execute(&mut **tx)
    .await
    .store("writing accounts")?;
    Ok(())
}
