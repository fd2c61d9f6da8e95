//! `simulate --verify-changes`: the lifecycle-change topic read back and
//! each simulated customer's records checked against the `version` the query
//! API shows, and against the states its flow ends in.
//!
//! What a subscriber is promised (docs/event-schema.md, the relay in
//! [`crate::outbox`]): a customer's records are in one partition, in
//! version order 1, 2, 3, ..., never with a gap. A relay that dies between
//! Kafka's confirmation and its commit leaves the versions unmarked, and the
//! next relay publishes them again, from the first unmarked one on: so a
//! record may *repeat* an earlier version (the same `change_id`, the same
//! content), but no record ever skips ahead of the one before it. After a
//! Postgres failover that lost published changes, their events are applied
//! again and the changes recorded again: a repeat then differs in
//! `recorded_at` alone (counted as re-recorded; docs/event-schema.md,
//! "After a Postgres failover").
//!
//! [`ChangesReader`] reads the topic (blocking: from `spawn_blocking`);
//! [`TopicAudit`] is the pure check of one customer's records, which
//! `make chaos` uses on the whole topic as well.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use tokio_util::sync::CancellationToken;

use super::summary::{ChangesVerification, Mismatch};
use crate::change::{CHANGE_SCHEMA_V1, ChangeReason, LifecycleChange};
use crate::config::KafkaArgs;
use crate::kafka::TopicReader;

/// How long a metadata or watermark request may take.
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two reads of the topic while the relays catch up.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Problems listed per customer at most (the count says the rest).
const PROBLEMS_SHOWN: usize = 5;

/// One record of the changes topic, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key (the customer id), if it has one.
    pub key: Option<String>,
    /// Its `change_id` header.
    pub change_id_header: Option<String>,
    /// Its `schema` header.
    pub schema_header: Option<String>,
    /// Its value, or why it is not a change record; for a tombstone, why
    /// too (see `tombstone`).
    pub change: Result<LifecycleChange, String>,
    /// Whether it is a tombstone: a null value, which follows a customer's
    /// erased change (`after: null`).
    pub tombstone: bool,
}

impl ChangeRecord {
    fn from_message(message: &impl Message) -> Self {
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            })
        };
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            change_id_header: header("change_id"),
            schema_header: header("schema"),
            change: serde_json::from_slice(message.payload().unwrap_or_default()).map_err(|err| err.to_string()),
            tombstone: message.payload().is_none(),
        }
    }
}

/// Reads every partition of the changes topic from its beginning, in steps:
/// each [`read_to_end`](Self::read_to_end) goes on from where the previous
/// one stopped, up to the partitions' high watermarks at that moment
/// ([`TopicReader`]). Blocking: call it from `spawn_blocking`.
pub struct ChangesReader(TopicReader);

impl ChangesReader {
    /// A reader of `kafka.changes_topic` (with the operator's extra Kafka
    /// properties: TLS, SASL). Commits nothing: it joins no group.
    pub fn new(kafka: &KafkaArgs) -> anyhow::Result<Self> {
        let group = format!("connectflow-changes-reader-{}", uuid::Uuid::new_v4().simple());
        let reader = TopicReader::new(kafka, &kafka.changes_topic, &group, "changes topic", KAFKA_REQUEST_TIMEOUT)?;
        Ok(Self(reader))
    }

    /// Reads on up to every partition's high watermark as of now, returning
    /// the records whose key `keep` accepts, in partition order; an error
    /// when that takes longer than `within`.
    pub fn read_to_end(
        &mut self,
        within: Duration,
        keep: impl Fn(Option<&str>) -> bool,
    ) -> anyhow::Result<Vec<ChangeRecord>> {
        let mut records = Vec::new();
        self.0.read_to_end(within, |message| {
            if keep(message.key().map(|k| std::str::from_utf8(k).unwrap_or_default())) {
                records.push(ChangeRecord::from_message(&message));
            }
        })?;
        Ok(records)
    }
}

/// What one customer's records on the changes topic show, taken in
/// partition order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicAudit {
    /// The customer's records.
    pub records: u64,
    /// Records that repeat a change already seen (a relay crashed between
    /// Kafka's confirmation and its commit): allowed, subscribers
    /// de-duplicate by `change_id`.
    pub duplicates: u64,
    /// Runs of versions recorded again after a Postgres failover lost the
    /// first ones: each starts with a repeated version recorded later than
    /// every record before it, and replaces the versions from there on
    /// (whose steps may be grouped otherwise). Also repeats that differ
    /// from the original in a later `recorded_at` alone.
    pub rerecorded: u64,
    /// Tombstones (null values) seen, each right after an erased change.
    pub tombstones: u64,
    /// The highest version seen; 0 when none.
    pub highest: i64,
    /// Broken promises found in the records alone: a malformed record, a
    /// version ahead of the one due, a repeat that differs from the
    /// original, records in two partitions.
    pub problems: Vec<String>,
    /// The first copy of every version seen.
    seen: BTreeMap<i64, LifecycleChange>,
}

impl TopicAudit {
    /// Audits `customer_id`'s records, given in the order of their partition.
    pub fn of<'a>(customer_id: &str, records: impl IntoIterator<Item = &'a ChangeRecord>) -> Self {
        let mut audit = Self::default();
        let mut partition = None;
        // The version of the record before, 0 before the first.
        let mut previous = 0;
        // The latest `recorded_at` of the records before.
        let mut latest_recorded = None;
        for record in records {
            audit.records += 1;
            let at = format!("partition {} offset {}", record.partition, record.offset);
            match partition {
                None => partition = Some(record.partition),
                Some(first) if first != record.partition => {
                    audit.problems.push(format!("{at}: in partition {} as well as {first}", record.partition));
                }
                Some(_) => {}
            }
            if record.tombstone {
                audit.tombstones += 1;
                if audit.seen.get(&previous).is_none_or(|change| change.after.is_some()) {
                    audit.problems.push(format!("{at}: a tombstone after version {previous}, not after an erasure"));
                }
                continue;
            }
            let change = match &record.change {
                Ok(change) => change,
                Err(why) => {
                    audit.problems.push(format!("{at}: not a change record: {why}"));
                    continue;
                }
            };
            for problem in Self::malformed(customer_id, record, change) {
                audit.problems.push(format!("{at}: {problem}"));
            }
            let version = change.version;
            if version < 1 {
                audit.problems.push(format!("{at}: version {version}"));
                continue;
            }
            // An erasure drops the changes not published yet: its version
            // may follow a gap.
            if version > previous + 1 && change.reason != Some(ChangeReason::Erased) {
                // A relay publishes a customer's unmarked versions one after
                // another from the first: it never skips, even when it
                // starts again after a crash.
                audit.problems.push(format!("{at}: version {version} follows version {previous}"));
            }
            let recorded_later = latest_recorded.is_some_and(|latest| change.recorded_at > latest);
            latest_recorded = latest_recorded.max(Some(change.recorded_at));
            if version <= previous && recorded_later {
                // Recorded again after a Postgres failover lost the versions
                // from this one on: a new run, whose steps may be grouped
                // otherwise than the lost ones (docs/event-schema.md).
                audit.duplicates += 1;
                audit.rerecorded += 1;
                audit.seen.retain(|&v, _| v < version);
                audit.seen.insert(version, change.clone());
                audit.highest = version;
                previous = version;
                continue;
            }
            match audit.seen.get(&version) {
                None => {
                    audit.seen.insert(version, change.clone());
                    audit.highest = audit.highest.max(version);
                }
                Some(original) => {
                    audit.duplicates += 1;
                    let rerecorded = LifecycleChange { recorded_at: change.recorded_at, ..original.clone() };
                    if original == change {
                        // A relay's crash replay.
                    } else if original.recorded_at < change.recorded_at && rerecorded == *change {
                        audit.rerecorded += 1;
                    } else {
                        audit.problems.push(format!("{at}: version {version} published again with other content"));
                    }
                }
            }
            previous = version;
        }
        audit
    }

    /// What is wrong with `record` whatever its place: the key, the ids
    /// and the schema, in the value and in the headers.
    fn malformed(customer_id: &str, record: &ChangeRecord, change: &LifecycleChange) -> Vec<String> {
        let mut problems = Vec::new();
        let change_id = format!("{customer_id}:{}", change.version);
        if record.key.as_deref() != Some(customer_id) || change.customer_id != customer_id {
            problems.push(format!("key {:?}, customer_id {:?}", record.key, change.customer_id));
        }
        if change.change_id != change_id {
            problems.push(format!("change_id {:?}, expected {change_id:?}", change.change_id));
        }
        if record.change_id_header.as_deref() != Some(change.change_id.as_str()) {
            problems.push(format!("change_id header {:?}, value {:?}", record.change_id_header, change.change_id));
        }
        if change.schema != CHANGE_SCHEMA_V1 || record.schema_header.as_deref() != Some(CHANGE_SCHEMA_V1) {
            problems.push(format!("schema {:?}, schema header {:?}", change.schema, record.schema_header));
        }
        problems
    }

    /// The change of the highest version seen (its first copy).
    pub fn last(&self) -> Option<&LifecycleChange> {
        self.seen.get(&self.highest)
    }

    /// Whether the topic has caught up with `version` (more reading cannot
    /// change the verdict).
    pub fn caught_up(&self, version: i64) -> bool {
        self.highest >= version
    }

    /// Every broken promise when the customer is at `version`: those of
    /// [`problems`](Self::problems), the versions of 1..=`version` missing
    /// (a gap, or the end not published) and any above it.
    pub fn problems_at(&self, version: i64) -> Vec<String> {
        let mut problems = self.problems.clone();
        let missing: Vec<i64> = (1..=version).filter(|v| !self.seen.contains_key(v)).collect();
        if !missing.is_empty() {
            problems.push(format!("versions {} of 1..={version} missing", ranges(&missing)));
        }
        let beyond: Vec<i64> = self.seen.range(version.saturating_add(1)..).map(|(v, _)| *v).collect();
        if !beyond.is_empty() {
            problems.push(format!("versions {} beyond the customer's version {version}", ranges(&beyond)));
        }
        problems
    }
}

/// `1-3, 5, 7-8`.
fn ranges(versions: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = versions.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(", ")
}

/// What one simulated customer's changes should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesExpectation {
    /// The customer.
    pub customer_id: String,
    /// Its flow's name.
    pub flow: &'static str,
    /// The consent state its flow ends in.
    pub consent: &'static str,
    /// The authentication state its flow ends in.
    pub authentication: &'static str,
    /// Its `version` as the query API shows it, once every event applied;
    /// `None` when the API has no such field (a release before the changes
    /// topic).
    pub version: Option<i64>,
}

impl ChangesExpectation {
    /// `None` when `audit` shows versions 1..=`version` exactly, in order,
    /// duplicates allowed, and the highest one ends in the flow's states;
    /// else what differs.
    pub fn compare(&self, audit: &TopicAudit) -> Option<String> {
        let Some(version) = self.version else {
            return Some("the query API shows no lifecycle version".to_owned());
        };
        let mut problems = audit.problems_at(version);
        let shown = problems.len().min(PROBLEMS_SHOWN);
        let more = problems.len() - shown;
        problems.truncate(shown);
        if more > 0 {
            problems.push(format!("{more} more"));
        }
        match audit.last() {
            Some(last) if audit.highest == version => {
                let Some(after) = &last.after else {
                    problems.push("the last change erased the customer".to_owned());
                    return Some(problems.join("; "));
                };
                let (consent, authentication) = (after.consent.state.as_str(), after.authentication.state.as_str());
                if consent != self.consent {
                    problems.push(format!("last change's consent {consent} (expected {})", self.consent));
                }
                if authentication != self.authentication {
                    problems.push(format!(
                        "last change's authentication {authentication} (expected {})",
                        self.authentication
                    ));
                }
            }
            Some(_) => {}
            None if version == 0 => problems.push("no change recorded (lifecycle version 0)".to_owned()),
            None => {}
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Reads the changes topic until every customer's records reach the version
/// expected, `timeout` passes or `shutdown` is cancelled, and compares.
pub async fn verify_changes(
    kafka: &KafkaArgs,
    expectations: Vec<ChangesExpectation>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> ChangesVerification {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut verification = ChangesVerification {
        topic: kafka.changes_topic.clone(),
        checked: expectations.len() as u64,
        ..ChangesVerification::default()
    };
    let wanted: Arc<HashSet<String>> = Arc::new(expectations.iter().map(|e| e.customer_id.clone()).collect());
    let mut by_customer: HashMap<String, Vec<ChangeRecord>> = HashMap::new();
    let kafka = kafka.clone();
    let mut reader = match tokio::task::spawn_blocking(move || ChangesReader::new(&kafka)).await {
        Ok(Ok(reader)) => reader,
        Ok(Err(err)) => return verification.failed(format!("{err:#}"), started),
        Err(err) => return verification.failed(format!("reading the changes topic: {err}"), started),
    };
    loop {
        let within = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let wanted_here = wanted.clone();
        let step = tokio::task::spawn_blocking(move || {
            let records = reader.read_to_end(within, |key| key.is_some_and(|k| wanted_here.contains(k)));
            (reader, records)
        })
        .await;
        let records = match step {
            Ok((back, Ok(records))) => {
                reader = back;
                records
            }
            Ok((_, Err(err))) => return verification.failed(format!("{err:#}"), started),
            Err(err) => return verification.failed(format!("reading the changes topic: {err}"), started),
        };
        for record in records {
            if let Some(key) = &record.key {
                by_customer.entry(key.clone()).or_default().push(record);
            }
        }
        let caught_up = expectations.iter().all(|e| {
            let records = by_customer.get(&e.customer_id).map_or(&[][..], Vec::as_slice);
            e.version.is_none_or(|version| TopicAudit::of(&e.customer_id, records).caught_up(version))
        });
        if caught_up || Instant::now() >= deadline {
            break;
        }
        if shutdown.run_until_cancelled(tokio::time::sleep(POLL_INTERVAL)).await.is_none() {
            verification.interrupted = true;
            break;
        }
    }
    for expectation in &expectations {
        let records = by_customer.get(&expectation.customer_id).map_or(&[][..], Vec::as_slice);
        let audit = TopicAudit::of(&expectation.customer_id, records);
        verification.records += audit.records;
        verification.duplicates += audit.duplicates;
        verification.rerecorded += audit.rerecorded;
        match expectation.compare(&audit) {
            None => verification.matched += 1,
            Some(problem) => verification.mismatches.push(Mismatch {
                customer_id: expectation.customer_id.clone(),
                flow: expectation.flow,
                problem,
            }),
        }
    }
    verification.mismatches.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    verification.elapsed = started.elapsed();
    verification
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::lifecycle::{AuthState, ConsentState, Lifecycle, VisibleLifecycle};

    const CUSTOMER: &str = "5000000001";

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_764_000_000_000).expect("a time")
    }

    /// Version `version` of the customer's changes, ending in `consent` and
    /// `authentication`.
    fn change(version: i64, consent: ConsentState, authentication: AuthState) -> LifecycleChange {
        let mut after = VisibleLifecycle::from(&Lifecycle::default());
        after.consent.state = consent;
        after.authentication.state = authentication;
        LifecycleChange {
            schema: CHANGE_SCHEMA_V1.to_owned(),
            change_id: format!("{CUSTOMER}:{version}"),
            customer_id: CUSTOMER.to_owned(),
            program_id: Default::default(),
            version,
            before: None,
            after: Some(after),
            changed: Vec::new(),
            caused_by: Vec::new(),
            recomputed: false,
            occurred_at: at(),
            recorded_at: at(),
            reason: None,
            days_left: None,
            expires_at: None,
        }
    }

    /// Records of the given versions, at consecutive offsets of partition 2;
    /// the last ends granted and authenticated, the others in progress.
    fn records(versions: &[i64]) -> Vec<ChangeRecord> {
        let last = versions.iter().copied().max().unwrap_or_default();
        versions
            .iter()
            .enumerate()
            .map(|(offset, &version)| {
                let change = if version == last {
                    change(version, ConsentState::Granted, AuthState::Authenticated)
                } else {
                    change(version, ConsentState::None, AuthState::InProgress)
                };
                record(offset as i64, change)
            })
            .collect()
    }

    fn record(offset: i64, change: LifecycleChange) -> ChangeRecord {
        ChangeRecord {
            partition: 2,
            offset,
            key: Some(CUSTOMER.to_owned()),
            change_id_header: Some(change.change_id.clone()),
            schema_header: Some(CHANGE_SCHEMA_V1.to_owned()),
            change: Ok(change),
            tombstone: false,
        }
    }

    fn expectation(version: i64) -> ChangesExpectation {
        ChangesExpectation {
            customer_id: CUSTOMER.to_owned(),
            flow: "legacy-success",
            consent: "granted",
            authentication: "authenticated",
            version: Some(version),
        }
    }

    fn compare(versions: &[i64], version: i64) -> Option<String> {
        expectation(version).compare(&TopicAudit::of(CUSTOMER, &records(versions)))
    }

    #[test]
    fn every_version_in_order_ending_in_the_flows_states_matches() {
        assert_eq!(compare(&[1, 2, 3], 3), None);
        let audit = TopicAudit::of(CUSTOMER, &records(&[1, 2, 3]));
        assert_eq!((audit.records, audit.duplicates, audit.highest), (3, 0, 3));
    }

    #[test]
    fn a_gap_is_named_even_when_the_end_is_there() {
        let problem = compare(&[1, 3], 3).expect("a gap");
        assert!(problem.contains("version 3 follows version 1"), "{problem}");
        assert!(problem.contains("versions 2 of 1..=3 missing"), "{problem}");
    }

    #[test]
    fn versions_not_yet_published_or_beyond_the_lifecycle_fail() {
        let problem = compare(&[1, 2], 4).expect("the end is missing");
        assert!(problem.contains("versions 3-4 of 1..=4 missing"), "{problem}");
        assert!(!TopicAudit::of(CUSTOMER, &records(&[1, 2])).caught_up(4));
        let problem = compare(&[1, 2, 3], 2).expect("an extra version");
        assert!(problem.contains("versions 3 beyond the customer's version 2"), "{problem}");
        assert_eq!(compare(&[], 1).expect("nothing published"), "versions 1 of 1..=1 missing");
    }

    #[test]
    fn a_republished_run_is_counted_as_duplicates_and_allowed() {
        // A relay published 2 and 3, died before its commit; the next one
        // published 2, 3 and 4.
        assert_eq!(compare(&[1, 2, 3, 2, 3, 4], 4), None);
        let audit = TopicAudit::of(CUSTOMER, &records(&[1, 2, 3, 2, 3, 4]));
        assert_eq!((audit.records, audit.duplicates, audit.highest), (6, 2, 4));
    }

    #[test]
    fn a_repeat_that_skips_ahead_or_differs_is_refused() {
        let problem = compare(&[1, 2, 3, 1, 3], 3).expect("a repeat that skips 2");
        assert!(problem.contains("offset 4: version 3 follows version 1"), "{problem}");
        let mut recs = records(&[1, 2]);
        recs.push(record(2, change(1, ConsentState::Revoked, AuthState::Failed)));
        let problem = expectation(2).compare(&TopicAudit::of(CUSTOMER, &recs)).expect("a different repeat");
        assert!(problem.contains("version 1 published again with other content"), "{problem}");
    }

    #[test]
    fn changes_recorded_again_after_a_failover_start_a_new_run() {
        let mut recs = records(&[1, 2]);
        let mut again = change(1, ConsentState::None, AuthState::InProgress);
        again.recorded_at = at() + chrono::Duration::seconds(5);
        recs.push(record(2, again.clone()));
        let mut last = change(2, ConsentState::Granted, AuthState::Authenticated);
        last.recorded_at = again.recorded_at;
        recs.push(record(3, last));
        let audit = TopicAudit::of(CUSTOMER, &recs);
        // The first repeat starts the new run; what follows it is that
        // run's versions.
        assert_eq!((audit.duplicates, audit.rerecorded, audit.highest), (1, 1, 2));
        assert_eq!(expectation(2).compare(&audit), None, "{:?}", audit.problems);

        // Recorded again with the steps grouped otherwise, ending lower:
        // the new run counts.
        let mut recs = records(&[1, 2, 3]);
        for (offset, version) in [(3, 1), (4, 2)] {
            let mut again = if version == 2 {
                change(2, ConsentState::Granted, AuthState::Authenticated)
            } else {
                change(1, ConsentState::Revoked, AuthState::InProgress)
            };
            again.recorded_at = at() + chrono::Duration::seconds(5);
            recs.push(record(offset, again));
        }
        let audit = TopicAudit::of(CUSTOMER, &recs);
        assert_eq!((audit.highest, audit.rerecorded), (2, 1), "{:?}", audit.problems);
        assert_eq!(expectation(2).compare(&audit), None);

        // Earlier, or with other content: not a re-recording.
        let mut recs = records(&[1, 2]);
        let mut earlier = change(1, ConsentState::None, AuthState::InProgress);
        earlier.recorded_at = at() - chrono::Duration::seconds(5);
        recs.push(record(2, earlier));
        let mut other = change(2, ConsentState::Revoked, AuthState::Authenticated);
        other.recorded_at = at() + chrono::Duration::seconds(5);
        recs.push(record(3, other));
        let audit = TopicAudit::of(CUSTOMER, &recs);
        assert_eq!(audit.problems.len(), 2, "{:?}", audit.problems);
    }

    #[test]
    fn a_last_change_in_the_wrong_state_is_named() {
        let mut recs = records(&[1]);
        recs.push(record(1, change(2, ConsentState::None, AuthState::Failed)));
        let problem = expectation(2).compare(&TopicAudit::of(CUSTOMER, &recs)).expect("wrong final state");
        assert_eq!(
            problem,
            "last change's consent none (expected granted); last change's authentication failed (expected authenticated)"
        );
    }

    #[test]
    fn malformed_records_are_named() {
        let mut recs = records(&[1, 2]);
        recs[0].change_id_header = Some(format!("{CUSTOMER}:9"));
        recs[1].partition = 3;
        recs.push(ChangeRecord { change: Err("expected value".into()), ..recs[1].clone() });
        let audit = TopicAudit::of(CUSTOMER, &recs);
        assert_eq!(audit.problems.len(), 4, "{:?}", audit.problems);
        let problems = audit.problems.join("\n");
        assert!(problems.contains("change_id header"), "{problems}");
        assert!(problems.contains("in partition 3 as well as 2"), "{problems}");
        assert!(problems.contains("not a change record: expected value"), "{problems}");
        let other = ChangeRecord { key: Some("5000000002".into()), ..records(&[1]).remove(0) };
        assert!(TopicAudit::of(CUSTOMER, &[other]).problems[0].contains("key"));
    }

    #[test]
    fn an_api_without_a_version_cannot_be_checked() {
        let unknown = ChangesExpectation { version: None, ..expectation(1) };
        assert_eq!(
            unknown.compare(&TopicAudit::of(CUSTOMER, &records(&[1]))).as_deref(),
            Some("the query API shows no lifecycle version")
        );
    }

    #[test]
    fn version_lists_are_shown_as_ranges() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(ranges(&[]), "");
    }
}
