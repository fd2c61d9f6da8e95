//! Sending a plan: every webhook signed over its exact bytes and POSTed as
//! Finicity would, customers side by side, each customer's webhooks one
//! after the other in the plan's order.
//!
//! Finicity retries an event it sent "but did not receive" (any non-2xx or
//! timeout) 5 times within 5 minutes, then once a day for 3 days. A rehearsal
//! cannot wait that long, so the first phase is compressed to
//! [`RetryPolicy::rehearsal`]: up to 5 retries, 250 ms, 500 ms, 1 s, 2 s and
//! 4 s apart (under 8 s in all), and the daily phase is left out. An outage
//! shorter than that recovers as a real one would; a longer one shows up as
//! webhooks not accepted. Only 5xx and connection errors are retried: a 4xx
//! answers the same bytes the same way every time, so it is counted at once.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use indicatif::ProgressBar;
use reqwest::header::CONTENT_TYPE;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::plan::{Delivery, Plan, PlannedCustomer};
use super::summary::Summary;
use crate::config::Secret;
use crate::receive::SIGNATURE_HEADER;
use crate::receive::signature::sign;

/// When and how often a webhook that got a 5xx or no answer is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Wait before the first retry; each later one waits twice as long.
    pub first_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Finicity's first retry phase compressed for a rehearsal (see the
    /// module documentation).
    pub const fn rehearsal(retries: u32) -> Self {
        Self { retries, first_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(4) }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(16);
        self.first_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

/// Spaces requests evenly to a rate shared by every concurrent sender.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `per_second` requests a second; `None` for an unlimited
    /// rate (0, negative, or not a number).
    pub fn new(per_second: f64) -> Option<Self> {
        if per_second.is_nan() || per_second <= 0.0 {
            return None;
        }
        let interval = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        Some(Self { interval, next: Mutex::new(Instant::now()) })
    }

    /// Waits for the next free slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// How one webhook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accepted,
    NotAccepted,
    Cancelled,
}

/// What sending a plan produced.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The counts.
    pub summary: Summary,
    /// Per customer, in plan order: whether every one of its webhooks was accepted.
    pub all_accepted: Vec<bool>,
}

/// Sends webhooks to one receiver URL, signed with one partner secret.
#[derive(Debug)]
pub struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Secret,
    retry: RetryPolicy,
    pacer: Option<Pacer>,
    revocations: Option<Revocations>,
}

/// Where and how the flows that revoke through the API do so.
#[derive(Debug)]
struct Revocations {
    /// The query API's base URL, without a trailing `/`.
    api: String,
    token: Secret,
    seed: u64,
}

/// How long a revoking flow waits for its consent to be granted (the
/// consumer to apply its `added`) before revoking.
const REVOCABLE_WITHIN: Duration = Duration::from_secs(60);

impl Sender {
    /// A sender; `rate` is requests per second over all customers, `None` or
    /// 0 for as fast as the receiver answers.
    pub fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        secret: Secret,
        retry: RetryPolicy,
        rate: Option<f64>,
    ) -> Self {
        Self { client, url, secret, retry, pacer: rate.and_then(Pacer::new), revocations: None }
    }

    /// Lets the flows that revoke through the API ([`Flow::revokes_through_api`](super::flows::Flow::revokes_through_api))
    /// do so at the query API at `api` with `token`; `seed` makes their
    /// `Idempotency-Key`s, so a repeated run with the same seed repeats
    /// rather than adds revocations.
    #[must_use]
    pub fn with_revocations(mut self, api: &str, token: Secret, seed: u64) -> Self {
        self.revocations = Some(Revocations { api: api.trim_end_matches('/').to_owned(), token, seed });
        self
    }

    /// Sends every customer's webhooks, up to `concurrency` customers at a
    /// time, until done or `shutdown` is cancelled. `progress` advances by
    /// one per finished webhook.
    pub async fn send(
        &self,
        plan: &Plan,
        concurrency: usize,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> SendReport {
        let summary = Mutex::new(Summary {
            seed: plan.seed,
            customers: plan.customers.len() as u64,
            planned: plan.deliveries(),
            ..Summary::default()
        });
        let counts = &summary;
        let started = Instant::now();
        let mut results: Vec<(usize, bool)> =
            futures::stream::iter(plan.customers.iter().enumerate())
                .map(|(index, customer)| async move {
                    (index, self.send_customer(customer, counts, progress, shutdown).await)
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        results.sort_unstable_by_key(|(index, _)| *index);
        let mut summary = summary.into_inner().unwrap_or_else(PoisonError::into_inner);
        summary.elapsed = started.elapsed();
        summary.interrupted = shutdown.is_cancelled();
        SendReport { summary, all_accepted: results.into_iter().map(|(_, all)| all).collect() }
    }

    /// One customer's webhooks in order. Like Finicity, a webhook that was
    /// not accepted does not hold back the customer's later ones.
    async fn send_customer(
        &self,
        customer: &PlannedCustomer,
        summary: &Mutex<Summary>,
        progress: &ProgressBar,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut all_accepted = true;
        for delivery in customer.deliveries() {
            if shutdown.is_cancelled() {
                return false;
            }
            match self.deliver(&delivery, summary, shutdown).await {
                Fate::Accepted => {}
                Fate::NotAccepted => all_accepted = false,
                Fate::Cancelled => return false,
            }
            progress.inc(1);
        }
        if customer.flow.revokes_through_api {
            // Without its webhooks the customer never shares, so never
            // becomes revocable.
            let fate = if all_accepted { self.revoke(customer, shutdown).await } else { Fate::NotAccepted };
            match fate {
                Fate::Accepted => tally(summary, |s| s.revocations += 1),
                Fate::NotAccepted => {
                    tally(summary, |s| s.revocations_failed += 1);
                    all_accepted = false;
                }
                Fate::Cancelled => return false,
            }
        }
        all_accepted
    }

    /// The customer revokes their consent through the issuer: once the
    /// consumer shows it was granted, `POST .../consent/revocations`, retried
    /// like a webhook on 5xx or no answer (with the same key).
    async fn revoke(&self, customer: &PlannedCustomer, shutdown: &CancellationToken) -> Fate {
        let Some(revocations) = &self.revocations else {
            tracing::warn!(customer_id = %customer.customer_id, "no API token: the flow cannot revoke");
            return Fate::NotAccepted;
        };
        let id = &customer.customer_id;
        let lifecycle = format!("{}/v1/customers/{id}/lifecycle", revocations.api);
        let revoke = format!("{}/v1/customers/{id}/consent/revocations", revocations.api);
        let deadline = Instant::now() + REVOCABLE_WITHIN;
        loop {
            let request = self.client.get(&lifecycle).bearer_auth(revocations.token.expose()).send();
            let Some(answer) = shutdown.run_until_cancelled(request).await else { return Fate::Cancelled };
            let state: Option<serde_json::Value> = match answer {
                Ok(response) if response.status().is_success() => response.json().await.ok(),
                _ => None,
            };
            // Granted at least once: its `added` is applied (a repeated run
            // finds it revoked already, and revokes again with the same key).
            if state.is_some_and(|state| state["consent"]["granted_at"].is_string()) {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(customer_id = %id, "consent never granted: not revoking");
                return Fate::NotAccepted;
            }
            if shutdown.run_until_cancelled(tokio::time::sleep(Duration::from_millis(200))).await.is_none() {
                return Fate::Cancelled;
            }
        }
        let key = revocation_key(revocations.seed, id);
        let body = serde_json::json!({"revoked_by": "customer", "reason": "simulated: revoked through the issuer"});
        for attempt in 0..=self.retry.retries {
            if attempt > 0
                && shutdown.run_until_cancelled(tokio::time::sleep(self.retry.backoff(attempt))).await.is_none()
            {
                return Fate::Cancelled;
            }
            let request = self
                .client
                .post(&revoke)
                .bearer_auth(revocations.token.expose())
                .header("idempotency-key", key.as_str())
                .json(&body)
                .send();
            let Some(answer) = shutdown.run_until_cancelled(request).await else { return Fate::Cancelled };
            match answer {
                Ok(response) if response.status().is_success() => return Fate::Accepted,
                Ok(response) if !response.status().is_server_error() => {
                    tracing::warn!(customer_id = %id, status = %response.status(), "revocation refused");
                    return Fate::NotAccepted;
                }
                Ok(_) | Err(_) => {}
            }
        }
        Fate::NotAccepted
    }

    /// One webhook, retried per the policy.
    async fn deliver(&self, delivery: &Delivery, summary: &Mutex<Summary>, shutdown: &CancellationToken) -> Fate {
        let signature = sign(self.secret.expose(), &delivery.body);
        for attempt in 0..=self.retry.retries {
            if attempt > 0
                && shutdown.run_until_cancelled(tokio::time::sleep(self.retry.backoff(attempt))).await.is_none()
            {
                return Fate::Cancelled;
            }
            if let Some(pacer) = &self.pacer
                && shutdown.run_until_cancelled(pacer.wait()).await.is_none()
            {
                return Fate::Cancelled;
            }
            let duplicate = u64::from(delivery.duplicate);
            tally(summary, |s| {
                s.requests += 1;
                if attempt == 0 {
                    s.sent += 1;
                    s.duplicates += duplicate;
                } else {
                    s.retries += 1;
                }
            });
            let request = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature.as_str())
                .body(delivery.body.clone());
            let Some(result) = shutdown.run_until_cancelled(request.send()).await else {
                return Fate::Cancelled;
            };
            match result {
                Ok(response) => {
                    let status = response.status();
                    tally(summary, |s| *s.answers.entry(status.as_u16()).or_default() += 1);
                    // Read the answer to the end so the connection is reused.
                    let _ = response.bytes().await;
                    if status.is_success() {
                        tally(summary, |s| s.accepted += 1);
                        return Fate::Accepted;
                    }
                    tracing::debug!(
                        %status,
                        event_type = %delivery.event_type,
                        event_id = ?delivery.event_id,
                        "webhook not accepted"
                    );
                    if !status.is_server_error() {
                        break;
                    }
                }
                Err(err) => {
                    tally(summary, |s| s.connection_errors += 1);
                    tracing::debug!(error = %err, event_id = ?delivery.event_id, "webhook not answered");
                }
            }
        }
        tally(summary, |s| s.not_accepted += 1);
        Fate::NotAccepted
    }
}

/// The `Idempotency-Key` a revoking flow's customer uses in the run with
/// `seed`.
pub fn revocation_key(seed: u64, customer_id: &str) -> String {
    format!("simulate-{seed}-{customer_id}")
}

/// Updates the shared counts.
fn tally(summary: &Mutex<Summary>, update: impl FnOnce(&mut Summary)) {
    update(&mut summary.lock().unwrap_or_else(PoisonError::into_inner));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehearsal_backoff_doubles_to_a_cap() {
        let policy = RetryPolicy::rehearsal(5);
        let waits: Vec<u128> = (1..=7).map(|retry| policy.backoff(retry).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        let total: Duration = (1..=policy.retries).map(|retry| policy.backoff(retry)).sum();
        assert!(total < Duration::from_secs(8), "five retries well within Finicity's five minutes");
        assert_eq!(RetryPolicy::rehearsal(5).backoff(u32::MAX), Duration::from_secs(4));
    }

    #[test]
    fn zero_or_nonsense_rates_do_not_pace() {
        assert!(Pacer::new(0.0).is_none());
        assert!(Pacer::new(-3.0).is_none());
        assert!(Pacer::new(f64::NAN).is_none());
        assert_eq!(Pacer::new(4.0).map(|p| p.interval), Some(Duration::from_millis(250)));
    }

    #[tokio::test]
    async fn the_pacer_spaces_requests_evenly() {
        let pacer = Pacer::new(100.0).expect("a rate");
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(40), "first at once, then every 10 ms: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
}
