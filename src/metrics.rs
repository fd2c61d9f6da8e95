//! Prometheus metrics, served on `GET /metrics`.
//!
//! One [`Metrics`] per process (not a global), so tests can start several
//! apps side by side and read each one's figures.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of the webhook counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// A known Finicity event type, `other` for unknown ones (bounded
    /// cardinality), `unknown` when the request never got that far.
    pub event_type: &'static str,
    /// `accepted`, `pong`, or the error code answered.
    pub outcome: &'static str,
}

/// Labels of the suppressed-events counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuppressedLabels {
    /// Why: `erased` (the event occurred at or before its customer's
    /// erasure).
    pub reason: &'static str,
}

/// Labels of the shed-webhooks counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// The limit that shed it: `concurrency`
    /// (`CONNECTFLOW_MAX_CONCURRENT_WEBHOOKS`) or `body_bytes`
    /// (`CONNECTFLOW_MAX_INFLIGHT_BODY_BYTES`).
    pub reason: &'static str,
}

/// Labels of the parked-changes counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParkedChangeLabels {
    /// Why the changes topic refused it: `too_large` or `invalid`.
    pub reason: &'static str,
}

/// Labels per Kafka partition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// Labels of the institutions gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstitutionStatusLabels {
    /// `unknown`, `healthy`, `degraded` or `down`.
    pub status: &'static str,
}

/// Labels of the API's request-duration histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// The route's template (`/v1/customers/{customer_id}`), never the
    /// path asked for: bounded by the routes, and no customer id in a label.
    pub route: String,
    /// The answer's status class: `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
}

/// Labels per consumer lane.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    /// The lane's index.
    pub lane: u32,
}

/// Every metric connectflow exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Webhooks answered, by event type and outcome.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Webhooks answered 503 before their body was kept, by the receiver
    /// limit that shed them (also counted in `webhooks` as `unavailable`).
    pub webhooks_shed: Family<ShedLabels, Counter>,
    /// Webhooks whose signature was missing, malformed or wrong.
    pub signature_failures: Counter,
    /// Seconds from sending a record to Kafka's confirmation.
    pub publish_seconds: Histogram,
    /// Webhook requests being handled now.
    pub webhooks_in_flight: Gauge,
    /// Connections open on this process's listener.
    pub connections_open: Gauge,
    /// Connections closed unread because the listener had its most open.
    pub connections_refused: Counter,
    /// Events recorded and applied by the consumer.
    pub events_applied: Counter,
    /// Events skipped because their id was already recorded.
    pub duplicates_skipped: Counter,
    /// Customers recomputed from their whole history (late events, reproject).
    pub recomputations: Counter,
    /// Records sent to the dead-letter topic.
    pub dead_letters: Counter,
    /// Of those, records parked as metadata only (the topic refused the
    /// original).
    pub dead_letters_metadata_only: Counter,
    /// Records Postgres refused alone, found by splitting their batch, and
    /// parked.
    pub isolated_records: Counter,
    /// Records parked as `newer_schema`: written by a newer connectflow than
    /// this consumer (a rolling upgrade in progress).
    pub newer_schema_parked: Counter,
    /// Lanes stalled now because a customer's stored state is in the way (a
    /// lifecycle of a newer version, a history that does not decode); the
    /// customer is named in the error log, not here (docs/privacy.md).
    pub stalled_on_stored_state: Gauge,
    /// `/v1` requests refused (503) because the access log's queue was full.
    pub access_log_rejected: Counter,
    /// Access-log records written to Postgres.
    pub access_log_written: Counter,
    /// Events parked because their customer belongs to another program
    /// (`program_conflict`).
    pub program_conflicts: Counter,
    /// Events dropped before storage, by reason (`erased`).
    pub events_suppressed: Family<SuppressedLabels, Counter>,
    /// Customers erased by the consumer.
    pub customers_erased: Counter,
    /// Erasure records (tombstones) purged at the end of their time.
    pub erasure_records_purged: Counter,
    /// Queued records dropped unapplied because their partition was revoked
    /// (the new owner reads them).
    pub records_dropped_on_revoke: Counter,
    /// Per lane, the age in seconds of the oldest record it holds unapplied.
    pub oldest_unapplied_seconds: Family<LaneLabels, Gauge<f64, AtomicU64>>,
    /// Events whose `webhookData` was dropped for its size.
    pub webhook_data_dropped: Counter,
    /// Lifecycle changes published to the changes topic (and marked).
    pub changes_published: Counter,
    /// Lifecycle changes the consumer's lanes handed off to their relay
    /// already leased (published without a claim).
    pub changes_handed_off: Counter,
    /// Seconds from a change's recording to Kafka's confirmation of it.
    pub change_publish_seconds: Histogram,
    /// Lifecycle changes recorded but not published yet.
    pub changes_waiting: Gauge,
    /// Lifecycle changes the changes topic refused for good, parked on the
    /// dead-letter topic, by reason.
    pub changes_parked: Family<ParkedChangeLabels, Counter>,
    /// Age in seconds of the oldest change not published yet.
    pub changes_oldest_waiting_seconds: Gauge<f64, AtomicU64>,
    /// Records per applied batch.
    pub batch_size: Histogram,
    /// Seconds to apply one batch (transaction included).
    pub batch_seconds: Histogram,
    /// Consumer lag per partition (high watermark minus next offset).
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Events folded into history snapshots and deleted (history retention).
    pub history_events_folded: Counter,
    /// Published lifecycle changes deleted for their age (history retention).
    pub history_changes_pruned: Counter,
    /// How far the read replica (`CONNECTFLOW_DATABASE_READ_URL`) is behind
    /// its primary, in seconds; 0 when it has replayed all it received or
    /// is not in recovery. Only set by a process with a read replica.
    pub replica_lag_seconds: Gauge<f64, AtomicU64>,
    /// Partitions read again from the position stored in Postgres because
    /// it was behind what the consumer had applied (a failover lost
    /// transactions).
    pub rewinds: Counter,
    /// Institutions per health status, as the latest evaluation left them
    /// (every `consume` process reads them each beat).
    pub institutions: Family<InstitutionStatusLabels, Gauge>,
    /// Institution status changes published to the institutions topic.
    pub institution_changes_published: Counter,
    /// 1 while the process is ready (what `/readyz` answers: Kafka, and for
    /// a consumer Postgres, answer), 0 while not; refreshed at each scrape.
    pub ready: Gauge,
    /// 1 once the idempotent producer has failed fatally (it refuses every
    /// write until the process restarts), else 0; refreshed at each scrape.
    pub producer_fatal: Gauge,
    /// `CONNECTFLOW_CONSUMER_STALL_SECONDS` of this consumer (0 in a process
    /// without one): the stall alert compares the lanes' oldest unapplied
    /// record with it.
    pub consumer_stall_seconds: Gauge,
    /// Seconds to answer a `/v1` request (bearer check, access log and
    /// handler), by route and status class.
    pub api_request_seconds: Family<ApiRequestLabels, Histogram>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("connectflow");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register("webhooks", "Webhooks answered, by event type and outcome", webhooks.clone());
        let webhooks_shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "webhooks_shed",
            "Webhooks answered 503 for a receiver limit (count or body bytes), by reason",
            webhooks_shed.clone(),
        );
        let signature_failures = Counter::default();
        registry.register(
            "webhook_signature_failures",
            "Webhooks with a missing, malformed or wrong signature",
            signature_failures.clone(),
        );
        let publish_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "publish_seconds",
            "Time from sending a record to Kafka's confirmation",
            publish_seconds.clone(),
        );
        let webhooks_in_flight = Gauge::default();
        registry.register("webhooks_in_flight", "Webhook requests being handled", webhooks_in_flight.clone());
        let connections_open = Gauge::default();
        registry.register("connections_open", "Connections open on the listener", connections_open.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed unread because the listener had its most open",
            connections_refused.clone(),
        );
        let events_applied = Counter::default();
        registry.register("events_applied", "Events recorded and applied to the lifecycle", events_applied.clone());
        let duplicates_skipped = Counter::default();
        registry.register(
            "duplicates_skipped",
            "Events skipped because their id was already recorded",
            duplicates_skipped.clone(),
        );
        let recomputations = Counter::default();
        registry.register(
            "recomputations",
            "Customers recomputed from their whole event history",
            recomputations.clone(),
        );
        let dead_letters = Counter::default();
        registry.register("dead_letters", "Records sent to the dead-letter topic", dead_letters.clone());
        let dead_letters_metadata_only = Counter::default();
        registry.register(
            "dead_letters_metadata_only",
            "Records parked as metadata only because the dead-letter topic refused the original",
            dead_letters_metadata_only.clone(),
        );
        let isolated_records = Counter::default();
        registry.register(
            "consumer_isolated_records",
            "Records Postgres refused alone, isolated by splitting their batch, and parked",
            isolated_records.clone(),
        );
        let newer_schema_parked = Counter::default();
        registry.register(
            "consumer_newer_schema_parked",
            "Records parked as newer_schema: written by a newer connectflow, applied by dlq replay after the upgrade",
            newer_schema_parked.clone(),
        );
        let stalled_on_stored_state = Gauge::default();
        registry.register(
            "consumer_stalled_on_stored_state",
            "Consumer lanes stalled now because a customer's stored state is in the way (the customer is in the error log)",
            stalled_on_stored_state.clone(),
        );
        let access_log_rejected = Counter::default();
        registry.register(
            "access_log_rejected",
            "/v1 requests refused with 503 because the access log's queue was full (fail closed)",
            access_log_rejected.clone(),
        );
        let access_log_written = Counter::default();
        registry.register("access_log_written", "Access-log records written to Postgres", access_log_written.clone());
        let program_conflicts = Counter::default();
        registry.register(
            "consumer_program_conflicts",
            "Events parked because their customer belongs to another program (program_conflict)",
            program_conflicts.clone(),
        );
        let events_suppressed = Family::<SuppressedLabels, Counter>::default();
        registry.register(
            "events_suppressed",
            "Events dropped before storage, by reason (erased: it occurred at or before its customer's erasure)",
            events_suppressed.clone(),
        );
        let customers_erased = Counter::default();
        registry.register("customers_erased", "Customers erased by the consumer", customers_erased.clone());
        let erasure_records_purged = Counter::default();
        registry.register(
            "erasure_records_purged",
            "Erasure records (tombstones) purged after CONNECTFLOW_ERASURE_RECORD_DAYS",
            erasure_records_purged.clone(),
        );
        let records_dropped_on_revoke = Counter::default();
        registry.register(
            "consumer_records_dropped_on_revoke",
            "Queued records dropped unapplied because their partition was revoked",
            records_dropped_on_revoke.clone(),
        );
        let oldest_unapplied_seconds = Family::<LaneLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "consumer_oldest_unapplied_seconds",
            "Per lane, age of the oldest record held but not applied yet",
            oldest_unapplied_seconds.clone(),
        );
        let webhook_data_dropped = Counter::default();
        registry.register(
            "webhook_data_dropped",
            "Events whose webhookData was dropped for its size",
            webhook_data_dropped.clone(),
        );
        let changes_published = Counter::default();
        registry.register(
            "lifecycle_changes_published",
            "Lifecycle changes published to the changes topic",
            changes_published.clone(),
        );
        let changes_handed_off = Counter::default();
        registry.register(
            "lifecycle_changes_handed_off",
            "Lifecycle changes handed off to the relay already leased, published without a claim",
            changes_handed_off.clone(),
        );
        let change_publish_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "lifecycle_change_publish_seconds",
            "Time from a change's recording to Kafka's confirmation of it",
            change_publish_seconds.clone(),
        );
        let changes_waiting = Gauge::default();
        registry.register("lifecycle_changes_waiting", "Lifecycle changes not published yet", changes_waiting.clone());
        let changes_parked = Family::<ParkedChangeLabels, Counter>::default();
        registry.register(
            "lifecycle_changes_parked",
            "Lifecycle changes the changes topic refused for good, parked on the dead-letter topic",
            changes_parked.clone(),
        );
        let changes_oldest_waiting_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lifecycle_changes_oldest_waiting_seconds",
            "Age of the oldest lifecycle change not published yet",
            changes_oldest_waiting_seconds.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("consumer_batch_size", "Records per applied batch", batch_size.clone());
        let batch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("consumer_batch_seconds", "Time to apply one batch", batch_seconds.clone());
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register("consumer_lag", "Records behind the high watermark, per partition", consumer_lag.clone());
        let history_events_folded = Counter::default();
        registry.register(
            "history_events_folded",
            "Events older than the history retention folded into snapshots and deleted",
            history_events_folded.clone(),
        );
        let history_changes_pruned = Counter::default();
        registry.register(
            "history_changes_pruned",
            "Published lifecycle changes older than the history retention deleted",
            history_changes_pruned.clone(),
        );
        let replica_lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "database_replica_lag_seconds",
            "How far the read replica is behind its primary (0 when caught up or not a standby)",
            replica_lag_seconds.clone(),
        );
        let rewinds = Counter::default();
        registry.register(
            "consumer_rewinds",
            "Partitions read again from the position stored in Postgres after it lost applied transactions (a failover)",
            rewinds.clone(),
        );
        let institutions = Family::<InstitutionStatusLabels, Gauge>::default();
        registry.register(
            "institutions",
            "Institutions per health status, as the latest evaluation left them",
            institutions.clone(),
        );
        let institution_changes_published = Counter::default();
        registry.register(
            "institution_changes_published",
            "Institution status changes published to the institutions topic",
            institution_changes_published.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the process is ready (Kafka, and for a consumer Postgres, answer), else 0",
            ready.clone(),
        );
        let producer_fatal = Gauge::default();
        registry.register(
            "producer_fatal",
            "1 once the idempotent Kafka producer failed fatally (restart the process), else 0",
            producer_fatal.clone(),
        );
        let consumer_stall_seconds = Gauge::default();
        registry.register(
            "consumer_stall_seconds",
            "The consumer's CONNECTFLOW_CONSUMER_STALL_SECONDS (0 without a consumer)",
            consumer_stall_seconds.clone(),
        );
        let api_request_seconds = Family::<ApiRequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "api_request_seconds",
            "Time to answer a /v1 request (bearer check, access log, handler), by route and status class",
            api_request_seconds.clone(),
        );
        // Counters with a known, bounded set of labels start at 0, so that
        // `increase()` sees their first step (a series born at 1 shows no
        // increase) and dashboards show a zero rather than nothing.
        for reason in ["concurrency", "body_bytes"] {
            let _ = webhooks_shed.get_or_create(&ShedLabels { reason });
        }
        let _ = events_suppressed.get_or_create(&SuppressedLabels { reason: "erased" });
        for reason in ["too_large", "invalid"] {
            let _ = changes_parked.get_or_create(&ParkedChangeLabels { reason });
        }
        Arc::new(Self {
            registry,
            webhooks,
            webhooks_shed,
            signature_failures,
            publish_seconds,
            webhooks_in_flight,
            connections_open,
            connections_refused,
            events_applied,
            duplicates_skipped,
            recomputations,
            dead_letters,
            dead_letters_metadata_only,
            isolated_records,
            newer_schema_parked,
            stalled_on_stored_state,
            program_conflicts,
            events_suppressed,
            customers_erased,
            erasure_records_purged,
            access_log_rejected,
            access_log_written,
            records_dropped_on_revoke,
            oldest_unapplied_seconds,
            webhook_data_dropped,
            changes_published,
            changes_handed_off,
            change_publish_seconds,
            changes_waiting,
            changes_parked,
            changes_oldest_waiting_seconds,
            batch_size,
            batch_seconds,
            consumer_lag,
            history_events_folded,
            history_changes_pruned,
            replica_lag_seconds,
            rewinds,
            institutions,
            institution_changes_published,
            ready,
            producer_fatal,
            consumer_stall_seconds,
            api_request_seconds,
        })
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
