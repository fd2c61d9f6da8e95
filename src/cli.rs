//! What each subcommand does, wired from the parsed configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tokio_util::sync::CancellationToken;

use crate::app::HttpServer;
use crate::config::{Command, ConfigError, DatabaseArgs, KafkaArgs, MigrationArgs};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::{consume, health, kafka, store};

/// Runs a parsed subcommand until it finishes or a shutdown signal arrives.
/// Configuration errors come back as [`ConfigError`] (exit status 2).
pub async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match command {
        Command::Migrate(args) => {
            let pool = store::pool(&args.database)?;
            migrate(&pool, &args.kafka, &args.migration).await
        }
        Command::Simulate(args) => crate::simulate::run(args, shutdown).await,
        Command::Reproject(args) => {
            let pool = store::pool(&args.database)?;
            store::migrate(&pool).await?;
            let outcome = store::reproject::reproject(&pool, args.customer.as_deref(), args.batch_size).await?;
            tracing::info!(customers = outcome.customers, changed = outcome.changed, "re-projection done");
            println!("re-projected {} customers, {} changed", outcome.customers, outcome.changed);
            Ok(())
        }
        Command::Serve(args) => {
            let settings = args.http.settings()?;
            let (pool, metrics) = prepare(&args.database, &args.kafka, &args.migration).await?;
            let server = HttpServer::bind(settings, &args.kafka, pool, metrics).await?;
            server.run(shutdown).await
        }
        Command::Consume(args) => {
            let (pool, metrics) = prepare(&args.database, &args.kafka, &args.migration).await?;
            let ops = match args.listen {
                Some(listen) => {
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("binding CONNECTFLOW_LISTEN={listen}"))?;
                    let state = Arc::new(health::OpsState {
                        pool: pool.clone(),
                        publisher: Publisher::new(&args.kafka, Duration::from_secs(5))?,
                        metrics: metrics.clone(),
                    });
                    Some(tokio::spawn(health::serve(listener, state, shutdown.clone())))
                }
                None => None,
            };
            let consumed = consume::run(&args.consumer, &args.kafka, pool, metrics, shutdown.clone()).await;
            shutdown.cancel();
            if let Some(ops) = ops {
                ops.await.context("operations endpoints")??;
            }
            consumed
        }
        Command::All(args) => {
            let settings = args.http.settings()?;
            let (pool, metrics) = prepare(&args.database, &args.kafka, &args.migration).await?;
            let server = HttpServer::bind(settings, &args.kafka, pool.clone(), metrics.clone()).await?;
            let consumer = consume::run(&args.consumer, &args.kafka, pool, metrics, shutdown.clone());
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

/// Opens the pool and migrates unless told not to.
async fn prepare(
    database: &DatabaseArgs,
    kafka: &KafkaArgs,
    migration: &MigrationArgs,
) -> anyhow::Result<(sqlx::PgPool, Arc<Metrics>)> {
    let pool = store::pool(database)?;
    if !migration.no_migrate {
        migrate(&pool, kafka, migration).await?;
    }
    Ok((pool, Metrics::new()))
}

/// Database migrations, then the Kafka topics.
pub async fn migrate(pool: &sqlx::PgPool, kafka: &KafkaArgs, migration: &MigrationArgs) -> anyhow::Result<()> {
    store::migrate(pool).await?;
    kafka::ensure_topics(kafka, migration).await?;
    tracing::info!("migrations applied and topics present");
    Ok(())
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
