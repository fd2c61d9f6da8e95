//! The job that publishes a lifecycle change when a customer's authorization
//! lapses, and the warnings before it does ([`crate::store::expiry`]): on
//! the health beat of every `consume` process (at start, then every
//! `CONNECTFLOW_HEALTH_INTERVAL_SECONDS`, before the institutions'
//! evaluation); several processes may run it at once, and each lapse and
//! each warning is announced once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::config::WarnDays;
use crate::outbox::RelayHandle;
use crate::program::Programs;
use crate::store::error::StoreError;
use crate::store::expiry::{Customers, announce_expiring_of, announce_lapsed_of};

/// The expiry job, built and ready to run.
#[derive(Debug)]
pub struct ExpiryJob {
    pool: PgPool,
    programs: Arc<Programs>,
    changes_recorded: RelayHandle,
    warn_days: WarnDays,
}

impl ExpiryJob {
    /// Announces, each [`round`](Self::round), the lapses of each program's
    /// period in `pool` and the warnings `warn_days` before them, and
    /// notifies `changes_recorded` (the relay of this process) after
    /// announcing any. Run every `CONNECTFLOW_HEALTH_INTERVAL_SECONDS`, a
    /// lapse or a warning is published at most that long after it is due
    /// (while a consumer runs).
    pub fn new(pool: PgPool, programs: Arc<Programs>, changes_recorded: RelayHandle, warn_days: WarnDays) -> Self {
        Self { pool, programs, changes_recorded, warn_days }
    }

    /// One round at `now`: the lapses, then the warnings; nothing when
    /// authorizations never lapse (`CONNECTFLOW_AUTHORIZATION_DAYS=0` and no
    /// program with a period of its own), as nothing is then ever warned
    /// about either. Failures are logged and retried at the next round, like
    /// the consumer waits out Postgres. `consume` runs it on the health beat
    /// (`crate::cli`), before the institutions' evaluation.
    pub async fn round(&self, now: DateTime<Utc>) {
        let Self { pool, programs, changes_recorded, warn_days } = self;
        let lapse = |policy: crate::lifecycle::AuthorizationPolicy| policy.days() > 0;
        if !programs.iter().any(|p| lapse(p.authorization)) && !lapse(programs.default_authorization()) {
            return;
        }
        let mut recorded = false;
        // Lapses first: an authorization that lapsed is past warning.
        match lapse_round(pool, programs, now).await {
            Ok(0) => {}
            Ok(announced) => {
                tracing::info!(announced, "lapsed authorizations announced");
                recorded = true;
            }
            Err(err) => tracing::warn!(error = %err, "looking for lapsed authorizations failed"),
        }
        match warning_round(pool, programs, warn_days.days(), now).await {
            Ok(0) => {}
            Ok(announced) => {
                tracing::info!(announced, "expiry warnings announced");
                recorded = true;
            }
            Err(err) => tracing::warn!(error = %err, "looking for lapsing authorizations failed"),
        }
        if recorded {
            changes_recorded.wake();
        }
    }
}

/// One pass over every program's customers with the program's period, then
/// over the customers of programs no longer declared with the default one.
async fn lapse_round(pool: &PgPool, programs: &Programs, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut announced = 0;
    for program in programs.iter() {
        announced += announce_lapsed_of(pool, Customers::Of(&program.id), program.authorization, now).await?;
    }
    let declared: Vec<&str> = programs.iter().map(|p| p.id.as_str()).collect();
    announced += announce_lapsed_of(pool, Customers::NoneOf(&declared), programs.default_authorization(), now).await?;
    Ok(announced)
}

/// The same passes for the warnings at `thresholds` (none: nothing to do).
async fn warning_round(
    pool: &PgPool,
    programs: &Programs,
    thresholds: &[u32],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    if thresholds.is_empty() {
        return Ok(0);
    }
    let mut announced = 0;
    for program in programs.iter() {
        announced +=
            announce_expiring_of(pool, Customers::Of(&program.id), program.authorization, thresholds, now).await?;
    }
    let declared: Vec<&str> = programs.iter().map(|p| p.id.as_str()).collect();
    announced +=
        announce_expiring_of(pool, Customers::NoneOf(&declared), programs.default_authorization(), thresholds, now)
            .await?;
    Ok(announced)
}
