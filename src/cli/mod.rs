//! What each subcommand does, wired from the parsed configuration: the
//! command line ([`command`]) and the processes it runs, each composed of
//! the rooms it needs.

mod audit;
mod command;
mod tokens;

pub use audit::AuditArgs;
pub use command::{Cli, Command, one_line_error};
pub use tokens::{IssueArgs, ListArgs, RevokeArgs, TokensCommand};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::HttpServer;
use crate::config::{
    ConfigError, ConsumerArgs, DEFAULT_MAX_CONNECTIONS, DatabaseArgs, DlqCommand, KafkaArgs, MigrationArgs,
};
use crate::consume::LifecycleConsumer;
use crate::event::CustomerId;
use crate::expiry::ExpiryJob;
use crate::health::consumer::ConsumerHealth;
use crate::health::{OpsState, ReadinessCache};
use crate::history::HistoryJob;
use crate::institution_health::InstitutionHealthJob;
use crate::metrics::Metrics;
use crate::outbox::Relay;
use crate::program::{Programs, Secrets};
use crate::publish::Publisher;
use crate::retention::{PruneJob, Pruned};
use crate::{kafka, store};

/// Runs a parsed subcommand until it finishes or a shutdown signal arrives.
/// Configuration errors come back as [`ConfigError`] (exit status 2).
pub async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match command {
        Command::Migrate(args) => {
            let programs = args.programs.load(Default::default(), Secrets::NotNeeded)?;
            let pool = store::pool(&args.database)?;
            for warning in migrate(&pool, &args.kafka, &args.migration, &programs).await? {
                println!("warning: {warning}");
            }
            Ok(())
        }
        Command::Simulate(args) => crate::simulate::run(args, shutdown).await,
        Command::Tokens(command) => tokens::run(command).await,
        Command::Audit(args) => audit::run(&args).await,
        Command::Dlq(DlqCommand::Replay(args)) => {
            let outcome = crate::dead_letter::replay::Replay {
                reason_contains: args.reason_contains.as_deref(),
                dry_run: args.dry_run,
                from_beginning: args.from_beginning,
            }
            .run(&args.kafka)
            .await?;
            let verb = if args.dry_run { "would replay" } else { "replayed" };
            println!(
                "read {} parked records: {verb} {}, {} filtered out, {} metadata only",
                outcome.read, outcome.replayed, outcome.filtered_out, outcome.metadata_only
            );
            Ok(())
        }
        Command::Reproject(args) => {
            let pool = store::pool(&args.database)?;
            store::migrate(&pool).await?;
            if args.check {
                return check_projection(&pool, args.customer.as_ref(), args.batch_size).await;
            }
            let outcome = store::reproject::reproject(&pool, args.customer.as_ref(), args.batch_size).await?;
            tracing::info!(customers = outcome.customers, changed = outcome.changed, "re-projection done");
            println!("re-projected {} customers, {} changed", outcome.customers, outcome.changed);
            Ok(())
        }
        Command::Serve(args) => {
            let settings = args.http.settings(&args.lifecycle)?;
            let (pool, metrics) = prepare(&args.database, &args.kafka, &args.migration, &settings.programs).await?;
            let server = HttpServer::bind(settings, &args.kafka, pool, metrics, None).await?;
            server.run(shutdown).await
        }
        Command::Consume(args) => {
            let programs = args.lifecycle.programs(Secrets::NotNeeded)?;
            let database = args.database.sized_for(&args.consumer, 0)?;
            let (pool, metrics) = prepare(&database, &args.kafka, &args.migration, &programs).await?;
            let process =
                ConsumeProcess::build(&args.consumer, &args.kafka, args.listen, pool, metrics, Arc::new(programs))
                    .await?;
            process.run(shutdown).await
        }
        Command::All(args) => {
            let settings = args.http.settings(&args.lifecycle)?;
            let database = args.database.sized_for(&args.consumer, DEFAULT_MAX_CONNECTIONS)?;
            let (pool, metrics) = prepare(&database, &args.kafka, &args.migration, &settings.programs).await?;
            let consumer = ConsumeProcess::build(
                &args.consumer,
                &args.kafka,
                None,
                pool.clone(),
                metrics.clone(),
                settings.programs.clone(),
            )
            .await?;
            let server = HttpServer::bind(settings, &args.kafka, pool, metrics, Some(consumer.health())).await?;
            let consumer = consumer.run(shutdown.clone());
            // If either half fails, stop the other too.
            let stop_on_error = |result: anyhow::Result<()>| {
                if result.is_err() {
                    shutdown.cancel();
                }
                result
            };
            let (served, consumed) = tokio::join!(async { stop_on_error(server.run(shutdown.clone()).await) }, async {
                stop_on_error(consumer.await)
            });
            served.and(consumed)
        }
    }
}

/// What `connectflow consume` runs (and `all`, beside the HTTP server): the
/// lifecycle consumer, the outbox relay its lanes wake, the authorization
/// expiry job, the institution health job, the access log's pruning, the erasure records' purging, the
/// history retention job, and the operations listener when
/// given an address. Each part lives in its own room; this only puts them
/// together, built once from the configuration, and stops them together.
pub struct ConsumeProcess {
    consumer: LifecycleConsumer,
    relay: Relay,
    expiry: ExpiryJob,
    institutions: InstitutionHealthJob,
    prune: PruneJob,
    purge: PruneJob,
    history: HistoryJob,
    ops: Option<(TcpListener, Arc<OpsState>)>,
}

impl std::fmt::Debug for ConsumeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeProcess").field("consumer", &self.consumer).finish_non_exhaustive()
    }
}

impl ConsumeProcess {
    /// Builds every part and (when `listen` is given) binds the operations
    /// listener (`/livez`, `/readyz`, `/metrics`). `programs` give the
    /// periods the expiry job announces lapses by; `args.health` its beat
    /// and the warnings before a lapse, and the institution health job's
    /// settings.
    pub async fn build(
        args: &ConsumerArgs,
        kafka: &KafkaArgs,
        listen: Option<SocketAddr>,
        pool: PgPool,
        metrics: Arc<Metrics>,
        programs: Arc<Programs>,
    ) -> anyhow::Result<Self> {
        metrics.consumer_stall_seconds.set(i64::try_from(args.stall_seconds).unwrap_or(i64::MAX));
        let relay = Relay::new(kafka, pool.clone(), metrics.clone())?;
        let consumer = LifecycleConsumer::build(args, kafka, pool.clone(), metrics.clone(), relay.handle()).await?;
        let expiry =
            ExpiryJob::new(pool.clone(), programs, relay.handle(), args.health.authorization_warn_days.clone());
        let institutions = InstitutionHealthJob::new(kafka, pool.clone(), &args.health, metrics.clone())?;
        let prune = PruneJob::new(pool.clone(), Pruned::AccessLog, args.audit_retention_days, metrics.clone());
        let purge = PruneJob::new(pool.clone(), Pruned::ErasureRecords, args.erasure_record_days, metrics.clone());
        let history = HistoryJob::new(pool.clone(), args.history_retention_days, metrics.clone());
        let ops = match listen {
            Some(listen) => {
                let listener =
                    TcpListener::bind(listen).await.with_context(|| format!("binding CONNECTFLOW_LISTEN={listen}"))?;
                let state = Arc::new(OpsState {
                    pool,
                    replica: None,
                    publisher: Publisher::new(kafka, Duration::from_secs(5))?,
                    metrics,
                    consumer: Some(consumer.health()),
                    readiness_needs_postgres: true,
                    readiness: ReadinessCache::default(),
                });
                Some((listener, state))
            }
            None => None,
        };
        Ok(Self { consumer, relay, expiry, institutions, prune, purge, history, ops })
    }

    /// The consumer's lanes' health, for a `/livez` served elsewhere
    /// (`connectflow all`).
    pub fn health(&self) -> Arc<ConsumerHealth> {
        self.consumer.health()
    }

    /// The operations listener's address, when there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Runs every part until `shutdown` is cancelled or the consumer fails
    /// for good; then stops the others, once the consumer has committed its
    /// offsets.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { consumer, relay, expiry, institutions, prune, purge, history, ops } = self;
        let stop = shutdown.child_token();
        // Dropping this future (a caller that gave up on it) stops every part.
        let _stop_on_drop = stop.clone().drop_guard();
        let ops_task = ops.map(|(listener, state)| tokio::spawn(crate::health::serve(listener, state, stop.clone())));
        let beat_task = tokio::spawn(health_beat(expiry, institutions, stop.clone()));
        let prune_task = tokio::spawn(prune.run(stop.clone()));
        let purge_task = tokio::spawn(purge.run(stop.clone()));
        let history_task = tokio::spawn(history.run(stop.clone()));
        let relay_task = tokio::spawn(relay.run(stop.clone()));
        let consumed = consumer.run(stop.clone()).await;
        stop.cancel();
        relay_task.await.context("the lifecycle-change relay")??;
        beat_task.await.context("the health beat (authorization expiry, institution health)")?;
        prune_task.await.context("the access-log pruning job")?;
        purge_task.await.context("the erasure records' purging job")?;
        history_task.await.context("the history retention job")?;
        if let Some(ops) = ops_task {
            ops.await.context("operations endpoints")??;
        }
        consumed
    }
}

/// The health beat of `consume`: at start and then every
/// `CONNECTFLOW_HEALTH_INTERVAL_SECONDS`, the lapses and warnings of the
/// authorizations, then the institutions' evaluation, one after the other
/// (so the two share one of the connections beside the lanes), until
/// `shutdown`.
async fn health_beat(expiry: ExpiryJob, institutions: InstitutionHealthJob, shutdown: CancellationToken) {
    loop {
        let now = chrono::Utc::now();
        expiry.round(now).await;
        institutions.beat_logged(now).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(institutions.interval()) => {}
        }
    }
}

/// `reproject --check`: lists every customer whose stored lifecycle is not
/// the fold of their recorded events; an error (exit status 1) when any is.
async fn check_projection(pool: &sqlx::PgPool, customer: Option<&CustomerId>, batch: i64) -> anyhow::Result<()> {
    let outcome = store::reproject::audit(pool, customer, batch).await?;
    for id in &outcome.differing {
        println!("differs: customer {id}");
    }
    println!("checked {} customers, {} differ", outcome.customers, outcome.differing.len());
    if outcome.differing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} stored lifecycles differ from their recorded events (run `connectflow reproject` to repair)",
            outcome.differing.len()
        )
    }
}

/// Opens the pool and migrates unless told not to.
async fn prepare(
    database: &DatabaseArgs,
    kafka: &KafkaArgs,
    migration: &MigrationArgs,
    programs: &Programs,
) -> anyhow::Result<(sqlx::PgPool, Arc<Metrics>)> {
    let pool = store::pool(database)?;
    if !migration.no_migrate {
        migrate(&pool, kafka, migration, programs).await?;
    }
    Ok((pool, Metrics::new()))
}

/// Database migrations, then the Kafka topics (a changes topic per program
/// when `CONNECTFLOW_CHANGES_TOPIC` has `{program}`). Returns how existing
/// topics fall short of the configured settings (also logged as warnings).
pub async fn migrate(
    pool: &sqlx::PgPool,
    kafka: &KafkaArgs,
    migration: &MigrationArgs,
    programs: &Programs,
) -> anyhow::Result<Vec<String>> {
    store::migrate(pool).await?;
    let warnings = kafka::ensure_topics(kafka, migration, programs).await?;
    tracing::info!(warnings = warnings.len(), "migrations applied and topics present");
    Ok(warnings)
}

/// Cancels `token` on Ctrl-C or SIGTERM (Kubernetes' stop signal).
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// Maps an error from [`run`] to the process exit status: 2 for
/// configuration errors, 1 for anything else.
pub fn exit_status(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ConfigError>().is_some() { 2 } else { 1 }
}

/// Context helper so `main` stays thin.
pub fn describe(err: &anyhow::Error) -> String {
    match err.downcast_ref::<ConfigError>() {
        Some(config) => format!("error: {config}"),
        None => format!("error: {err:#}"),
    }
}
