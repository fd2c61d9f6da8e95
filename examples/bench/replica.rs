//! `bench replica` (issue 29): the consumer's throughput while the
//! statistics routes are kept busy, with the API reading from the primary
//! and then from the standby (`CONNECTFLOW_DATABASE_READ_URL`), against the
//! consumer alone. Needs the streaming standby of
//! `PG_REPLICA=1 bash deploy/services.sh up`, or starts a fresh one for the
//! measure (`replica-reset`) and stops it after (`replica-down`); on this
//! machine primary and standby share the same two cores, so the figures show
//! what moving the statistics off the primary's processes is worth, not off
//! its hardware.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::procs::*;
use crate::{SEEDED_DAYS, customer_flows, drain, fill_topic, normalised, seed_customers, service_env};

/// Clients requesting statistics one after another, without pause.
pub const STATS_CLIENTS: usize = 4;

#[derive(Debug, Default)]
pub struct ReplicaFigures {
    pub customers: i64,
    pub events: usize,
    /// Interleaved runs of the three, each figure's runs kept.
    pub runs: usize,
    /// Consumer events applied/s with nothing else running.
    pub alone_per_s: crate::runs::Runs,
    /// ... while the statistics read the primary.
    pub stats_on_primary_per_s: crate::runs::Runs,
    /// ... while the statistics read the standby.
    pub stats_on_replica_per_s: crate::runs::Runs,
    /// Statistics answered/s meanwhile, on the primary and on the standby.
    pub primary_stats_per_s: crate::runs::Runs,
    pub replica_stats_per_s: crate::runs::Runs,
    /// Why the measure did not run.
    pub skipped: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Stats {
    None,
    Primary,
    Replica,
}

/// `bash deploy/services.sh <args>` with the standby's settings (`PG_REPLICA=1`).
fn services(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("bash")
        .arg("deploy/services.sh")
        .args(args)
        .env("PG_REPLICA", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .context("running deploy/services.sh")?;
    anyhow::ensure!(status.success(), "deploy/services.sh {} failed", args.join(" "));
    Ok(())
}

/// The standby's URL for a database on the primary, when a standby replays
/// the primary's WAL on `PG_REPLICA_PORT` (default 5433).
async fn standby_of(database: &str) -> anyhow::Result<String> {
    let port = pg_port("PG_REPLICA_PORT", 5433);
    connect_standby(&database.parse::<PgConnectOptions>()?.port(port), Duration::from_secs(30)).await?;
    with_port(database, port)
}

/// One run: a fresh database with `customers` seeded, the topic filled with
/// `events`, then the consumer drained while the statistics run as `stats`
/// says. Events applied/s, and statistics answered/s.
async fn run(
    customers: i64,
    events: &[connectflow::event::ConnectEvent],
    stats: Stats,
) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let database = fresh_database("replica").await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    connectflow::store::migrate(&pool).await?;
    seed_customers(&pool, customers).await?;
    let (events_topic, dlq_topic) = topics("replica");
    fill_topic(&events_topic, events)?;
    let mut env = service_env(&database, events_topic, dlq_topic);
    env.push(("CONNECTFLOW_NO_MIGRATE", "true".into()));

    // The API, and its statistics load.
    let mut server = None;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    if stats != Stats::None {
        let mut api_env = env.clone();
        api_env.push(("CONNECTFLOW_API_MAX_CONNECTIONS", STATS_CLIENTS.to_string()));
        api_env.push(("CONNECTFLOW_STATS_CACHE_SECONDS", "0".into()));
        if stats == Stats::Replica {
            let standby = standby_of(&database).await?;
            // The standby has the seeded customers before the load starts.
            let mut conn = standby.parse::<PgConnectOptions>()?.connect().await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM customers").fetch_one(&mut conn).await? < customers
            {
                anyhow::ensure!(Instant::now() < deadline, "the standby did not catch up within 60 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            api_env.push(("CONNECTFLOW_DATABASE_READ_URL", standby));
        }
        let addr = free_addr()?;
        server = Some(spawn_connectflow("serve", &api_env, Some(addr))?);
        wait_for(&format!("http://{addr}/livez"), Duration::from_secs(30)).await?;
        let until = chrono::Utc::now() + chrono::Duration::hours(1);
        let since = until - chrono::Duration::days(SEEDED_DAYS + 1);
        let window = format!(
            "since={}&until={}",
            connectflow::event::rfc3339_ms::format(&since),
            connectflow::event::rfc3339_ms::format(&until)
        );
        let paths = [
            format!("/v1/stats/funnel?{window}"),
            format!("/v1/stats/timeseries?{window}&bucket=day"),
            format!("/v1/stats/institutions?{window}&limit=50"),
        ];
        for i in 0..STATS_CLIENTS {
            let (stop, answered) = (stop.clone(), answered.clone());
            let url = format!("http://{addr}{}", paths[i % paths.len()]);
            load.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).bearer_auth(TOKEN).send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
    }

    let metrics_addr = free_addr()?;
    let started = Instant::now();
    let before = answered.load(Ordering::Relaxed);
    let consumer = spawn_connectflow("consume", &env, Some(metrics_addr))?;
    let drained = drain(&consumer, metrics_addr, events.len() as u64).await;
    let stats_per_s = (stats != Stats::None)
        .then(|| (answered.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    consumer.stop();
    if let Some(server) = server {
        server.stop();
    }
    pool.close().await;
    drop_database(&database).await;
    Ok((drained.map(|d| d.applied / d.seconds), stats_per_s))
}

/// The consumer alone, with the statistics on the primary, and with them on
/// the standby, interleaved `runs` times; medians.
pub async fn bench_replica(customers: i64, event_customers: usize, runs: usize) -> ReplicaFigures {
    let events = normalised(&customer_flows(event_customers, 1_000_000));
    let mut figures = ReplicaFigures { customers, events: events.len(), runs, ..ReplicaFigures::default() };
    // A standby of its own, started for this measure alone and stopped
    // after it, unless one runs already: its WAL replay would otherwise take
    // CPU from the measures before it.
    let probe = || async {
        let database = fresh_database("replica_probe").await?;
        let found = standby_of(&database).await;
        drop_database(&database).await;
        found
    };
    let mut started_standby = false;
    if probe().await.is_err() {
        eprintln!("replica: starting a fresh standby (bash deploy/services.sh replica-reset)");
        started_standby = services(&["replica-reset"]).is_ok();
    }
    if let Err(err) = probe().await {
        eprintln!("replica: skipped: {err:#}");
        figures.skipped = Some(format!("{err:#}"));
        if started_standby {
            let _ = services(&["replica-down"]);
        }
        return figures;
    }
    eprintln!("replica: {} events over {event_customers} customers, {customers} customers seeded", events.len());
    let (mut alone, mut primary, mut replica, mut primary_stats, mut replica_stats) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        for stats in [Stats::None, Stats::Primary, Stats::Replica] {
            match run(customers, &events, stats).await {
                Ok((per_s, stats_per_s)) => {
                    let (applied, answered) = match stats {
                        Stats::None => (&mut alone, None),
                        Stats::Primary => (&mut primary, Some(&mut primary_stats)),
                        Stats::Replica => (&mut replica, Some(&mut replica_stats)),
                    };
                    applied.extend(per_s);
                    if let Some(answered) = answered {
                        answered.extend(stats_per_s);
                    }
                }
                Err(err) => eprintln!("replica: a run failed: {err:#}"),
            }
        }
    }
    eprintln!(
        "replica: consumer events/s alone {alone:.0?}, statistics on the primary {primary:.0?}, on the standby {replica:.0?}"
    );
    if started_standby {
        let _ = services(&["replica-down"]);
    }
    figures.alone_per_s = alone.into();
    figures.stats_on_primary_per_s = primary.into();
    figures.stats_on_replica_per_s = replica.into();
    figures.primary_stats_per_s = primary_stats.into();
    figures.replica_stats_per_s = replica_stats.into();
    figures
}
