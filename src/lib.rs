//! connectflow: Finicity Connect webhooks made into a reliable, queryable
//! record of each customer's consent and authentication lifecycle.
//!
//! The modules follow the data's journey: [`receive`] (HTTP, signature,
//! normalise) -> [`publish`] (Kafka producer) -> [`consume`] (Kafka consumer)
//! -> [`lifecycle`] (the pure state machine) -> [`store`] (Postgres) ->
//! [`api`] (the HTTP API under `/v1`) and [`console`] (the operator console
//! on top of it).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod backoff;
pub mod change;
pub mod cli;
pub mod config;
pub mod console;
pub mod consume;
pub mod dead_letter;
pub mod error;
pub mod event;
pub mod expiry;
pub mod health;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod outbox;
pub mod publish;
pub mod receive;
pub mod serve;
pub mod simulate;
pub mod store;
pub mod telemetry;
