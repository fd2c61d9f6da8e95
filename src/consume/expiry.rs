//! The job inside `consume` that publishes a lifecycle change when a
//! customer's authorization lapses ([`crate::store::expiry`]): at start,
//! then every [`INTERVAL`]. Several `consume` processes may run it at once;
//! each lapse is announced once.

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

/// Runs until `shutdown`; wakes the relay after announcing anything.
pub async fn run(pool: PgPool, policy: AuthorizationPolicy, relay: Arc<Notify>, shutdown: CancellationToken) {
    if policy.days() == 0 {
        return;
    }
    loop {
        match announce_lapsed(&pool, policy, Utc::now()).await {
            Ok(0) => {}
            Ok(announced) => {
                tracing::info!(announced, "lapsed authorizations announced");
                relay.notify_one();
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
