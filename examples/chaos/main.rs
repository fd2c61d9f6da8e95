//! `make chaos`: connectflow on a 3-node Kafka cluster and real Postgres,
//! with faults injected while Finicity-like senders keep sending, then the
//! promises checked: every event answered 200 recorded exactly once, every
//! stored lifecycle the fold of its events, every customer in the state its
//! flow ends in, only 200 or 503 answered meanwhile, and every recorded
//! lifecycle change on the changes topic, in order, without a gap.
//!
//! The run (about 3 to 5 minutes):
//! 1. a fresh database and topics (replication factor 3, `min.insync.replicas`
//!    2) on the cluster, standby and proxy that
//!    `KAFKA_NODES=3 PG_REPLICA=1 bash deploy/services.sh up` starts;
//! 2. two `serve` and three `consume` processes of `target/debug/connectflow`;
//! 3. senders post shuffled, duplicated connect flows to both receivers at a
//!    steady rate, retrying every non-2xx or timeout with backoff (as
//!    Finicity does, compressed);
//! 4. faults, one after another: `kill -9` of the leader of an events
//!    partition (restarted later); `kill -9` of one consumer, SIGTERM of
//!    another, a new one started; Postgres stopped and started; a Postgres
//!    failover (`failover.rs`: the standby detached for a wide loss window,
//!    the primary killed with `kill -9`, the standby promoted, the proxy that
//!    is connectflow's `DATABASE_URL` switched to it); `reproject` run beside
//!    the consumers; and, between the broker's restart and the consumers'
//!    faults, a few customers erased through the API while their events are
//!    still being sent (`erase.rs`);
//! 5. when sending is done and the consumers have drained, the checks; then,
//!    once the relays have emptied the outbox, the consumers are stopped and
//!    the changes topic is read whole and held against Postgres.
//!
//! Prints a summary and writes `target/chaos/summary.json`; exits 1 when a
//! check fails. Environment: `CONNECTFLOW_CHAOS_BROKERS` (default the
//! cluster's `127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094`),
//! `CONNECTFLOW_BENCH_DATABASE_URL` (an admin URL of the local Postgres),
//! `CONNECTFLOW_BIN` (default `target/debug/connectflow`),
//! `CONNECTFLOW_CHAOS_SECONDS` (sending time, default 150).

mod erase;
mod failover;
#[allow(dead_code)]
#[path = "../bench/procs.rs"]
mod procs;
mod report;
mod send;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use connectflow::change::LifecycleChange;
use connectflow::config::{KafkaArgs, KafkaProperties};
use connectflow::simulate::changes::{ChangeRecord, ChangesReader, TopicAudit};
use connectflow::simulate::flows::FLOWS;
use connectflow::simulate::plan::{Plan, PlanSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use sqlx::PgPool;

use procs::{connectflow_bin, free_addr, fresh_database, wait_for};
use report::{Fault, Report, ReportCounts};
use send::Senders;

const CLUSTER: &str = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094";
const SECRET: &str = procs::SECRET;
const RATE_PER_S: f64 = 60.0;
/// How long the relays may take to empty the outbox once the consumers
/// drained, and the changes topic to be read.
const CHANGES_DEADLINE: Duration = Duration::from_secs(120);
/// Problems printed (and kept in the summary) at most.
const PROBLEMS_SHOWN: usize = 20;

/// A connectflow process whose output goes to a log file.
struct Service {
    name: String,
    child: Child,
}

impl Service {
    fn start(name: &str, command: &str, env: &[(String, String)], listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        std::fs::create_dir_all("target/chaos/logs")?;
        let log = std::fs::File::create(format!("target/chaos/logs/{name}.log"))?;
        let mut cmd = Command::new(connectflow_bin()?);
        cmd.arg(command)
            .env("FINICITY_PARTNER_SECRETS", SECRET)
            .env("CONNECTFLOW_API_TOKENS", procs::TOKEN)
            .env("CONNECTFLOW_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("CONNECTFLOW_NO_MIGRATE", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(addr) = listen {
            cmd.env("CONNECTFLOW_LISTEN", addr.to_string());
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().with_context(|| format!("starting connectflow {command}"))?;
        Ok(Self { name: name.to_owned(), child })
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// `bash deploy/services.sh <args>`.
fn services(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("bash").arg("deploy/services.sh").args(args).output().context("running services.sh")?;
    if !output.status.success() {
        bail!("deploy/services.sh {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The leader (node id) of each partition of `topic`.
fn leaders(brokers: &str, topic: &str) -> anyhow::Result<HashMap<i32, i32>> {
    let client: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().context("metadata client")?;
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10)).context("metadata")?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), p.leader()))
        .collect())
}

/// Runs `connectflow <args>` to completion; its exit code and output.
fn run_connectflow(args: &[&str], env: &[(String, String)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut cmd = Command::new(connectflow_bin()?);
    cmd.args(args).env("CONNECTFLOW_LOG_FORMAT", "json").env("RUST_LOG", "warn");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().with_context(|| format!("running connectflow {}", args.join(" ")))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code(), text))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let brokers = std::env::var("CONNECTFLOW_CHAOS_BROKERS").unwrap_or_else(|_| CLUSTER.to_owned());
    let seconds: u64 = std::env::var("CONNECTFLOW_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let send_for = Duration::from_secs(seconds);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let events_topic = format!("cf-chaos-{id}.events");
    let database = fresh_database("chaos").await?;
    // With the standby and proxy of `PG_REPLICA=1` (as `make chaos` starts
    // them), connectflow reaches Postgres through the proxy, which the
    // failover points at the promoted standby.
    let pg_failover = match failover::Failover::detect(&database).await {
        Ok(failover) => Some(failover),
        Err(err) => {
            println!("chaos: no Postgres standby and proxy ({err:#}): the failover will be SKIPPED");
            None
        }
    };
    let database_url = pg_failover.as_ref().map_or_else(|| database.clone(), |f| f.proxy_url.clone());
    let env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), database_url.clone()),
        ("KAFKA_BROKERS".into(), brokers.clone()),
        ("CONNECTFLOW_EVENTS_TOPIC".into(), events_topic.clone()),
        ("CONNECTFLOW_DLQ_TOPIC".into(), format!("cf-chaos-{id}.dlq")),
        ("CONNECTFLOW_CHANGES_TOPIC".into(), format!("cf-chaos-{id}.changes")),
        ("CONNECTFLOW_INSTITUTIONS_TOPIC".into(), format!("cf-chaos-{id}.institutions")),
        ("CONNECTFLOW_CONSUMER_GROUP".into(), format!("cf-chaos-{id}")),
        ("CONNECTFLOW_TOPIC_PARTITIONS".into(), "6".into()),
        ("CONNECTFLOW_TOPIC_REPLICATION_FACTOR".into(), "3".into()),
        ("CONNECTFLOW_TOPIC_MIN_INSYNC_REPLICAS".into(), "2".into()),
        // Two lanes, the relay, the expiry job and readiness.
        ("CONNECTFLOW_DATABASE_MAX_CONNECTIONS".into(), "5".into()),
        ("CONNECTFLOW_CONSUMER_PARALLELISM".into(), "2".into()),
    ];
    let (code, output) = run_connectflow(&["migrate"], &env)?;
    if code != Some(0) {
        bail!("connectflow migrate failed: {output}");
    }
    println!("chaos: database {database}, topic {events_topic} (replication 3, min.insync.replicas 2)");

    // Two receivers, three consumers.
    let mut receivers = Vec::new();
    for i in 0..2 {
        let addr = free_addr()?;
        receivers.push((Service::start(&format!("serve-{i}"), "serve", &env, Some(addr))?, addr));
    }
    let mut consumers = Vec::new();
    for i in 0..3 {
        consumers.push(Service::start(&format!("consume-{i}"), "consume", &env, Some(free_addr()?))?);
    }
    for (_, addr) in &receivers {
        wait_for(&format!("http://{addr}/readyz"), Duration::from_secs(60)).await?;
    }

    // The senders: enough customers to send at the rate for the whole time.
    let mut plan = Plan::build(&PlanSpec {
        flows: FLOWS.iter().collect(),
        customers_per_flow: 1,
        duplicates: 0.2,
        shuffle: true,
        seed: u64::from(Utc::now().timestamp_subsec_nanos()),
        now: Utc::now(),
    })?;
    let per_round = plan.deliveries().max(1);
    let customers_per_flow = ((RATE_PER_S * send_for.as_secs_f64()) / per_round as f64).ceil() as u64;
    plan = Plan::build(&PlanSpec { customers_per_flow: customers_per_flow.max(1), ..plan_spec(&plan) })?;
    let urls: Vec<String> =
        receivers.iter().map(|(_, addr)| format!("http://{addr}/webhooks/finicity/connect")).collect();
    let senders = Arc::new(Senders::new(urls, SECRET, RATE_PER_S));
    let sending = {
        let senders = senders.clone();
        let plan = plan.clone();
        tokio::spawn(async move { senders.send(&plan, 24).await })
    };
    let t0 = Instant::now();
    let mut faults: Vec<Fault> = Vec::new();
    let at = |s: u64| t0 + Duration::from_secs(s) * u32::try_from(seconds).unwrap_or(150) / 150;

    // 1. kill -9 the leader of events partition 0; restart it later.
    tokio::time::sleep_until(at(15).into()).await;
    let leader = leaders(&brokers, &events_topic)?.get(&0).copied().context("partition 0 has no leader")?;
    let pid = services(&["node-pid", &leader.to_string()])?;
    let killed_at = Instant::now();
    Command::new("kill").args(["-9", &pid]).status()?;
    println!("chaos: t={:.0}s kill -9 broker {leader} (pid {pid}), leader of partition 0", t0.elapsed().as_secs_f64());
    let failover = wait_leader_change(&brokers, &events_topic, leader, Duration::from_secs(60)).await;
    faults.push(Fault::new("kill -9 partition leader", killed_at, t0).with_failover(failover));
    tokio::time::sleep_until(at(40).into()).await;
    services(&["node-start", &leader.to_string()])?;
    faults.push(Fault::new("broker restarted", Instant::now(), t0));
    println!("chaos: t={:.0}s broker {leader} restarted", t0.elapsed().as_secs_f64());

    // Erasures while the customers' events are still in flight.
    tokio::time::sleep_until(at(50).into()).await;
    let fault_at = Instant::now();
    let erased = erase::erase_some(&format!("http://{}", receivers[0].1), procs::TOKEN, &plan).await;
    println!("chaos: t={:.0}s {} customers erased", t0.elapsed().as_secs_f64(), erased.len());
    faults.push(Fault::new("erasures while events are in flight", fault_at, t0));

    // 2. Consumers: kill -9 one, stop one, start one.
    tokio::time::sleep_until(at(60).into()).await;
    let fault_at = Instant::now();
    consumers[0].kill9();
    let stopped = consumers[1].terminate();
    consumers.push(Service::start("consume-3", "consume", &env, Some(free_addr()?))?);
    println!(
        "chaos: t={:.0}s consumer {} killed, {} stopped (exit {stopped:?}), consume-3 started",
        t0.elapsed().as_secs_f64(),
        consumers[0].name,
        consumers[1].name
    );
    faults.push(Fault::new("consumers: kill -9, SIGTERM, join", fault_at, t0));

    // 3. Postgres stopped for ten seconds.
    tokio::time::sleep_until(at(75).into()).await;
    let fault_at = Instant::now();
    match services(&["postgres-stop"]) {
        Ok(_) => {
            println!("chaos: t={:.0}s Postgres stopped", t0.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_secs(10)).await;
            services(&["postgres-start"])?;
            println!("chaos: t={:.0}s Postgres started", t0.elapsed().as_secs_f64());
            faults.push(Fault::new("Postgres stopped 10 s", fault_at, t0));
        }
        // A Postgres this checkout's deploy/services.sh did not start (a
        // developer's own, or one another checkout started) is not stopped:
        // the fault is skipped, loudly, and the summary says so.
        Err(err) => {
            println!("chaos: SKIPPED the Postgres fault: {err:#}");
            faults.push(Fault::new("Postgres fault SKIPPED (not started by this checkout)", fault_at, t0));
        }
    }

    // 4. A failover, asynchronous replication: the standby stops receiving
    // WAL, the consumers apply for ten more seconds on the primary, which
    // is then killed; the standby is promoted and the proxy switched to it.
    tokio::time::sleep_until(at(92).into()).await;
    let mut discarded = None;
    let mut failover_tried = false;
    if let Some(pg) = &pg_failover {
        failover_tried = true;
        let fault_at = Instant::now();
        match pg.run(Duration::from_secs(10) * u32::try_from(seconds).unwrap_or(150) / 150).await {
            Ok(lost) => {
                println!(
                    "chaos: t={:.0}s Postgres failover: primary killed, standby promoted, proxy switched after {:.1}s; \
                     discarded {} transactions, {} bytes of WAL, {} applied events",
                    t0.elapsed().as_secs_f64(),
                    lost.switched_after.as_secs_f64(),
                    lost.transactions,
                    lost.wal_bytes,
                    lost.events
                );
                discarded = Some(lost);
                faults.push(Fault::new("Postgres failover (detach, kill -9, promote, proxy)", fault_at, t0));
            }
            Err(err) => {
                println!("chaos: the Postgres failover FAILED: {err:#}");
                faults.push(Fault::new("Postgres failover FAILED", fault_at, t0));
            }
        }
    } else {
        faults.push(Fault::new("Postgres failover SKIPPED (no standby: PG_REPLICA=1)", Instant::now(), t0));
    }

    // 5. reproject beside the consumers.
    tokio::time::sleep_until(at(115).into()).await;
    let fault_at = Instant::now();
    let reproject_env = env.clone();
    let reproject = tokio::task::spawn_blocking(move || run_connectflow(&["reproject"], &reproject_env));
    faults.push(Fault::new("reproject beside the consumers", fault_at, t0));

    let (code, output) = reproject.await??;
    println!(
        "chaos: reproject exited {code:?}: {}",
        output.lines().find(|l| l.starts_with("re-projected")).unwrap_or("")
    );
    let sent = sending.await?;
    println!("chaos: sending done after {:.0}s", t0.elapsed().as_secs_f64());

    // Drain: every acknowledged event recorded.
    let pool = connectflow::store::pool(&connectflow::config::DatabaseArgs {
        url: database_url.clone().into(),
        max_connections: Some(2),
    })?;
    // The erased customers' events are not kept (suppressed, or deleted
    // by the erasure); every other acknowledged event is.
    let erased_events = erase::event_ids_of(&plan, &erased);
    let acked: HashSet<String> = sent.acked_event_ids().difference(&erased_events).cloned().collect();
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    let recorded = loop {
        let recorded: Vec<String> =
            sqlx::query_scalar("SELECT event_id FROM connect_events").fetch_all(&pool).await.unwrap_or_default();
        let recorded: HashSet<String> = recorded.into_iter().collect();
        if acked.is_subset(&recorded) || Instant::now() > drain_deadline {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM connect_events").fetch_one(&pool).await?;
    let (audit_code, audit_output) = run_connectflow(&["reproject", "--check"], &env)?;
    let differing = audit_output.lines().filter(|l| l.starts_with("differs:")).count();
    let states: Vec<(String, String, String)> =
        sqlx::query_as("SELECT customer_id, consent_state, auth_state FROM customers").fetch_all(&pool).await?;
    let states: HashMap<String, (String, String)> = states.into_iter().map(|(c, a, b)| (c, (a, b))).collect();
    let mut state_mismatches = Vec::new();
    for customer in &plan.customers {
        if !sent.customer_complete(&customer.customer_id) || erased.contains(&customer.customer_id) {
            continue;
        }
        let expected = (
            customer.flow.expected_consent.as_str().to_owned(),
            customer.flow.expected_authentication.as_str().to_owned(),
        );
        if states.get(&customer.customer_id) != Some(&expected) {
            state_mismatches.push(customer.customer_id.clone());
        }
    }
    let dead_letters = procs_dead_letters(&brokers, &format!("cf-chaos-{id}.dlq"));

    // The changes topic, once the relays have published what was recorded.
    // The consumers are stopped first, so that nothing is recorded or
    // published while Postgres and the topic are compared.
    let outbox_deadline = Instant::now() + CHANGES_DEADLINE;
    let unpublished = loop {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM lifecycle_outbox").fetch_one(&pool).await.unwrap_or(-1);
        if waiting == 0 || Instant::now() > outbox_deadline {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "chaos: outbox {} after {:.0}s",
        if unpublished == 0 { "empty" } else { "NOT empty" },
        t0.elapsed().as_secs_f64()
    );
    drop(consumers);
    let changes_topic = format!("cf-chaos-{id}.changes");
    let mut erasures = erase::ErasureCheck::of(&pool, erased).await?;
    let changes =
        check_changes(&pool, &brokers, &changes_topic, unpublished, &mut erasures).await.unwrap_or_else(|err| {
            ChangesCheck {
                topic: changes_topic.clone(),
                unpublished,
                read_error: Some(format!("{err:#}")),
                ..ChangesCheck::default()
            }
        });

    let report = Report::build(
        &sent,
        &faults,
        &plan,
        ReportCounts {
            acked: acked.len(),
            recorded: recorded.len(),
            missing: acked.difference(&recorded).count(),
            recorded_twice: usize::try_from(rows).unwrap_or(0).saturating_sub(recorded.len()),
            projection_differences: if audit_code == Some(0) { 0 } else { differing.max(1) },
            state_mismatches: state_mismatches.len(),
            dead_letters,
            duration_s: started.elapsed().as_secs_f64(),
        },
    );
    for problem in &erasures.problems {
        println!("chaos: erasure: {problem}");
    }
    // A failover that discarded nothing applied proved nothing.
    let failover_passed = !failover_tried || discarded.is_some_and(|d| d.events > 0);
    let passed = report.passed() && changes.passed() && erasures.passed() && failover_passed;
    let mut summary = report.json();
    summary["passed"] = json!(passed);
    summary["lifecycle_changes"] = changes.json();
    summary["erasures"] = erasures.json();
    summary["postgres_failover"] = match (&pg_failover, discarded) {
        (None, _) => json!({"ran": false}),
        (Some(_), None) => json!({"ran": false, "failed": true}),
        (Some(_), Some(lost)) => {
            let mut entry = lost.json();
            entry["ran"] = json!(true);
            entry["partitions_read_again_by_running_consumers"] = json!(rewinds());
            entry["passed"] = json!(lost.events > 0);
            entry
        }
    };
    print_summary(&summary, passed);
    std::fs::create_dir_all("target/chaos")?;
    std::fs::write("target/chaos/summary.json", serde_json::to_string_pretty(&summary)?)?;
    println!("wrote target/chaos/summary.json");
    drop(receivers);
    if failover_tried && let Err(err) = failover::Failover::restore() {
        println!("chaos: restoring the primary and standby failed: {err:#}");
    }
    procs::drop_database(&database).await;
    if !passed {
        bail!("chaos: a promise was broken (see above)");
    }
    Ok(())
}

fn print_summary(summary: &Value, passed: bool) {
    println!();
    println!("chaos summary");
    if let Ok(text) = serde_json::to_string_pretty(summary) {
        println!("{text}");
    }
    println!("{}", if passed { "chaos: PASSED" } else { "chaos: FAILED" });
}

/// What the changes topic holds, against Postgres.
#[derive(Debug, Default)]
struct ChangesCheck {
    topic: String,
    /// Records read from the topic.
    records: u64,
    /// Records repeating a change already read (a relay died between
    /// Kafka's confirmation and its commit): allowed.
    duplicates: u64,
    /// Of the duplicates, versions recorded again after the failover lost
    /// them (a new run from a repeated version, recorded later).
    rerecorded: u64,
    /// Customers with a stored row.
    customers_checked: u64,
    /// Of those, customers with at least one problem.
    customers_failed: u64,
    /// Records of customers with no stored row, or without a key.
    records_unknown: u64,
    /// Changes still in the outbox when the deadline passed (-1: not known).
    unpublished: i64,
    /// The topic could not be read to its end.
    read_error: Option<String>,
    /// The first problems found, one line each.
    problems: Vec<String>,
    /// How many problems there were in all.
    problem_count: usize,
}

impl ChangesCheck {
    fn problem(&mut self, line: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_SHOWN {
            self.problems.push(line);
        }
    }

    fn passed(&self) -> bool {
        self.read_error.is_none()
            && self.unpublished == 0
            && self.customers_failed == 0
            && self.records_unknown == 0
            && self.problem_count == 0
            && self.customers_checked > 0
            && self.records > 0
    }

    fn json(&self) -> Value {
        json!({
            "topic": self.topic,
            "changes_read": self.records,
            "duplicates": self.duplicates,
            "rerecorded_after_failover": self.rerecorded,
            "customers_checked": self.customers_checked,
            "customers_with_problems": self.customers_failed,
            "records_of_unknown_customers": self.records_unknown,
            "unpublished_after_deadline": self.unpublished,
            "read_error": self.read_error,
            "problems": self.problem_count,
            "first_problems": self.problems,
        })
    }
}

/// Reads the whole changes topic and checks, for every customer with a
/// stored row: the versions on the topic are exactly 1..=`customers.version`
/// (duplicates counted, not refused), in their partition's order as the
/// relay promises (a record continues the run before it or repeats an
/// earlier version, never skips ahead), with matching `change_id` header and
/// value, and the highest version's `after` is that of the customer's latest
/// row in `lifecycle_changes`.
async fn check_changes(
    pool: &PgPool,
    brokers: &str,
    topic: &str,
    unpublished: i64,
    erasures: &mut erase::ErasureCheck,
) -> anyhow::Result<ChangesCheck> {
    let mut check = ChangesCheck { topic: topic.to_owned(), unpublished, ..ChangesCheck::default() };
    let customers: Vec<(String, i64)> =
        sqlx::query_as("SELECT customer_id, version FROM customers ORDER BY customer_id").fetch_all(pool).await?;
    let latest: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (customer_id) customer_id, version, change FROM lifecycle_changes \
         ORDER BY customer_id, version DESC",
    )
    .fetch_all(pool)
    .await?;
    let latest: HashMap<String, (i64, String)> = latest.into_iter().map(|(c, v, change)| (c, (v, change))).collect();
    // Should the outbox not have emptied: a customer's first unpublished version.
    let outbox: Vec<(String, i64)> =
        sqlx::query_as("SELECT customer_id, min(version) FROM lifecycle_outbox GROUP BY customer_id")
            .fetch_all(pool)
            .await?;
    let outbox: HashMap<String, i64> = outbox.into_iter().collect();

    let kafka = KafkaArgs {
        brokers: brokers.to_owned(),
        events_topic: String::new(),
        changes_topic: topic.to_owned(),
        dlq_topic: String::new(),
        institutions_topic: String::new(),
        properties: KafkaProperties::default(),
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = ChangesReader::new(&kafka)?;
        reader.read_to_end(CHANGES_DEADLINE, |_| true)
    })
    .await?;
    let records = match read {
        Ok(records) => records,
        Err(err) => {
            check.read_error = Some(format!("{err:#}"));
            Vec::new()
        }
    };
    check.records = records.len() as u64;
    let mut by_customer: HashMap<Option<String>, Vec<ChangeRecord>> = HashMap::new();
    for record in records {
        by_customer.entry(record.key.clone()).or_default().push(record);
    }

    // The erased customers' records are checked by the erasures' check.
    let rows: HashSet<String> = customers.iter().map(|(c, _)| c.clone()).collect();
    erasures.changes(&mut by_customer, &rows);
    for (customer_id, version) in &customers {
        if erasures.erased.contains(customer_id) {
            continue;
        }
        check.customers_checked += 1;
        let records = by_customer.remove(&Some(customer_id.clone())).unwrap_or_default();
        let audit = TopicAudit::of(customer_id, &records);
        check.duplicates += audit.duplicates;
        check.rerecorded += audit.rerecorded;
        // With changes left in the outbox, the versions from the first of
        // them on may or may not have been published.
        let published_to = match outbox.get(customer_id) {
            Some(first_unpublished) => audit.highest.clamp(first_unpublished - 1, *version),
            None => *version,
        };
        let mut problems = audit.problems_at(published_to);
        match latest.get(customer_id) {
            None if *version > 0 => problems.push(format!("at version {version} but no row in lifecycle_changes")),
            None => {}
            Some((latest_version, stored)) => {
                if latest_version != version {
                    problems.push(format!("latest row in lifecycle_changes is version {latest_version}"));
                }
                if audit.highest == *latest_version {
                    match serde_json::from_str::<LifecycleChange>(stored) {
                        Ok(stored) if audit.last().map(|last| &last.after) != Some(&stored.after) => problems.push(
                            format!("version {latest_version} on the topic has another `after` than the stored one"),
                        ),
                        Ok(_) => {}
                        Err(err) => problems.push(format!("stored version {latest_version} unreadable: {err}")),
                    }
                }
            }
        }
        if !problems.is_empty() {
            check.customers_failed += 1;
            for problem in problems {
                check.problem(format!("customer {customer_id}: {problem}"));
            }
        }
    }
    for (key, records) in by_customer {
        check.records_unknown += records.len() as u64;
        match key {
            Some(key) => check.problem(format!("{} records of {key:?}, a customer with no stored row", records.len())),
            None => check.problem(format!("{} records without a key", records.len())),
        }
    }
    println!(
        "chaos: changes topic: {} records ({} duplicates, {} of them recorded again after the failover) for {} customers, {} with problems{}",
        check.records,
        check.duplicates,
        check.rerecorded,
        check.customers_checked,
        check.customers_failed,
        check.read_error.as_ref().map(|e| format!("; NOT READ: {e}")).unwrap_or_default()
    );
    for problem in &check.problems {
        println!("chaos: changes: {problem}");
    }
    Ok(check)
}

/// How many times the consumers' logs say a consumer found Postgres behind
/// what it had applied and read its partition again (a failover lost it).
fn rewinds() -> usize {
    let Ok(dir) = std::fs::read_dir("target/chaos/logs") else { return 0 };
    dir.flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("consume-"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .map(|log| log.matches("reading the partition again from its stored position").count())
        .sum()
}

fn plan_spec(plan: &Plan) -> PlanSpec {
    PlanSpec {
        flows: FLOWS.iter().collect(),
        customers_per_flow: 1,
        duplicates: 0.2,
        shuffle: true,
        seed: plan.seed,
        now: Utc::now(),
    }
}

/// Waits until partition 0 is led by another broker than `old`; how long
/// that took from now (the kill), or `None` if it did not happen in time.
async fn wait_leader_change(brokers: &str, topic: &str, old: i32, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let brokers = brokers.to_owned();
        let topic = topic.to_owned();
        let current = tokio::task::spawn_blocking(move || leaders(&brokers, &topic)).await.ok()?.ok();
        if let Some(leader) = current.and_then(|l| l.get(&0).copied())
            && leader != old
            && leader >= 0
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Records on the dead-letter topic (there should be none).
fn procs_dead_letters(brokers: &str, topic: &str) -> i64 {
    let Ok(client) = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create::<BaseConsumer>() else {
        return -1;
    };
    let Ok(metadata) = client.fetch_metadata(Some(topic), Duration::from_secs(10)) else { return -1 };
    let partitions: Vec<i32> =
        metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()).map(|p| p.id()).collect();
    partitions
        .into_iter()
        .map(|p| client.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |(low, high)| high - low))
        .sum()
}
