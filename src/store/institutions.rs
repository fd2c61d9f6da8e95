//! Institution health in Postgres: the sessions the consumer saw end at
//! each institution (recorded in its batch's transaction), the evaluation
//! that turns a window of them into statuses (one process at a time, under
//! an advisory lock), the outbox of status changes, and the reads of
//! `GET /v1/institutions`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::institution::{
    HealthSettings, InstitutionHealth, InstitutionStatus, InstitutionStatusChange, SessionOutcome, Standing,
    WindowCounts, evaluate as evaluate_one,
};
use crate::store::error::{StoreError, StoreResultExt};

/// A session that ended at an institution, as the consumer records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    /// The institution.
    pub institution_id: String,
    /// When its ending event occurred: the window goes by it.
    pub occurred_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: SessionOutcome,
}

/// Records ended sessions in the batch's transaction (its events are new:
/// a duplicate event never gets here, so a session counts once).
pub async fn record_sessions(tx: &mut Transaction<'_, Postgres>, sessions: &[EndedSession]) -> Result<(), StoreError> {
    if sessions.is_empty() {
        return Ok(());
    }
    let institutions: Vec<&str> = sessions.iter().map(|s| s.institution_id.as_str()).collect();
    let occurred: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.occurred_at).collect();
    let outcomes: Vec<&str> = sessions.iter().map(|s| s.outcome.as_str()).collect();
    sqlx::query!(
        r#"
        INSERT INTO institution_sessions (institution_id, occurred_at, outcome)
        SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[])
        "#,
        &institutions as &[&str],
        &occurred,
        &outcomes as &[&str],
    )
    .execute(&mut **tx)
    .await
    .store("recording institution sessions")?;
    Ok(())
}

/// What an evaluation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Institutions evaluated (those with sessions in the window, and those
    /// whose status or counts the empty window changes).
    pub institutions: usize,
    /// The status changes recorded in the outbox.
    pub changes: Vec<InstitutionStatusChange>,
}

/// The advisory lock of the evaluation: one process evaluates at a time.
const EVALUATION_LOCK: &str = "connectflow.institution_health";
/// The advisory lock of publishing the status changes: one publisher at a
/// time keeps each institution's versions in order.
const OUTBOX_LOCK: &str = "connectflow.institution_outbox";

/// Evaluates every institution at `now` over `settings.window`, unless
/// another process is evaluating or one evaluated less than `min_gap` ago
/// (`None`: this beat was someone else's). In one transaction: reads the
/// window's sessions and the stored statuses, applies
/// [`crate::institution::evaluate`], writes the statuses and the counts, and
/// records a [`InstitutionStatusChange`] in the outbox per status change, so
/// that a change is recorded once whatever the number of evaluators.
pub async fn evaluate(
    pool: &PgPool,
    settings: &HealthSettings,
    now: DateTime<Utc>,
    min_gap: Duration,
) -> Result<Option<Evaluation>, StoreError> {
    let mut tx = pool.begin().await.store("beginning an institution evaluation")?;
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS "locked!""#,
        EVALUATION_LOCK
    )
    .fetch_one(&mut *tx)
    .await
    .store("locking the institution evaluation")?;
    if !locked {
        return Ok(None);
    }
    let last = sqlx::query_scalar!("SELECT evaluated_at FROM institution_health_runs")
        .fetch_optional(&mut *tx)
        .await
        .store("reading the latest institution evaluation")?;
    if last.is_some_and(|last| last > now - min_gap) {
        return Ok(None);
    }
    let counted = sqlx::query!(
        r#"
        SELECT institution_id,
               count(*) FILTER (WHERE outcome = 'success') AS "successes!",
               count(*) FILTER (WHERE outcome = 'institution_failure') AS "institution_failures!",
               count(*) FILTER (WHERE outcome = 'customer_failure') AS "customer_failures!"
        FROM institution_sessions
        WHERE occurred_at > $1 AND occurred_at <= $2
        GROUP BY institution_id
        "#,
        now - settings.window,
        now,
    )
    .fetch_all(&mut *tx)
    .await
    .store("counting institution sessions")?;
    let mut counts: BTreeMap<String, WindowCounts> = counted
        .into_iter()
        .map(|row| {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            (
                row.institution_id,
                WindowCounts {
                    successes: count(row.successes),
                    institution_failures: count(row.institution_failures),
                    customer_failures: count(row.customer_failures),
                },
            )
        })
        .collect();
    let seen: Vec<&str> = counts.keys().map(String::as_str).collect();
    // The institutions with sessions now, and those that had some or a
    // status at the latest evaluation (an empty window changes them).
    let stored = sqlx::query!(
        r#"
        SELECT institution_id, status, since, improving, version, successes, institution_failures, customer_failures
        FROM institution_health
        WHERE institution_id = ANY($1::text[]) OR status <> 'unknown'
           OR successes + institution_failures + customer_failures > 0
        "#,
        &seen as &[&str],
    )
    .fetch_all(&mut *tx)
    .await
    .store("reading institution statuses")?;
    let mut previous: BTreeMap<String, (Standing, i64, WindowCounts)> = BTreeMap::new();
    for row in stored {
        // Written by this code from the enum; a name it does not know (a
        // newer version's) is taken as `unknown`, which any evaluation leaves.
        let status = InstitutionStatus::from_name(&row.status).unwrap_or(InstitutionStatus::Unknown);
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let standing = Standing { status, since: row.since, improving: u32::try_from(row.improving).unwrap_or(0) };
        let was = WindowCounts {
            successes: count(row.successes),
            institution_failures: count(row.institution_failures),
            customer_failures: count(row.customer_failures),
        };
        counts.entry(row.institution_id.clone()).or_default();
        previous.insert(row.institution_id, (standing, row.version, was));
    }

    let mut rows = StatusRows::default();
    let mut changes = Vec::new();
    for (institution_id, window) in &counts {
        let before = previous.get(institution_id);
        let standing = evaluate_one(before.map(|(standing, _, _)| standing), window, settings, now);
        let version = before.map_or(0, |(_, version, _)| *version);
        let previous_status = before.map_or(InstitutionStatus::Unknown, |(standing, _, _)| standing.status);
        let changed = standing.status != previous_status;
        if before.is_some_and(|(was, _, counted)| *was == standing && counted == window) && !changed {
            continue;
        }
        let version = if changed { version + 1 } else { version };
        if changed {
            let health = InstitutionHealth::new(institution_id.clone(), &standing, window, settings.window, now);
            changes.push(InstitutionStatusChange::new(health, previous_status, version));
        }
        rows.push(institution_id, &standing, version, window);
    }
    rows.write(&mut tx).await?;
    record_status_changes(&mut tx, &changes, now).await?;
    let window_minutes = i32::try_from(settings.window.num_minutes()).unwrap_or(i32::MAX);
    sqlx::query!(
        r#"
        INSERT INTO institution_health_runs (singleton, evaluated_at, window_minutes) VALUES (true, $1, $2)
        ON CONFLICT (singleton) DO UPDATE SET evaluated_at = EXCLUDED.evaluated_at,
                                              window_minutes = EXCLUDED.window_minutes
        "#,
        now,
        window_minutes,
    )
    .execute(&mut *tx)
    .await
    .store("recording the institution evaluation")?;
    tx.commit().await.store("committing the institution evaluation")?;
    Ok(Some(Evaluation { institutions: counts.len(), changes }))
}

/// The institution rows an evaluation writes, column by column.
#[derive(Debug, Default)]
struct StatusRows {
    ids: Vec<String>,
    statuses: Vec<&'static str>,
    since: Vec<DateTime<Utc>>,
    improving: Vec<i32>,
    versions: Vec<i64>,
    successes: Vec<i64>,
    institution_failures: Vec<i64>,
    customer_failures: Vec<i64>,
}

impl StatusRows {
    fn push(&mut self, institution_id: &str, standing: &Standing, version: i64, counts: &WindowCounts) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.ids.push(institution_id.to_owned());
        self.statuses.push(standing.status.as_str());
        self.since.push(standing.since);
        self.improving.push(i32::try_from(standing.improving).unwrap_or(i32::MAX));
        self.versions.push(version);
        self.successes.push(count(counts.successes));
        self.institution_failures.push(count(counts.institution_failures));
        self.customer_failures.push(count(counts.customer_failures));
    }

    async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            r#"
            INSERT INTO institution_health (institution_id, status, since, improving, version, successes,
                                            institution_failures, customer_failures)
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int4[], $5::int8[], $6::int8[],
                                 $7::int8[], $8::int8[])
            ON CONFLICT (institution_id) DO UPDATE SET
                status = EXCLUDED.status, since = EXCLUDED.since, improving = EXCLUDED.improving,
                version = EXCLUDED.version, successes = EXCLUDED.successes,
                institution_failures = EXCLUDED.institution_failures, customer_failures = EXCLUDED.customer_failures
            "#,
            &self.ids,
            &self.statuses as &[&str],
            &self.since,
            &self.improving,
            &self.versions,
            &self.successes,
            &self.institution_failures,
            &self.customer_failures,
        )
        .execute(&mut **tx)
        .await
        .store("writing institution statuses")?;
        Ok(())
    }
}

async fn record_status_changes(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[InstitutionStatusChange],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = changes.iter().map(|c| c.health.institution_id.as_str()).collect();
    let versions: Vec<i64> = changes.iter().map(|c| c.version).collect();
    let records = changes.iter().map(serde_json::to_string).collect::<Result<Vec<String>, _>>().map_err(|err| {
        StoreError::Permanent { context: "encoding an institution status change", reason: err.to_string() }
    })?;
    sqlx::query!(
        r#"
        INSERT INTO institution_status_outbox (institution_id, version, record, recorded_at)
        SELECT u.institution_id, u.version, u.record, $4 FROM UNNEST($1::text[], $2::int8[], $3::text[])
            AS u(institution_id, version, record)
        "#,
        &ids as &[&str],
        &versions,
        &records,
        now,
    )
    .execute(&mut **tx)
    .await
    .store("recording institution status changes")?;
    Ok(())
}

/// Deletes the sessions that ended at or before `before` (older than any
/// window), at most `limit` of them; returns how many went.
pub async fn prune_sessions(pool: &PgPool, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
    let deleted = sqlx::query!(
        r#"
        DELETE FROM institution_sessions WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM institution_sessions WHERE occurred_at <= $1 LIMIT $2))
        "#,
        before,
        limit,
    )
    .execute(pool)
    .await
    .store("pruning institution sessions")?;
    Ok(deleted.rows_affected())
}

/// Institutions per status, as the latest evaluation left them.
pub async fn status_counts(pool: &PgPool) -> Result<Vec<(InstitutionStatus, u64)>, StoreError> {
    let rows = sqlx::query!(r#"SELECT status, count(*) AS "count!" FROM institution_health GROUP BY status"#)
        .fetch_all(pool)
        .await
        .store("counting institutions by status")?;
    Ok(InstitutionStatus::ALL
        .into_iter()
        .map(|status| {
            let count = rows.iter().find(|row| row.status == status.as_str()).map_or(0, |row| row.count);
            (status, u64::try_from(count).unwrap_or(0))
        })
        .collect())
}

/// A status change waiting for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    /// The institution (the record's key).
    pub institution_id: String,
    /// Its change's version.
    pub version: i64,
    /// The record as published.
    pub record: String,
}

/// The oldest status changes waiting, held by this publisher (one at a
/// time: the others find the lock taken) until [`Pending::settle`].
pub struct Pending {
    tx: Transaction<'static, Postgres>,
    /// In the order to publish: by recording, each institution's versions
    /// in order.
    pub records: Vec<PendingRecord>,
}

/// Takes the publishing lock and reads up to `limit` waiting status
/// changes; `None` when another process is publishing or none waits.
pub async fn pending(pool: &PgPool, limit: i64) -> Result<Option<Pending>, StoreError> {
    let mut tx = pool.begin().await.store("beginning to publish institution changes")?;
    let locked =
        sqlx::query_scalar!(r#"SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS "locked!""#, OUTBOX_LOCK)
            .fetch_one(&mut *tx)
            .await
            .store("locking the institution outbox")?;
    if !locked {
        return Ok(None);
    }
    let records = sqlx::query_as!(
        PendingRecord,
        r#"
        SELECT institution_id, version, record FROM institution_status_outbox
        ORDER BY recorded_at, institution_id, version
        LIMIT $1
        "#,
        limit
    )
    .fetch_all(&mut *tx)
    .await
    .store("reading institution status changes")?;
    if records.is_empty() {
        return Ok(None);
    }
    Ok(Some(Pending { tx, records }))
}

impl Pending {
    /// Deletes the changes Kafka confirmed and releases the lock; the others
    /// wait for the next publisher.
    pub async fn settle(mut self, published: &[(String, i64)]) -> Result<(), StoreError> {
        if !published.is_empty() {
            let ids: Vec<&str> = published.iter().map(|(id, _)| id.as_str()).collect();
            let versions: Vec<i64> = published.iter().map(|(_, version)| *version).collect();
            sqlx::query!(
                r#"
                DELETE FROM institution_status_outbox o
                USING UNNEST($1::text[], $2::int8[]) AS u(institution_id, version)
                WHERE o.institution_id = u.institution_id AND o.version = u.version
                "#,
                &ids as &[&str],
                &versions,
            )
            .execute(&mut *self.tx)
            .await
            .store("deleting published institution changes")?;
        }
        self.tx.commit().await.store("committing published institution changes")?;
        Ok(())
    }
}

/// A page of institutions, by id.
#[derive(Debug, Clone, PartialEq)]
pub struct InstitutionPage {
    /// The institutions.
    pub institutions: Vec<InstitutionHealth>,
    /// The last id of the page when more may follow.
    pub next_after: Option<String>,
}

/// An `institution_health` row with the latest evaluation's time and window.
struct HealthRow {
    institution_id: String,
    status: String,
    since: DateTime<Utc>,
    successes: i64,
    institution_failures: i64,
    customer_failures: i64,
    evaluated_at: DateTime<Utc>,
    window_minutes: i32,
}

impl From<HealthRow> for InstitutionHealth {
    fn from(row: HealthRow) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let counts = WindowCounts {
            successes: count(row.successes),
            institution_failures: count(row.institution_failures),
            customer_failures: count(row.customer_failures),
        };
        let standing = Standing {
            status: InstitutionStatus::from_name(&row.status).unwrap_or(InstitutionStatus::Unknown),
            since: row.since,
            improving: 0,
        };
        let window = Duration::minutes(i64::from(row.window_minutes.max(0)));
        InstitutionHealth::new(row.institution_id, &standing, &counts, window, row.evaluated_at)
    }
}

/// The institutions evaluated, by id after `after`, of `status` when given.
/// Empty before the first evaluation.
pub async fn list(
    pool: &PgPool,
    status: Option<InstitutionStatus>,
    after: Option<&str>,
    limit: i64,
) -> Result<InstitutionPage, StoreError> {
    let rows = sqlx::query_as!(
        HealthRow,
        r#"
        SELECT h.institution_id, h.status, h.since, h.successes, h.institution_failures, h.customer_failures,
               r.evaluated_at, r.window_minutes
        FROM institution_health h CROSS JOIN institution_health_runs r
        WHERE ($1::text IS NULL OR h.status = $1) AND ($2::text IS NULL OR h.institution_id > $2)
        ORDER BY h.institution_id
        LIMIT $3
        "#,
        status.map(InstitutionStatus::as_str),
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await
    .store("listing institutions")?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    let institutions: Vec<InstitutionHealth> = rows.into_iter().take(page).map(InstitutionHealth::from).collect();
    let next_after = if more { institutions.last().map(|i| i.institution_id.clone()) } else { None };
    Ok(InstitutionPage { institutions, next_after })
}

/// These institutions as evaluated (those never evaluated are left out),
/// by id.
pub async fn of(pool: &PgPool, institution_ids: &[&str]) -> Result<Vec<InstitutionHealth>, StoreError> {
    let rows = sqlx::query_as!(
        HealthRow,
        r#"
        SELECT h.institution_id, h.status, h.since, h.successes, h.institution_failures, h.customer_failures,
               r.evaluated_at, r.window_minutes
        FROM institution_health h CROSS JOIN institution_health_runs r
        WHERE h.institution_id = ANY($1::text[])
        ORDER BY h.institution_id
        "#,
        institution_ids as &[&str],
    )
    .fetch_all(pool)
    .await
    .store("reading institutions")?;
    Ok(rows.into_iter().map(InstitutionHealth::from).collect())
}
