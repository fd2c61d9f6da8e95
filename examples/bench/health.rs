//! `bench health`: what the health beat of `consume` costs at a million
//! customers: the institutions' evaluation over a busy window of sessions,
//! and the lapses' and expiry warnings' look at every authorization (the
//! first round, which warns every authorization already near its lapse, and
//! the steady rounds with nothing due). The
//! job's own functions run in this process against a seeded database, as
//! `consume` runs them; the figures are the beat's wall time.

use std::time::Instant;

use chrono::Utc;
use connectflow::institution::HealthSettings;
use connectflow::lifecycle::AuthorizationPolicy;
use connectflow::store::{expiry, institutions};

use super::procs::{drop_database, fresh_database};
use super::seed_customers;

/// Institutions the sessions are spread over.
pub const INSTITUTIONS: i64 = 2_000;

/// The health beat's figures.
#[derive(Debug, Default)]
pub struct HealthFigures {
    /// Customers seeded.
    pub customers: i64,
    /// Sessions in the window.
    pub sessions: i64,
    /// The first evaluation (every institution's row written).
    pub first_evaluation_ms: crate::runs::Runs,
    /// Median of the later ones (statuses settled: nothing to write).
    pub evaluation_ms: crate::runs::Runs,
    /// Evaluations measured after the first.
    pub runs: usize,
    /// Warnings the first expiry round announced (every authorization
    /// already within 30 days of its lapse: switching warnings on).
    pub first_warnings: usize,
    /// That first round (lapses and warnings).
    pub first_expiry_ms: crate::runs::Runs,
    /// Median of the later rounds, nothing due: the steady beat's look at
    /// every authorization.
    pub expiry_ms: crate::runs::Runs,
}

/// The warning thresholds measured (the default `30,7`).
const WARN_DAYS: [u32; 2] = [7, 30];

/// Seeds `customers` customers and `sessions` sessions ending over the last
/// hour at [`INSTITUTIONS`] institutions (one in ten failing at the bank, a
/// few institutions mostly), then evaluates `runs + 1` times.
pub async fn bench_health(customers: i64, sessions: i64, runs: usize) -> anyhow::Result<HealthFigures> {
    let database = fresh_database("health").await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    connectflow::store::migrate(&pool).await?;
    let seeded = Instant::now();
    seed_customers(&pool, customers).await?;
    sqlx::query(
        "INSERT INTO institution_sessions (institution_id, occurred_at, outcome) \
         SELECT (100000 + g % $2)::text, now() - make_interval(secs => (g % 3600)::float8), \
                CASE WHEN g % $2 < 5 AND g % 10 < 8 THEN 'institution_failure' \
                     WHEN g % 10 = 0 THEN 'institution_failure' \
                     WHEN g % 10 < 3 THEN 'customer_failure' ELSE 'success' END \
         FROM generate_series(1, $1::bigint) AS g",
    )
    .bind(sessions)
    .bind(INSTITUTIONS)
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE institution_sessions").execute(&pool).await?;
    // Every customer authorized once in the last year, evenly: a twelfth
    // within a month of the lapse.
    sqlx::query(
        "UPDATE customers SET consent_authorized_at = \
           now() - make_interval(days => (customer_id::bigint % 365)::int) - interval '1 hour'",
    )
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE customers").execute(&pool).await?;
    eprintln!("health: seeded {customers} customers and {sessions} sessions in {:.1}s", seeded.elapsed().as_secs_f64());

    let settings = HealthSettings::default();
    let mut times = Vec::with_capacity(runs + 1);
    for run in 0..=runs {
        // Each evaluation a second after the previous, none skipped.
        let now = Utc::now() + chrono::Duration::seconds(i64::try_from(run).unwrap_or(0));
        let started = Instant::now();
        let evaluation = institutions::evaluate(&pool, &settings, now, chrono::Duration::zero()).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(evaluation.is_some(), "evaluation {run} was skipped");
    }

    let policy = AuthorizationPolicy::default();
    let mut expiry_times = Vec::with_capacity(runs + 1);
    let mut first_warnings = 0;
    for run in 0..=runs {
        let now = Utc::now();
        let started = Instant::now();
        let lapsed = expiry::announce_lapsed(&pool, policy, now).await?;
        let warned = expiry::announce_expiring(&pool, policy, &WARN_DAYS, now).await?;
        expiry_times.push(started.elapsed().as_secs_f64() * 1000.0);
        if run == 0 {
            first_warnings = lapsed + warned;
            // As autovacuum would after the catch-up's writes.
            sqlx::query("VACUUM ANALYZE customers").execute(&pool).await?;
        } else {
            anyhow::ensure!(lapsed + warned == 0, "round {run} announced {} more", lapsed + warned);
        }
    }
    pool.close().await;
    drop_database(&database).await;
    Ok(HealthFigures {
        first_warnings,
        first_expiry_ms: expiry_times.first().copied().into(),
        expiry_ms: expiry_times[1..].to_vec().into(),
        customers,
        sessions,
        first_evaluation_ms: times.first().copied().into(),
        evaluation_ms: times[1..].to_vec().into(),
        runs,
    })
}
