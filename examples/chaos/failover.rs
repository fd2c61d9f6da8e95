//! The Postgres failover of a chaos run (issue 29): on the standby and proxy
//! of `PG_REPLICA=1 bash deploy/services.sh up`, with asynchronous
//! replication and a loss window made wide on purpose, the primary is killed
//! with `kill -9`, the standby promoted and the proxy (connectflow's
//! `DATABASE_URL`) pointed at it. What the standby never received is
//! measured from the WAL positions, the transaction ids and the events
//! table of the run's database.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::procs::{connect_standby, pg_port, with_port};
use crate::services;

/// The run's database on the primary, on the standby and through the proxy.
pub struct Failover {
    primary: PgConnectOptions,
    standby: PgConnectOptions,
    /// connectflow's `DATABASE_URL` for the run.
    pub proxy_url: String,
}

/// Where a server is: its WAL position, its next transaction id, and how
/// many events the run's database holds.
#[derive(Debug, Clone, Copy)]
struct Position {
    lsn: i64,
    next_xid: i64,
    events: i64,
}

/// What the failover discarded: what the old primary had committed and the
/// promoted standby lacked (at least: the primary was read just before its
/// kill).
#[derive(Debug, Clone, Copy)]
pub struct Discarded {
    pub wal_bytes: i64,
    pub transactions: i64,
    pub events: i64,
    /// From the kill to the proxy pointing at the promoted standby.
    pub switched_after: Duration,
}

impl Discarded {
    pub fn json(&self) -> Value {
        json!({
            "wal_bytes_discarded": self.wal_bytes,
            "transactions_discarded": self.transactions,
            "applied_events_discarded": self.events,
            "proxy_switched_after_ms": self.switched_after.as_millis() as u64,
        })
    }
}

impl Failover {
    /// The standby and proxy of this checkout, when they run and the
    /// standby replays the primary's WAL; `database` is the run's database
    /// on the primary.
    pub async fn detect(database: &str) -> anyhow::Result<Self> {
        let primary = PgConnectOptions::from_str(database)?;
        let standby = primary.clone().port(pg_port("PG_REPLICA_PORT", 5433));
        let proxy = primary.clone().port(pg_port("PG_PROXY_PORT", 5434));
        connect_standby(&standby, Duration::from_secs(15)).await?;
        let mut conn = proxy.connect().await.context("connecting through the proxy")?;
        let through_proxy: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await?;
        anyhow::ensure!(!through_proxy, "the proxy does not lead to the primary");
        let proxy_url = with_port(database, proxy.get_port())?;
        Ok(Self { primary, standby, proxy_url })
    }

    /// Stops the standby receiving WAL, lets the consumers go on applying on
    /// the primary for `window`, then kills the primary, promotes the
    /// standby and switches the proxy to it.
    pub async fn run(&self, window: Duration) -> anyhow::Result<Discarded> {
        services(&["replica-detach"])?;
        tokio::time::sleep(window).await;
        let before = position(&self.primary, "SELECT (pg_current_wal_lsn() - '0/0')::bigint").await?;
        let killed = Instant::now();
        services(&["primary-kill"])?;
        let after = position(&self.standby, "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint").await?;
        services(&["replica-promote"])?;
        let port = self.standby.get_port().to_string();
        services(&["proxy-switch", &port])?;
        Ok(Discarded {
            wal_bytes: before.lsn - after.lsn,
            transactions: before.next_xid - after.next_xid,
            events: before.events - after.events,
            switched_after: killed.elapsed(),
        })
    }

    /// The services as `make chaos` found them: the old primary started
    /// again and the standby cloned from it afresh (what the promoted
    /// standby holds is discarded), the proxy pointing at the primary.
    pub fn restore() -> anyhow::Result<()> {
        services(&["postgres-start"])?;
        services(&["replica-reset"])?;
        Ok(())
    }
}

async fn position(server: &PgConnectOptions, lsn: &'static str) -> anyhow::Result<Position> {
    let mut conn = server.connect().await.context("connecting to read WAL positions")?;
    let lsn: i64 = sqlx::query_scalar(lsn).fetch_one(&mut conn).await?;
    let next_xid: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetch_one(&mut conn).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&mut conn).await?;
    Ok(Position { lsn, next_xid, events })
}
