//! The lifecycle consumer (work in progress: see issue 4).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerArgs, KafkaArgs};
use crate::metrics::Metrics;

/// Runs the consumer until `shutdown`.
pub async fn run(
    _consumer: &ConsumerArgs,
    _kafka: &KafkaArgs,
    _pool: sqlx::PgPool,
    _metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the lifecycle consumer is not built yet");
    #[allow(unreachable_code)]
    {
        shutdown.cancelled().await;
        Ok(())
    }
}
