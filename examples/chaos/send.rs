//! Finicity-like senders: every webhook is retried until it is answered 200
//! (Finicity retries 5 times in 5 minutes, then daily for 3 days; here the
//! same with a compressed schedule), alternating between the receivers, at a
//! steady overall rate. Every answer is recorded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use connectflow::receive::signature::sign;
use connectflow::simulate::plan::{Plan, PlannedCustomer};
use futures::StreamExt;

/// How long one request may take before it counts as not answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a webhook is retried.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// One request and its answer.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// When the answer (or the failure) came.
    pub at: Instant,
    /// The status, `None` for a connection error or a timeout.
    pub status: Option<u16>,
    /// How long the request took.
    pub latency: Duration,
}

/// What the senders saw.
#[derive(Debug, Default)]
pub struct Sent {
    pub attempts: Vec<Attempt>,
    pub acked: HashSet<String>,
    pub incomplete: HashSet<String>,
    pub deliveries: u64,
}

impl Sent {
    /// Event ids answered 200.
    pub fn acked_event_ids(&self) -> HashSet<String> {
        self.acked.clone()
    }

    /// Whether every webhook of this customer was answered 200.
    pub fn customer_complete(&self, customer_id: &str) -> bool {
        !self.incomplete.contains(customer_id)
    }
}

pub struct Senders {
    client: reqwest::Client,
    urls: Vec<String>,
    secret: String,
    interval: Duration,
    next_slot: Mutex<Instant>,
    sent: Mutex<Sent>,
}

impl Senders {
    pub fn new(urls: Vec<String>, secret: &str, per_second: f64) -> Self {
        Self {
            client: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_default(),
            urls,
            secret: secret.to_owned(),
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
            next_slot: Mutex::new(Instant::now()),
            sent: Mutex::default(),
        }
    }

    /// Sends every customer's webhooks, `concurrency` customers at a time.
    pub async fn send(&self, plan: &Plan, concurrency: usize) -> Sent {
        futures::stream::iter(plan.customers.iter())
            .for_each_concurrent(concurrency, |customer| self.send_customer(customer))
            .await;
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    async fn pace(&self) {
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    async fn send_customer(&self, customer: &PlannedCustomer) {
        for (n, delivery) in customer.deliveries().into_iter().enumerate() {
            let signature = sign(&self.secret, &delivery.body);
            let first_try = Instant::now();
            let mut backoff = Duration::from_millis(250);
            let mut attempt = 0_usize;
            let accepted = loop {
                self.pace().await;
                let url = &self.urls[(n + attempt) % self.urls.len()];
                let started = Instant::now();
                let answer = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-finicity-signature", &signature)
                    .body(delivery.body.clone())
                    .send()
                    .await;
                let status = answer.ok().map(|r| r.status().as_u16());
                self.record(Attempt { at: Instant::now(), status, latency: started.elapsed() });
                if status == Some(200) {
                    break true;
                }
                if first_try.elapsed() > GIVE_UP_AFTER {
                    break false;
                }
                attempt += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(4));
            };
            let mut sent = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sent.deliveries += 1;
            match (accepted, delivery.event_id) {
                (true, Some(event_id)) => {
                    sent.acked.insert(event_id);
                }
                (true, None) => {}
                (false, _) => {
                    sent.incomplete.insert(customer.customer_id.clone());
                }
            }
        }
    }

    fn record(&self, attempt: Attempt) {
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).attempts.push(attempt);
    }
}
