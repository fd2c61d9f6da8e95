//! The plan of a simulation: which customers go through which flow, and the
//! order in which their webhooks are sent, duplicates included.
//!
//! Everything random is drawn from one seeded generator (ChaCha8, named so
//! that its output does not change with the `rand` version's default), so the
//! same seed and options give the same plan: a failing run can be repeated.
//! The plan holds only what each customer needs to rebuild its bodies
//! ([`PlannedCustomer::deliveries`]); bodies are made when the customer's
//! turn comes, so a long run does not hold every body in memory.

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::flows::{self, Flow};
use crate::event::EventType;

/// Digits of the customer id prefix derived from the seed.
pub const PREFIX_DIGITS: usize = 12;
/// Digits of the customer's serial number after the prefix: 12 + 8 = 20
/// digits, within Finicity's 22.
pub const SERIAL_DIGITS: usize = 8;
/// Most customers one plan can hold (every serial fits in [`SERIAL_DIGITS`]).
pub const MAX_CUSTOMERS: u64 = 100_000_000;

/// How long before the plan's `now` each customer's first event occurs. The
/// receiver takes `occurred_at` from the event id's epoch-ms prefix and
/// distrusts one more than a day ahead, so the flows are placed just in the
/// past, one second per step.
pub const LEAD: Duration = Duration::minutes(1);

/// The `ping` Finicity sends when a Connect URL is generated.
const PING_BODY: &str = r#"{"eventType":"ping","payload":{}}"#;

/// What to plan.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    /// The flows to run; each gets [`customers_per_flow`](Self::customers_per_flow) customers.
    pub flows: Vec<&'static Flow>,
    /// Customers per flow, at least 1.
    pub customers_per_flow: u64,
    /// Share of events sent a second time, from 0 to 1.
    pub duplicates: f64,
    /// Send each customer's events in a random order instead of Finicity's.
    pub shuffle: bool,
    /// Seed of every random choice and of the customer ids.
    pub seed: u64,
    /// The current time; events occur just before it.
    pub now: DateTime<Utc>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// No flow selected.
    #[error("no flow selected")]
    NoFlows,
    /// Zero customers per flow.
    #[error("at least one customer per flow is needed")]
    NoCustomers,
    /// More customers than ids can be made for.
    #[error("{0} customers is more than the {MAX_CUSTOMERS} one run can simulate")]
    TooManyCustomers(u128),
    /// The duplicate share is outside 0..=1.
    #[error("the duplicate share must be a number from 0 to 1, not {0}")]
    BadDuplicateShare(f64),
    /// Fewer sessions per institution than a status needs.
    #[error(
        "--scenario institution-outage needs at least {min} sessions per institution (--customers), the fewest \
         before an institution's status is other than unknown; {0} asked",
        min = super::scenario::MIN_SESSIONS
    )]
    TooFewSessions(u64),
}

/// One place in a customer's send order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The `ping` that precedes a Connect session (always first, never
    /// shuffled or duplicated).
    Ping,
    /// The flow's event at this step index.
    Event {
        /// Index into the flow's bodies.
        step: usize,
        /// Whether this is a resend of an event sent (or to be sent) elsewhere
        /// in the sequence.
        duplicate: bool,
    },
}

/// One customer to plan: the flow it goes through, and the institution it
/// chooses when not the flow's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Casting {
    /// The flow.
    pub flow: &'static Flow,
    /// The institution instead of [`Flow::institution`] (`--scenario
    /// institution-outage`'s), or `None`.
    pub institution: Option<String>,
}

/// One simulated customer: its id, its flow and its send order.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCustomer {
    /// Finicity customer id: 20 digits, a prefix derived from the seed then a serial.
    pub customer_id: String,
    /// The flow the customer goes through.
    pub flow: &'static Flow,
    /// The institution its session goes to instead of the flow's own, or `None`.
    pub institution: Option<String>,
    /// When the flow's first event occurs (later steps one second apart).
    pub start: DateTime<Utc>,
    /// The plan's seed (it also shapes the event ids' hex part).
    pub seed: u64,
    /// What is sent, in order.
    pub order: Vec<Slot>,
}

/// A webhook ready to be signed and sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The body's `eventId` (none for a ping).
    pub event_id: Option<String>,
    /// The body's `eventType`.
    pub event_type: EventType,
    /// The exact bytes to sign and send (`Bytes`, so a retry resends the
    /// same bytes without copying).
    pub body: Bytes,
    /// Whether this send repeats an event.
    pub duplicate: bool,
}

impl PlannedCustomer {
    /// The flow's bodies for this customer, in Finicity's order.
    pub fn bodies(&self) -> Vec<Value> {
        flows::bodies_at(self.flow, self.institution.as_deref(), &self.customer_id, self.start, self.seed)
    }

    /// The webhooks in send order, bodies serialised once.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let bodies: Vec<(Option<String>, EventType, Bytes)> = self
            .bodies()
            .iter()
            .map(|body| {
                let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
                let event_type = EventType::parse(&text("eventType").unwrap_or_default());
                (text("eventId"), event_type, Bytes::from(body.to_string()))
            })
            .collect();
        self.order
            .iter()
            .filter_map(|send| match *send {
                Slot::Ping => Some(Delivery {
                    event_id: None,
                    event_type: EventType::Ping,
                    body: Bytes::from_static(PING_BODY.as_bytes()),
                    duplicate: false,
                }),
                Slot::Event { step, duplicate } => bodies.get(step).map(|(event_id, event_type, body)| Delivery {
                    event_id: event_id.clone(),
                    event_type: event_type.clone(),
                    body: body.clone(),
                    duplicate,
                }),
            })
            .collect()
    }

    /// How many distinct events the customer's lifecycle should count.
    pub fn distinct_events(&self) -> usize {
        self.order.iter().filter(|s| matches!(s, Slot::Event { duplicate: false, .. })).count()
    }

    /// The id of the flow's last event, which the lifecycle should show as
    /// its `last_event` once everything is in.
    pub fn last_event_id(&self) -> Option<String> {
        let bodies = self.bodies();
        bodies.last().and_then(|b| b.get("eventId")).and_then(Value::as_str).map(str::to_owned)
    }

    /// How many sends repeat an event.
    pub fn duplicates(&self) -> usize {
        self.order.iter().filter(|s| matches!(s, Slot::Event { duplicate: true, .. })).count()
    }
}

/// Every simulated customer, in the order they are started.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The seed the plan was drawn from.
    pub seed: u64,
    /// The customers, flows interleaved (customer 0 of every flow, then
    /// customer 1 of every flow, ...) so a run mixes flows from the start.
    pub customers: Vec<PlannedCustomer>,
}

impl Plan {
    /// Draws a plan.
    pub fn build(spec: &PlanSpec) -> Result<Self, PlanError> {
        if spec.flows.is_empty() {
            return Err(PlanError::NoFlows);
        }
        if spec.customers_per_flow == 0 {
            return Err(PlanError::NoCustomers);
        }
        let total = u128::from(spec.customers_per_flow) * spec.flows.len() as u128;
        if total > u128::from(MAX_CUSTOMERS) {
            return Err(PlanError::TooManyCustomers(total));
        }
        let cast = (0..spec.customers_per_flow)
            .flat_map(|_| spec.flows.iter().map(|&flow| Casting { flow, institution: None }));
        Self::build_cast(cast, spec)
    }

    /// A plan of `cast`'s customers, in that order, drawn with `spec`'s
    /// duplicate share, shuffle, seed and time (its flows and customers per
    /// flow are [`build`](Self::build)'s, not used here): what a scenario
    /// that chooses its customers itself plans.
    pub fn build_cast(cast: impl IntoIterator<Item = Casting>, spec: &PlanSpec) -> Result<Self, PlanError> {
        if !(0.0..=1.0).contains(&spec.duplicates) {
            return Err(PlanError::BadDuplicateShare(spec.duplicates));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let prefix = customer_id_prefix(spec.seed);
        let start = spec.now - LEAD;

        let cast = cast.into_iter();
        let mut customers = Vec::with_capacity(cast.size_hint().0.min(MAX_CUSTOMERS as usize));
        for Casting { flow, institution } in cast {
            let serial = customers.len();
            if serial as u64 >= MAX_CUSTOMERS {
                return Err(PlanError::TooManyCustomers(serial as u128 + 1));
            }
            customers.push(PlannedCustomer {
                customer_id: format!("{prefix}{serial:0width$}", width = SERIAL_DIGITS),
                flow,
                institution,
                start,
                seed: spec.seed,
                // One body per event of the flow.
                order: (0..flow.events.len()).map(|step| Slot::Event { step, duplicate: false }).collect(),
            });
        }
        if customers.is_empty() {
            return Err(PlanError::NoCustomers);
        }

        // Exactly round(share x events) duplicates, spread uniformly over
        // every event of the run (per customer, small flows would round a
        // small share down to none).
        let events: Vec<(usize, usize)> = customers
            .iter()
            .enumerate()
            .flat_map(|(c, customer)| (0..customer.order.len()).map(move |s| (c, s)))
            .collect();
        let wanted = (spec.duplicates * events.len() as f64).round() as usize;
        let mut picked: Vec<(usize, usize)> =
            rand::seq::index::sample(&mut rng, events.len(), wanted.min(events.len()))
                .into_iter()
                .map(|i| events[i])
                .collect();
        picked.sort_unstable();
        for (c, step) in picked {
            let order = &mut customers[c].order;
            // A resend comes after the original, like a Finicity retry.
            let original = order.iter().position(|s| *s == Slot::Event { step, duplicate: false }).unwrap_or(0);
            let at = rng.random_range(original + 1..=order.len());
            order.insert(at, Slot::Event { step, duplicate: true });
        }

        for customer in &mut customers {
            if spec.shuffle {
                customer.order.shuffle(&mut rng);
            }
            customer.order.insert(0, Slot::Ping);
        }
        Ok(Self { seed: spec.seed, customers })
    }

    /// How many webhooks the plan sends, pings and duplicates included.
    pub fn deliveries(&self) -> u64 {
        self.customers.iter().map(|c| c.order.len() as u64).sum()
    }

    /// How many sends repeat an event.
    pub fn duplicates(&self) -> u64 {
        self.customers.iter().map(|c| c.duplicates() as u64).sum()
    }
}

/// 12 digits derived from the seed, the first not zero: ids from different
/// seeds differ (short of a hash collision, about one in 10^12 per pair), so
/// runs do not mix their customers.
pub fn customer_id_prefix(seed: u64) -> String {
    let hash = Sha256::digest(format!("connectflow-simulate/{seed}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    let lowest = 10u64.pow(PREFIX_DIGITS as u32 - 1);
    (lowest + u64::from_be_bytes(first) % (9 * lowest)).to_string()
}

#[cfg(test)]
mod tests;
