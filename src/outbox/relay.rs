//! The relay: claims customers with unpublished changes under a lease (a
//! short transaction), publishes their changes in version order with no
//! transaction open, then deletes what Kafka confirmed, parks what the
//! changes topic refuses for good and backs off the customers whose change
//! failed (see [`crate::outbox`] for why it is correct).
//!
//! Its warnings are logged at most once per message per second, each with
//! the count `suppressed` since the previous one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::change::CHANGE_SCHEMA_V1;
use crate::config::KafkaArgs;
use crate::dead_letter::refuses_the_record;
use crate::kafka;
use crate::metrics::{Metrics, ParkedChangeLabels};
use crate::store::changes::{CHANGES_CHANNEL, HandOff};
use crate::store::error::StoreResultExt;
use crate::telemetry::LogLimiter;

use super::RelayError;
use super::handle::{Delivery, HAND_OFFS_QUEUED, RelayHandle};

/// How often the relay looks for unpublished changes without a notification.
pub const SAFETY_POLL: Duration = Duration::from_secs(5);
/// Rounds one relay runs at once: one waiting on Kafka for a customer, and
/// the next wake-up's for the others. Each holds a Postgres connection only
/// while it claims or settles.
const ROUNDS_IN_FLIGHT: usize = 2;
/// Hand-offs one relay publishes at once, besides its claimed rounds (they
/// never share a customer: a customer's changes are handed off only when
/// it has no other change waiting).
const HAND_OFFS_IN_FLIGHT: usize = 4;
/// Longest wait to (re)open the `LISTEN` connection: the rounds in flight
/// wait meanwhile.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Customers claimed per round: many, so that a backlog is published in
/// large Kafka batches and few claim queries.
const CUSTOMERS_PER_CLAIM: i64 = 1000;
/// How often the backlog gauges are measured at most.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(10);
/// Most outbox rows one backlog measurement reads: the gauge stops there.
const BACKLOG_READ_MAX: i64 = 10_000;
/// How long one change may wait for Kafka's confirmation.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for one send's answer: room in the producer's queue,
/// then Kafka's confirmation.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);
/// How long a round starts new sends; the changes it did not reach are
/// released for the next round.
const ROUND_BUDGET: Duration = Duration::from_secs(15);
/// How long a claim holds a customer's changes: longer than a round can
/// take (its budget, then the change in flight: a send, a refused change's
/// send on its own, its dead letter and tombstone), so a lease never runs
/// out under a relay still publishing. A relay that dies leaves its
/// customers waiting this long. The consumer's lanes lease the changes they
/// hand off for as long.
pub const LEASE: Duration = Duration::from_secs(120);
/// A customer's first pause after a change Kafka did not confirm, doubled
/// per failed attempt of that change up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest pause of a customer.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest `dlq_reason` header.
const MAX_REASON_LEN: usize = 512;
/// Outbox rows settled (deleted) after which the relay vacuums the outbox.
/// A queue's rows are dead within seconds, and autovacuum visits a table at
/// most once per `autovacuum_naptime` (a minute by default): at thousands
/// of changes a second the dead rows would make every claim read tens of
/// megabytes of empty pages.
const VACUUM_AFTER_ROWS: u64 = 20_000;
/// The shortest time between two vacuums of the outbox.
const VACUUM_INTERVAL: Duration = Duration::from_secs(5);

/// The relay: a Postgres pool, idempotent producers and the changes topic
/// (one per program when its name has `{program}`).
pub struct Relay {
    pool: PgPool,
    /// The `LISTEN` connection's own pool of one, so that it takes none of
    /// the lanes' connections.
    listen_pool: PgPool,
    producer: FutureProducer,
    /// Sends each record in a batch of its own: the broker refuses a batch
    /// as a whole, so a change refused beside others is tried alone before
    /// it is parked.
    solo: FutureProducer,
    /// Where the changes topics' names come from.
    topic: KafkaArgs,
    metrics: Arc<Metrics>,
    /// How writers wake this relay and hand changes off to it.
    handle: RelayHandle,
    /// The hand-offs' queue, until [`run`](Self::run) takes it.
    hand_offs: std::sync::Mutex<Option<mpsc::Receiver<Delivery>>>,
    /// When the backlog gauges were last measured.
    backlog_measured: std::sync::Mutex<Option<Instant>>,
    /// Outbox rows settled since the last vacuum, and when that was.
    vacuum: Arc<std::sync::Mutex<VacuumDue>>,
    /// Thins the warnings to one per message per second: a Kafka outage
    /// fails every claimed customer's change in each round.
    log_limiter: LogLimiter,
}

/// What decides when the relay vacuums the outbox.
#[derive(Debug, Default)]
struct VacuumDue {
    settled_rows: u64,
    last: Option<Instant>,
    running: bool,
}

/// How a round ends once Kafka confirmed what it could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Delete the confirmed changes, park the refused ones, release the rest.
    Settle,
    /// Leave everything leased, as a relay that died before settling would
    /// (tests).
    CrashBeforeSettle,
}

/// One claimed change.
struct Pending {
    customer_id: String,
    version: i64,
    /// The record; `None` once the customer was erased while the row was
    /// leased (the erasure leaves leased rows to their relay, so that the
    /// erased change and its tombstone cannot overtake a change in flight):
    /// nothing to publish, the row goes.
    change: Option<String>,
    recorded_at: DateTime<Utc>,
    program_id: String,
    /// The customer's erased change: a tombstone follows it, and its row
    /// goes once both are confirmed.
    erasure: bool,
    /// Failed attempts so far (its customer's backoff).
    attempts: i32,
}

/// What publishing one customer's claimed changes came to.
#[derive(Default)]
struct CustomerOutcome<'a> {
    /// Confirmed by Kafka, in version order.
    published: Vec<(&'a str, i64)>,
    /// Refused for good and parked, with the reason.
    parked: Vec<(&'a str, i64, &'static str)>,
    /// The change that failed and how long its customer waits.
    failed: Option<(&'a str, i64, Duration)>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    claimed: usize,
    /// Published or parked: gone from the relay's work.
    done: usize,
    /// The soonest a customer that failed may be tried again.
    retry_in: Option<Duration>,
}

/// What publishing a hand-off came to.
#[derive(Debug, Default, Clone, Copy)]
struct HandedRound {
    /// The soonest a customer that failed may be tried again.
    retry_in: Option<Duration>,
    /// Whether changes may now be claimable that no round will see: some
    /// were released unpublished, or a wake-up came while its customers
    /// were leased.
    claim_again: bool,
}

impl Relay {
    /// Idempotent, `acks=all` producers for the changes topic.
    pub fn new(kafka: &KafkaArgs, pool: PgPool, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let timeout_ms = SEND_TIMEOUT.as_millis().to_string();
        let producer = kafka::producer(
            kafka,
            "lifecycle-change producer",
            &[
                // The claimed customers' changes go out side by side: a few
                // milliseconds of linger and lz4 make them a few large
                // requests instead of one per change (the broker's CPU is
                // most of a change's cost).
                ("linger.ms", "5"),
                ("compression.type", "lz4"),
                ("message.timeout.ms", &timeout_ms),
            ],
        )?;
        let solo = kafka::producer(
            kafka,
            "lifecycle-change producer (one record per batch)",
            &[("linger.ms", "0"), ("batch.num.messages", "1"), ("message.timeout.ms", &timeout_ms)],
        )?;
        // As `PgListener::connect` does, but with the pool's own options.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(LISTEN_CONNECT_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let (sender, hand_offs) = mpsc::channel(HAND_OFFS_QUEUED);
        let handle =
            RelayHandle { wake: Arc::new(Notify::new()), wakes: Arc::new(AtomicU64::new(0)), hand_offs: sender };
        Ok(Self {
            pool,
            listen_pool,
            producer,
            solo,
            topic: kafka.clone(),
            metrics,
            handle,
            hand_offs: std::sync::Mutex::new(Some(hand_offs)),
            backlog_measured: std::sync::Mutex::new(None),
            vacuum: Arc::default(),
            log_limiter: LogLimiter::default(),
        })
    }

    /// A handle that wakes this relay and hands changes off to it: the
    /// consumer's lanes use it for each batch that recorded changes.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Publishes until `shutdown`: every change recorded so far, then each
    /// time a batch announces new ones, a customer's backoff ends or the
    /// safety poll comes round, and every hand-off as it comes. Up to
    /// [`ROUNDS_IN_FLIGHT`] claimed rounds run at once, so a round waiting
    /// on Kafka for one customer does not hold back the next wake-up's
    /// round, which claims the other customers (the leases keep rounds apart
    /// as they keep relays apart), and up to [`HAND_OFFS_IN_FLIGHT`]
    /// hand-offs beside them. Postgres outages are waited out, like the
    /// consumer does; Kafka's failures hold back only the customers whose
    /// changes failed. On shutdown the rounds in flight finish and so do the
    /// hand-offs queued (so their customers are not left leased): the
    /// consumer's lanes have stopped by then.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut hand_offs = self.hand_offs.lock().ok().and_then(|mut queue| queue.take());
        let mut listener: Option<PgListener> = None;
        let mut backoff = Backoff::default();
        let mut rounds = FuturesUnordered::new();
        let mut handed = FuturesUnordered::new();
        // Whether changes may be waiting that no round in flight will see.
        let mut due = true;
        let mut poll_at = tokio::time::Instant::now() + SAFETY_POLL;
        // After a failed round (Postgres away), no round starts before this.
        let mut resume_at = tokio::time::Instant::now();
        loop {
            let stopping = shutdown.is_cancelled();
            if stopping && let Some(queue) = hand_offs.as_mut() {
                // What was queued is still received; then `None`.
                queue.close();
            }
            if stopping && rounds.is_empty() && handed.is_empty() && hand_offs.is_none() {
                return Ok(());
            }
            if listener.is_none() && !stopping {
                listener = self.listen().await;
            }
            if due && !stopping && rounds.len() < ROUNDS_IN_FLIGHT && tokio::time::Instant::now() >= resume_at {
                rounds.push(self.publish_until_idle(&shutdown));
                due = false;
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let receiving = hand_offs.is_some() && handed.len() < HAND_OFFS_IN_FLIGHT;
            let handed_off = async {
                match hand_offs.as_mut() {
                    Some(queue) => queue.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled(), if !stopping => {}
                Some(result) = rounds.next(), if !rounds.is_empty() => {
                    self.round_ended(result.map(|retry_in| (retry_in, false)), &mut backoff, &mut poll_at, &mut resume_at, &mut due).await;
                }
                Some(result) = handed.next(), if !handed.is_empty() => {
                    let result: Result<HandedRound, RelayError> = result;
                    let result = result.map(|ended| (ended.retry_in, ended.claim_again));
                    self.round_ended(result, &mut backoff, &mut poll_at, &mut resume_at, &mut due).await;
                }
                delivery = handed_off, if receiving => match delivery {
                    Some(delivery) => handed.push(self.publish_handed_off(delivery)),
                    // Closed (shutdown) and emptied, or every handle gone.
                    None => hand_offs = None,
                },
                () = self.handle.wake.notified() => due = true,
                ok = notified => {
                    due = true;
                    if !ok {
                        // The listening connection failed: poll until it is back.
                        listener = None;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                () = tokio::time::sleep_until(poll_at) => {
                    due = true;
                    poll_at = tokio::time::Instant::now() + SAFETY_POLL;
                }
            }
        }
    }

    /// What [`run`](Self::run) does when a round (claimed or handed off)
    /// ends: `Ok` with the soonest retry and whether to claim again.
    async fn round_ended(
        &self,
        result: Result<(Option<Duration>, bool), RelayError>,
        backoff: &mut Backoff,
        poll_at: &mut tokio::time::Instant,
        resume_at: &mut tokio::time::Instant,
        due: &mut bool,
    ) {
        let now = tokio::time::Instant::now();
        match result {
            Ok((retry_in, claim_again)) => {
                backoff.reset();
                if let Some(retry_in) = retry_in {
                    *poll_at = (*poll_at).min(now + retry_in);
                }
                *due |= claim_again;
            }
            Err(err) => {
                let pause = backoff.advance();
                if let Some(suppressed) = self.log_limiter.admit("round failed", Instant::now()) {
                    tracing::warn!(error = %err, retry_in = ?pause, suppressed, "publishing lifecycle changes failed; retrying");
                }
                *resume_at = now + pause;
                *poll_at = *resume_at;
            }
        }
        self.export_backlog().await;
        self.vacuum_if_due();
    }

    /// A `LISTEN` on its own connection (not one of the pool's).
    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.listen_pool).await.ok()?;
        listener.listen(CHANGES_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Publishes claimed batches until nothing claimable is left or a round
    /// got nothing through (Kafka away: the customers back off, and the
    /// next wake-up tries again). Returns the soonest a customer that
    /// failed may be tried again.
    pub async fn publish_all(&self) -> Result<Option<Duration>, RelayError> {
        self.publish_until_idle(&CancellationToken::new()).await
    }

    /// [`publish_all`](Self::publish_all), claiming no new batch once
    /// `shutdown` is cancelled.
    async fn publish_until_idle(&self, shutdown: &CancellationToken) -> Result<Option<Duration>, RelayError> {
        let mut retry_in: Option<Duration> = None;
        loop {
            let round = self.publish_batch(End::Settle).await?;
            retry_in = match (retry_in, round.retry_in) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if round.claimed == 0 || round.done == 0 || shutdown.is_cancelled() {
                return Ok(retry_in);
            }
        }
    }

    /// A fault for tests: claims and publishes one batch as
    /// [`publish_all`](Self::publish_all) does, then stops as a relay that
    /// died between Kafka's confirmation and settling would: the rows stay
    /// in the outbox under a lease, here already run out (as it would after
    /// [`LEASE`]) so that the restarted relay takes them at once. Returns
    /// how many changes were published.
    ///
    /// A method of its own, hidden from the documentation, rather than a
    /// flag of the normal path: no production call can ask for a crash, and
    /// the integration tests (another crate, which `cfg(test)` does not
    /// reach) still can.
    #[doc(hidden)]
    pub async fn publish_batch_then_crash_before_mark(&self) -> Result<usize, RelayError> {
        Ok(self.publish_batch(End::CrashBeforeSettle).await?.done)
    }

    /// Claims up to [`CUSTOMERS_PER_CLAIM`] customers' changes, publishes
    /// them in version order and, as `end` says, settles the outcome.
    async fn publish_batch(&self, end: End) -> Result<Round, RelayError> {
        let token = uuid::Uuid::new_v4().to_string();
        let rows = self.claim(&token).await?;
        if rows.is_empty() {
            return Ok(Round::default());
        }
        self.publish_leased(&token, &rows, Instant::now() + ROUND_BUDGET, end).await
    }

    /// Publishes a hand-off: changes a writer of this process leased to
    /// this relay in its own transaction (nothing to claim), settled as a
    /// claimed round is. Sends start until [`ROUND_BUDGET`] after they were
    /// leased: a hand-off that waited longer in the queue is released
    /// unpublished, for a claim, so that no send starts near the end of
    /// its lease.
    async fn publish_handed_off(&self, delivery: Delivery) -> Result<HandedRound, RelayError> {
        let Delivery { hand_off: HandOff { token, leased_at, changes }, wakes_before } = delivery;
        let rows: Vec<Pending> = changes
            .into_iter()
            .map(|c| Pending {
                customer_id: c.customer_id,
                version: c.version,
                change: Some(c.change),
                recorded_at: c.recorded_at,
                program_id: c.program_id,
                erasure: false,
                attempts: 0,
            })
            .collect();
        self.metrics.changes_handed_off.inc_by(rows.len() as u64);
        let round = self.publish_leased(&token, &rows, leased_at + ROUND_BUDGET, End::Settle).await?;
        let released = round.done < round.claimed;
        let woken = self.handle.wakes.load(Ordering::SeqCst) != wakes_before;
        Ok(HandedRound { retry_in: round.retry_in, claim_again: released || woken })
    }

    /// Publishes changes leased under `token`, each customer's in version
    /// order, until `deadline`, and, as `end` says, settles the outcome.
    async fn publish_leased(
        &self,
        token: &str,
        rows: &[Pending],
        deadline: Instant,
        end: End,
    ) -> Result<Round, RelayError> {
        let mut by_customer: BTreeMap<&str, Vec<&Pending>> = BTreeMap::new();
        for row in rows {
            by_customer.entry(row.customer_id.as_str()).or_default().push(row);
        }
        // Customers side by side, each customer's versions one after another.
        let outcomes: Vec<CustomerOutcome<'_>> =
            futures::future::join_all(by_customer.values().map(|changes| self.publish_in_order(changes, deadline)))
                .await;
        let published: usize = outcomes.iter().map(|o| o.published.len()).sum();
        let parked: usize = outcomes.iter().map(|o| o.parked.len()).sum();
        let retry_in = outcomes.iter().filter_map(|o| o.failed.map(|(_, _, wait)| wait)).min();
        let claimed: Vec<String> = by_customer.keys().map(|c| (*c).to_owned()).collect();
        if end == End::CrashBeforeSettle {
            sqlx::query!(
                "UPDATE lifecycle_outbox SET leased_until = now() \
                 WHERE customer_id = ANY($1::text[]) AND lease_token = $2::text::uuid",
                &claimed,
                token
            )
            .execute(&self.pool)
            .await
            .store("letting a lease run out (simulated crash)")?;
            return Ok(Round { claimed: rows.len(), done: published, retry_in });
        }
        let unsettled = rows.len() - published - parked;
        self.settle(token, &claimed, unsettled, &outcomes).await?;
        self.metrics.changes_published.inc_by(published as u64);
        if let Ok(mut vacuum) = self.vacuum.lock() {
            vacuum.settled_rows += published as u64;
        }
        Ok(Round { claimed: rows.len(), done: published + parked, retry_in })
    }

    /// Leases the changes of up to [`CUSTOMERS_PER_CLAIM`] customers that
    /// have none leased and none backing off, in one short transaction, and
    /// returns them in `(customer, version)` order.
    ///
    /// Two relays never lease one customer at once: the claim takes the
    /// customer's advisory lock (`pg_try_advisory_xact_lock` on
    /// `connectflow.relay:<customer>`; a customer another relay is claiming
    /// is skipped, not waited for), and leases all of its unparked rows in a
    /// later statement, which sees what that relay committed.
    async fn claim(&self, token: &str) -> Result<Vec<Pending>, RelayError> {
        let mut tx = self.pool.begin().await.store("beginning a relay claim")?;
        by_key(&mut tx).await?;
        let due: Vec<String> = sqlx::query_scalar!(
            r#"
            SELECT customer_id AS "customer_id!" FROM (
                SELECT customer_id FROM lifecycle_outbox
                WHERE parked_at IS NULL
                GROUP BY customer_id
                HAVING bool_and((leased_until IS NULL OR leased_until < now())
                                AND (not_before IS NULL OR not_before <= now()))
                ORDER BY customer_id
                LIMIT $1
            ) AS due
            WHERE pg_try_advisory_xact_lock(hashtextextended('connectflow.relay:' || customer_id, 0))
            "#,
            CUSTOMERS_PER_CLAIM
        )
        .fetch_all(&mut *tx)
        .await
        .store("finding customers with unpublished changes")?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query_as!(
            Pending,
            r#"
            WITH free AS (
                SELECT customer_id FROM lifecycle_outbox
                WHERE customer_id = ANY($1::text[]) AND parked_at IS NULL
                GROUP BY customer_id
                HAVING bool_and((leased_until IS NULL OR leased_until < now())
                                AND (not_before IS NULL OR not_before <= now()))
            ), leased AS (
                UPDATE lifecycle_outbox o
                SET leased_until = now() + make_interval(secs => $2), lease_token = $3::text::uuid
                FROM free
                WHERE o.customer_id = free.customer_id AND o.parked_at IS NULL
                RETURNING o.customer_id, o.version, o.recorded_at, o.erasure, o.attempts
            )
            SELECT l.customer_id AS "customer_id!", l.version AS "version!", c.change AS "change?",
                   l.recorded_at AS "recorded_at!", l.erasure AS "erasure!", l.attempts AS "attempts!",
                   COALESCE(cu.program_id, e.program_id, 'default') AS "program_id!"
            FROM leased l LEFT JOIN lifecycle_changes c USING (customer_id, version)
                 LEFT JOIN customers cu USING (customer_id)
                 LEFT JOIN erased_customers e USING (customer_id)
            ORDER BY l.customer_id, l.version
            "#,
            &due,
            LEASE.as_secs_f64(),
            token
        )
        .fetch_all(&mut *tx)
        .await
        .store("leasing unpublished changes")?;
        tx.commit().await.store("committing a relay claim")?;
        Ok(rows)
    }

    /// Ends a round in one short transaction, touching only rows still
    /// under this round's lease (`token`): deletes the published changes,
    /// parks the refused ones, backs off the failed ones' customers and
    /// releases the rest.
    ///
    /// `claimed` are the round's customers (each statement finds its rows by
    /// the primary key, not by scanning for the token); `unsettled` counts
    /// the rows neither published nor parked, which are released.
    async fn settle(
        &self,
        token: &str,
        claimed: &[String],
        unsettled: usize,
        outcomes: &[CustomerOutcome<'_>],
    ) -> Result<(), RelayError> {
        let (published_customers, published_versions): (Vec<String>, Vec<i64>) =
            outcomes.iter().flat_map(|o| &o.published).map(|(c, v)| ((*c).to_owned(), *v)).unzip();
        let mut parked = (Vec::new(), Vec::new(), Vec::new());
        for (customer, version, reason) in outcomes.iter().flat_map(|o| &o.parked) {
            parked.0.push((*customer).to_owned());
            parked.1.push(*version);
            parked.2.push((*reason).to_owned());
        }
        let mut failed = (Vec::new(), Vec::new(), Vec::new());
        for (customer, version, wait) in outcomes.iter().filter_map(|o| o.failed) {
            failed.0.push(customer.to_owned());
            failed.1.push(version);
            failed.2.push(wait.as_secs_f64());
        }
        let mut tx = self.pool.begin().await.store("beginning to settle a relay round")?;
        by_key(&mut tx).await?;
        // An erased change's record goes with its outbox row: after it
        // the customer id is in no row but the tombstone.
        sqlx::query!(
            r#"
            WITH confirmed AS (
                -- One key lookup per confirmed change, whatever the
                -- planner believes the outbox holds (see `by_key`): the
                -- subquery cannot be flattened into a join.
                SELECT row.ctid
                FROM UNNEST($1::text[], $2::int8[]) AS p(customer_id, version)
                CROSS JOIN LATERAL (
                    SELECT o.ctid FROM lifecycle_outbox o
                    WHERE o.customer_id = p.customer_id AND o.version = p.version
                      AND o.lease_token = $3::text::uuid
                    OFFSET 0
                ) AS row
            ), published AS (
                DELETE FROM lifecycle_outbox o
                WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM confirmed)) AND o.lease_token = $3::text::uuid
                RETURNING o.customer_id, o.version, o.erasure
            )
            DELETE FROM lifecycle_changes c USING published p
            WHERE p.erasure AND c.customer_id = p.customer_id AND c.version = p.version
            "#,
            &published_customers,
            &published_versions,
            token
        )
        .execute(&mut *tx)
        .await
        .store("deleting published changes")?;
        if !parked.0.is_empty() {
            sqlx::query!(
                r#"
                UPDATE lifecycle_outbox o
                SET parked_at = now(), park_reason = p.reason, leased_until = NULL, lease_token = NULL
                FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS p(customer_id, version, reason)
                WHERE o.customer_id = p.customer_id AND o.version = p.version AND o.lease_token = $4::text::uuid
                "#,
                &parked.0,
                &parked.1,
                &parked.2,
                token
            )
            .execute(&mut *tx)
            .await
            .store("marking refused changes parked")?;
        }
        if !failed.0.is_empty() {
            sqlx::query!(
                r#"
                UPDATE lifecycle_outbox o
                SET attempts = o.attempts + 1, not_before = now() + make_interval(secs => f.wait)
                FROM UNNEST($1::text[], $2::int8[], $3::float8[]) AS f(customer_id, version, wait)
                WHERE o.customer_id = f.customer_id AND o.version = f.version AND o.lease_token = $4::text::uuid
                "#,
                &failed.0,
                &failed.1,
                &failed.2,
                token
            )
            .execute(&mut *tx)
            .await
            .store("backing off customers whose change failed")?;
        }
        if unsettled > 0 {
            sqlx::query!(
                "UPDATE lifecycle_outbox SET leased_until = NULL, lease_token = NULL \
                 WHERE customer_id = ANY($1::text[]) AND lease_token = $2::text::uuid",
                claimed,
                token
            )
            .execute(&mut *tx)
            .await
            .store("releasing the rest of a relay round")?;
        }
        tx.commit().await.store("settling a relay round")?;
        Ok(())
    }

    /// Publishes one customer's changes in version order until `deadline`,
    /// parking those the changes topic refuses for good and stopping at the
    /// first that Kafka does not confirm.
    async fn publish_in_order<'a>(&self, changes: &[&'a Pending], deadline: Instant) -> CustomerOutcome<'a> {
        let mut outcome = CustomerOutcome::default();
        for change in changes {
            if Instant::now() >= deadline {
                // Released with the rest; the next round goes on from here.
                break;
            }
            let Some(value) = change.change.as_deref() else {
                // Erased meanwhile: nothing left to publish; its row goes.
                outcome.published.push((change.customer_id.as_str(), change.version));
                continue;
            };
            let change_id = format!("{}:{}", change.customer_id, change.version);
            let mut sent = self.send(&self.producer, change, value, &change_id).await;
            if let Err(err) = &sent
                && refusal(err).is_some()
            {
                // The broker refuses a batch as a whole, and the batch may
                // hold another customer's record: alone, it is the change's
                // own refusal.
                sent = self.send(&self.solo, change, value, &change_id).await;
            }
            let err = match sent {
                Ok(()) => {
                    let waited = (Utc::now() - change.recorded_at).to_std().unwrap_or_default();
                    self.metrics.change_publish_seconds.observe(waited.as_secs_f64());
                    outcome.published.push((change.customer_id.as_str(), change.version));
                    continue;
                }
                Err(err) => err,
            };
            let parked = match refusal(&err) {
                Some(reason) => self.park(change, value.len(), &change_id, reason, &err).await.map(|()| reason),
                None => Err(err),
            };
            match parked {
                Ok(reason) => outcome.parked.push((change.customer_id.as_str(), change.version, reason)),
                Err(err) => {
                    let wait = retry_after(change.attempts);
                    if let Some(suppressed) = self.log_limiter.admit("change failed", Instant::now()) {
                        tracing::warn!(change_id, error = %err, retry_in = ?wait, suppressed, "publishing a lifecycle change failed; its customer waits");
                    }
                    outcome.failed = Some((change.customer_id.as_str(), change.version, wait));
                    break;
                }
            }
        }
        outcome
    }

    /// Sends a change (and, for an erasure, its tombstone) to its changes
    /// topic with `producer`, returning once Kafka confirmed or refused it.
    async fn send(
        &self,
        producer: &FutureProducer,
        change: &Pending,
        value: &str,
        change_id: &str,
    ) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: "change_id", value: Some(change_id.as_bytes()) })
            .insert(Header { key: "schema", value: Some(CHANGE_SCHEMA_V1.as_bytes()) })
            .insert(Header { key: "program", value: Some(change.program_id.as_bytes()) });
        let topic = self.topic.changes_topic_for(&change.program_id);
        let record =
            FutureRecord::to(&topic).key(change.customer_id.as_bytes()).payload(value.as_bytes()).headers(headers);
        deliver(producer, record).await?;
        if change.erasure {
            self.send_tombstone(producer, change, &topic).await?;
        }
        Ok(())
    }

    /// The tombstone: the key with a null value, after the erased change
    /// (the same partition, in order), with only the `program` header.
    async fn send_tombstone(&self, producer: &FutureProducer, change: &Pending, topic: &str) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new_with_capacity(1)
            .insert(Header { key: "program", value: Some(change.program_id.as_bytes()) });
        let tombstone = FutureRecord::<[u8], [u8]>::to(topic).key(change.customer_id.as_bytes()).headers(headers);
        deliver(producer, tombstone).await
    }

    /// Parks a change the changes topic refused for good: a record on the
    /// dead-letter topic with no value (the topic did not take it; it stays
    /// in `lifecycle_changes`) and headers naming it and the reason, in the
    /// shape of the consumer's metadata-only dead letters, so `dlq replay`
    /// leaves it alone. An erased change's tombstone still follows.
    async fn park(
        &self,
        change: &Pending,
        size: usize,
        change_id: &str,
        reason: &'static str,
        err: &KafkaError,
    ) -> Result<(), KafkaError> {
        let topic = self.topic.changes_topic_for(&change.program_id);
        let mut detail = format!("the changes topic refused the change ({reason}): {err}");
        if detail.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let version = change.version.to_string();
        let size = size.to_string();
        let pairs: [(&str, &str); 8] = [
            ("dlq_reason", &detail),
            ("dlq_source_topic", &topic),
            ("dlq_change_id", change_id),
            ("dlq_customer_id", &change.customer_id),
            ("dlq_change_version", &version),
            ("dlq_original_size", &size),
            ("dlq_metadata_only", "true"),
            ("program", &change.program_id),
        ];
        let headers = pairs.iter().fold(OwnedHeaders::new_with_capacity(pairs.len()), |headers, (key, value)| {
            headers.insert(Header { key, value: Some(value.as_bytes()) })
        });
        let record =
            FutureRecord::<[u8], [u8]>::to(&self.topic.dlq_topic).key(change.customer_id.as_bytes()).headers(headers);
        deliver(&self.producer, record).await?;
        if change.erasure {
            self.send_tombstone(&self.producer, change, &topic).await?;
        }
        tracing::warn!(change_id, reason, error = %err, "the changes topic refused a lifecycle change for good; parked it, the customer's next changes follow");
        self.metrics.changes_parked.get_or_create(&ParkedChangeLabels { reason }).inc();
        self.metrics.dead_letters.inc();
        Ok(())
    }

    /// Sets the backlog gauges at most once per [`BACKLOG_INTERVAL`]:
    /// unparked changes waiting (leased, backing off or not yet claimed) and
    /// the oldest one's age, from at most [`BACKLOG_READ_MAX`] rows, so that
    /// a large backlog costs no more to measure than a small one. Past that
    /// the gauge reads [`BACKLOG_READ_MAX`] ("at least"), and the age is of
    /// the rows read (Postgres reads the table in storage order, about the
    /// order rows were written: nearly the oldest).
    /// Vacuums and analyzes the outbox in the background once
    /// [`VACUUM_AFTER_ROWS`] rows were settled since the last time, at most
    /// every [`VACUUM_INTERVAL`] (one at a time; `SKIP_LOCKED`, so a
    /// migration holding the table is not waited for). The rounds go on
    /// meanwhile: a vacuum does not block inserts, updates or deletes. The
    /// statistics matter as much as the space: a queue's change faster than
    /// autovacuum's analyze follows, and with a table believed to hold a few
    /// rows the planner settles a round by comparing every row with every
    /// other (a nested loop over a sequential scan) instead of by the key.
    fn vacuum_if_due(&self) {
        let now = Instant::now();
        {
            let Ok(mut due) = self.vacuum.lock() else { return };
            if due.running
                || due.settled_rows < VACUUM_AFTER_ROWS
                || due.last.is_some_and(|at| now.duration_since(at) < VACUUM_INTERVAL)
            {
                return;
            }
            due.running = true;
            due.settled_rows = 0;
            due.last = Some(now);
        }
        let pool = self.pool.clone();
        let state = self.vacuum.clone();
        tokio::spawn(async move {
            let result = sqlx::raw_sql("VACUUM (SKIP_LOCKED, ANALYZE) lifecycle_outbox").execute(&pool).await;
            match result {
                Ok(_) => tracing::debug!(took = ?now.elapsed(), "outbox vacuumed"),
                // Autovacuum still runs; only the claims are slower meanwhile.
                Err(err) => tracing::warn!(error = %err, "vacuuming the outbox failed"),
            }
            if let Ok(mut due) = state.lock() {
                due.running = false;
            }
        });
    }

    async fn export_backlog(&self) {
        let started = Instant::now();
        {
            let Ok(mut last) = self.backlog_measured.lock() else { return };
            if last.is_some_and(|at| started.duration_since(at) < BACKLOG_INTERVAL) {
                return;
            }
            *last = Some(started);
        }
        let row = sqlx::query!(
            r#"
            SELECT count(*) AS "waiting!", min(recorded_at) AS oldest FROM (
                SELECT recorded_at FROM lifecycle_outbox WHERE parked_at IS NULL LIMIT $1
            ) AS read
            "#,
            BACKLOG_READ_MAX
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok(row) = row {
            self.metrics.changes_waiting.set(row.waiting);
            let age = row.oldest.map_or(0.0, |at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0);
            self.metrics.changes_oldest_waiting_seconds.set(age);
        }
        tracing::trace!(took = ?started.elapsed(), "outbox backlog measured");
    }
}

/// Has the rest of `tx` find outbox rows by their key, never by a
/// sequential scan. The outbox is a queue: its statistics never match what
/// it holds (it empties and fills between two analyzes), and a planner that
/// believes a round's lease token matches one row settles a round of 2,600
/// changes by comparing each row with each other (a nested loop over a
/// sequential scan: measured at 1.6 s) instead of 2,600 key lookups.
async fn by_key(tx: &mut sqlx::PgConnection) -> Result<(), RelayError> {
    sqlx::query("SET LOCAL enable_seqscan = off").execute(tx).await.store("planning by the outbox's key")?;
    Ok(())
}

/// Sends `record` and waits for Kafka's answer, at most [`DELIVERY_WAIT`]:
/// librdkafka's own message timeout does not end the wait for a record whose
/// topic it never learns of (a program's topic before `migrate` created it),
/// and a round that never ends would outlive its lease. A record given up on
/// may still be delivered later: at worst a duplicate (the change is sent
/// again, after it, in the same partition), never a later version first.
async fn deliver<K, P>(producer: &FutureProducer, record: FutureRecord<'_, K, P>) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    match tokio::time::timeout(DELIVERY_WAIT, producer.send(record, Timeout::After(SEND_TIMEOUT))).await {
        Ok(sent) => sent.map(|_| ()).map_err(|(err, _)| err),
        Err(_) => Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)),
    }
}

/// Why the changes topic refuses a change for good, as the parked-changes
/// metric's label; `None` when trying again may work. The dead letters'
/// classification, less the refusals of the topic itself (missing, not
/// authorised): those would park every change of the topic, and an operator
/// fixes them, so the customers wait instead.
fn refusal(err: &KafkaError) -> Option<&'static str> {
    if !refuses_the_record(err) {
        return None;
    }
    match err {
        KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => None,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            Some("too_large")
        }
        _ => Some("invalid"),
    }
}

/// How long a customer waits after its change failed `attempts` times
/// before (this failure not counted): [`RETRY_FIRST`], doubling, at most
/// [`RETRY_MAX`].
fn retry_after(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts).unwrap_or(0).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_waits_longer_after_each_failure_up_to_the_cap() {
        assert_eq!(retry_after(0), RETRY_FIRST);
        assert_eq!(retry_after(1), RETRY_FIRST * 2);
        assert_eq!(retry_after(3), RETRY_FIRST * 8);
        assert_eq!(retry_after(40), RETRY_MAX);
        assert_eq!(retry_after(-1), RETRY_FIRST);
    }

    #[test]
    fn only_refusals_of_the_change_itself_park_it() {
        let refused = |code| refusal(&KafkaError::MessageProduction(code));
        assert_eq!(refused(RDKafkaErrorCode::MessageSizeTooLarge), Some("too_large"));
        assert_eq!(refused(RDKafkaErrorCode::InvalidRecord), Some("invalid"));
        assert_eq!(refused(RDKafkaErrorCode::MessageTimedOut), None);
        assert_eq!(refused(RDKafkaErrorCode::UnknownTopicOrPartition), None);
        assert_eq!(refused(RDKafkaErrorCode::TopicAuthorizationFailed), None);
    }

    #[test]
    fn a_lease_outlasts_the_longest_round() {
        // The budget, then four sends of the change in flight.
        assert!(ROUND_BUDGET + DELIVERY_WAIT * 4 < LEASE);
    }
}
