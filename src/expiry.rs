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

use crate::lifecycle::AuthorizationPolicy;
use crate::store::expiry::announce_lapsed;

/// How often lapsed authorizations are looked for: a lapse is published at
/// most this long after it happened (while a consumer runs).
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The expiry job, built and ready to run.
#[derive(Debug)]
pub struct ExpiryJob {
    pool: PgPool,
    policy: AuthorizationPolicy,
    changes_recorded: Arc<Notify>,
}

impl ExpiryJob {
    /// Announces the lapses of `policy` in `pool`, and notifies
    /// `changes_recorded` (the relay of this process) after announcing any.
    pub fn new(pool: PgPool, policy: AuthorizationPolicy, changes_recorded: Arc<Notify>) -> Self {
        Self { pool, policy, changes_recorded }
    }

    /// Runs until `shutdown`; returns at once when authorizations never
    /// lapse (`CONNECTFLOW_AUTHORIZATION_DAYS=0`).
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { pool, policy, changes_recorded } = self;
        if policy.days() == 0 {
            return;
        }
        loop {
            match announce_lapsed(&pool, policy, Utc::now()).await {
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
