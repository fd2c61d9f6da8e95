//! Erasures while the customers' events are still in flight: a few
//! customers are erased through the API mid-run, and the end checks that
//! nothing of theirs came back (no recorded event that occurred at or before
//! the erasure, no lifecycle without such a later event), that their changes
//! end in an erased change and a tombstone, and, in the main checks, that no
//! other customer lost an acknowledged event.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectflow::simulate::changes::{ChangeRecord, TopicAudit};
use connectflow::simulate::plan::Plan;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Customers erased per run.
pub const ERASED: usize = 5;

/// Erases up to [`ERASED`] of the plan's customers through `api` (a
/// receiver's base URL), every seventh one that connectflow already knows
/// (a 404 is a customer none of whose events was applied yet: the next one
/// is tried). A 503 (a fault under way) is retried with the same key.
pub async fn erase_some(api: &str, token: &str, plan: &Plan) -> Vec<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let mut erased = Vec::new();
    for customer in plan.customers.iter().step_by(7) {
        if erased.len() == ERASED {
            break;
        }
        let id = &customer.customer_id;
        let key = format!("chaos-erase-{id}");
        for _ in 0..20 {
            let answer = client
                .post(format!("{api}/v1/customers/{id}/erasures"))
                .bearer_auth(token)
                .header("Idempotency-Key", &key)
                .json(&json!({"reason": "chaos"}))
                .send()
                .await;
            match answer.map(|a| a.status().as_u16()) {
                Ok(202) => {
                    erased.push(id.clone());
                    break;
                }
                Ok(404) => break,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    erased
}

/// The event ids of these customers in the plan: acknowledged or not, they
/// are not expected to be kept.
pub fn event_ids_of(plan: &Plan, customers: &[String]) -> HashSet<String> {
    let customers: HashSet<&String> = customers.iter().collect();
    plan.customers
        .iter()
        .filter(|c| customers.contains(&c.customer_id))
        .flat_map(|c| c.deliveries().into_iter().filter_map(|d| d.event_id))
        .collect()
}

/// What the erasures left behind.
#[derive(Debug, Default)]
pub struct ErasureCheck {
    /// Customers erased (a 202 from the API).
    pub erased: Vec<String>,
    /// Every broken promise, one line each.
    pub problems: Vec<String>,
}

impl ErasureCheck {
    /// Checks Postgres: each erased customer has a tombstone, no recorded
    /// event that occurred at or before it, and a lifecycle only when a
    /// later event was recorded.
    pub async fn of(pool: &PgPool, erased: Vec<String>) -> anyhow::Result<Self> {
        let mut check = Self { erased, problems: Vec::new() };
        for customer in &check.erased {
            let erased_at: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT erased_at FROM erased_customers WHERE customer_id = $1")
                    .bind(customer)
                    .fetch_optional(pool)
                    .await?;
            let Some(erased_at) = erased_at else {
                check.problems.push(format!("{customer}: no erasure record"));
                continue;
            };
            let (resurrected, later): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE occurred_at <= $2), count(*) FILTER (WHERE occurred_at > $2) \
                 FROM connect_events WHERE customer_id = $1",
            )
            .bind(customer)
            .bind(erased_at)
            .fetch_one(pool)
            .await?;
            if resurrected > 0 {
                check.problems.push(format!("{customer}: {resurrected} events from before the erasure recorded"));
            }
            let lifecycle: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE customer_id = $1")
                .bind(customer)
                .fetch_one(pool)
                .await?;
            if lifecycle > 0 && later == 0 {
                check.problems.push(format!("{customer}: a lifecycle without an event after the erasure"));
            }
        }
        Ok(check)
    }

    /// Checks the changes topic's records of the erased customers (taken
    /// out of `by_customer`): in order, and, for one without a lifecycle
    /// now, ending in the erased change and a tombstone.
    pub fn changes(&mut self, by_customer: &mut HashMap<Option<String>, Vec<ChangeRecord>>, rows: &HashSet<String>) {
        for customer in &self.erased {
            let records = by_customer.remove(&Some(customer.clone())).unwrap_or_default();
            let audit = TopicAudit::of(customer, &records);
            for problem in &audit.problems {
                self.problems.push(format!("{customer}: changes topic: {problem}"));
            }
            if rows.contains(customer) {
                continue;
            }
            let ends_erased = matches!(
                records.as_slice(),
                [.., change, tombstone]
                    if tombstone.tombstone && change.change.as_ref().is_ok_and(|c| c.after.is_none())
            );
            if !ends_erased {
                self.problems
                    .push(format!("{customer}: the changes topic does not end in the erasure and a tombstone"));
            }
        }
    }

    /// Whether every promise held.
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && !self.erased.is_empty()
    }

    /// For the summary.
    pub fn json(&self) -> Value {
        json!({"customers_erased": self.erased.len(), "problems": self.problems})
    }
}
