//! The job that publishes a lifecycle change when a customer's authorization
//! lapses ([`crate::store::expiry`]): at start, then every [`INTERVAL`]. It
//! runs in every `consume` process, beside the consumer; several may run it
//! at once, and each lapse is announced once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::program::Programs;
use crate::store::error::StoreError;
use crate::store::expiry::{Customers, announce_lapsed_of};

/// How often lapsed authorizations are looked for: a lapse is published at
/// most this long after it happened (while a consumer runs).
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The expiry job, built and ready to run.
#[derive(Debug)]
pub struct ExpiryJob {
    pool: PgPool,
    programs: Arc<Programs>,
    changes_recorded: Arc<Notify>,
}

impl ExpiryJob {
    /// Announces the lapses of each program's period in `pool`, and notifies
    /// `changes_recorded` (the relay of this process) after announcing any.
    pub fn new(pool: PgPool, programs: Arc<Programs>, changes_recorded: Arc<Notify>) -> Self {
        Self { pool, programs, changes_recorded }
    }

    /// Runs until `shutdown`; returns at once when authorizations never
    /// lapse (`CONNECTFLOW_AUTHORIZATION_DAYS=0` and no program with a
    /// period of its own).
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { pool, programs, changes_recorded } = self;
        let lapse = |policy: crate::lifecycle::AuthorizationPolicy| policy.days() > 0;
        if !programs.iter().any(|p| lapse(p.authorization)) && !lapse(programs.default_authorization()) {
            return;
        }
        loop {
            match announce_round(&pool, &programs).await {
                Ok(0) => {}
                Ok(announced) => {
                    tracing::info!(announced, "lapsed authorizations announced");
                    changes_recorded.notify_one();
                }
                // Retried at the next round, like the consumer waits out Postgres.
                Err(err) => tracing::warn!(error = %err, "looking for lapsed authorizations failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }
}

/// One pass over every program's customers with the program's period, then
/// over the customers of programs no longer declared with the default one.
async fn announce_round(pool: &PgPool, programs: &Programs) -> Result<usize, StoreError> {
    let now = Utc::now();
    let mut announced = 0;
    for program in programs.iter() {
        announced += announce_lapsed_of(pool, Customers::Of(&program.id), program.authorization, now).await?;
    }
    let declared: Vec<&str> = programs.iter().map(|p| p.id.as_str()).collect();
    announced += announce_lapsed_of(pool, Customers::NoneOf(&declared), programs.default_authorization(), now).await?;
    Ok(announced)
}
