//! Postgres: the pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseArgs;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Opens a pool. Connections are made on demand, so a process whose
/// database is down still starts (and reports not ready) rather than dying.
pub fn pool(database: &DatabaseArgs) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(database.url.expose())
        .context("DATABASE_URL is not a valid Postgres URL")
}

/// Applies every migration not yet applied. Safe to run concurrently from
/// several processes (sqlx takes an advisory lock) and again and again.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")?;
    Ok(())
}

pub mod apply;
pub mod read;
pub mod reproject;
