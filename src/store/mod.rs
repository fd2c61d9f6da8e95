//! Postgres: the pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;

use crate::config::DatabaseArgs;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Opens a pool. Connections are made on demand, so a process whose
/// database is down still starts (and reports not ready) rather than dying.
///
/// Statements are planned for their actual parameters every time
/// (`plan_cache_mode = force_custom_plan`): the tables start empty and grow
/// fast, and a generic plan cached while they were empty (a sequential scan)
/// would otherwise stay in use long after an index scan became right.
pub fn pool(database: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let options = connect_options(database.url.expose()).context("DATABASE_URL is not a valid Postgres URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(database.pool_size())
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// The connection options of a Postgres URL, with the session settings
/// every connectflow connection uses (see [`pool`]).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_custom_plan")]))
}

/// `options` for a pool that runs only statements whose best plan does not
/// depend on their parameters (a row by primary key): their plans are
/// cached for the session (`plan_cache_mode = auto`: planned for the first
/// five executions, then a generic plan kept while it costs no more),
/// where every other connection plans each statement for its parameters
/// ([`pool`]). Planning the API's lookup against the nine indexes of
/// `customers` cost more than running it.
pub fn cached_plan_options(options: PgConnectOptions) -> PgConnectOptions {
    // Startup options are applied in order: this one overrides the
    // `force_custom_plan` of `connect_options`.
    options.options([("plan_cache_mode", "auto")])
}

/// How far a read replica is behind its primary, in seconds: the age of the
/// last transaction it replayed while it has received WAL it has not
/// replayed yet; 0 when it has replayed everything it received (an idle
/// primary writes no transactions to age by), or when it is not a standby.
pub async fn replica_lag_seconds(replica: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT greatest(0, CASE
            WHEN NOT pg_is_in_recovery() THEN 0
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
        END)::float8 AS "lag!"
        "#
    )
    .fetch_one(replica)
    .await
}

/// Applies every migration not yet applied. Safe to run concurrently from
/// several processes (sqlx takes an advisory lock) and again and again.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")?;
    Ok(())
}

pub mod access_log;
pub mod apply;
pub mod changes;
pub mod erasure;
pub(crate) mod error;
pub mod expiry;
pub(crate) mod export;
pub mod history;
pub mod institutions;
pub mod positions;
pub(crate) mod read;
pub mod reproject;
pub(crate) mod revocations;
pub(crate) mod stats;
pub(crate) mod tokens;
