//! connectflow: Finicity Connect webhooks made into a reliable, queryable
//! record of each customer's consent and authentication lifecycle.
//!
//! The modules follow the data's journey: [`receive`] (HTTP, signature,
//! normalise) -> [`publish`] (Kafka producer) -> [`consume`] (Kafka consumer)
//! -> [`lifecycle`] (the pure state machine) -> [`store`] (Postgres) ->
//! [`query`] (the HTTP API), [`stats`] (its aggregates) and [`console`] (the
//! operator console on top of them).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod consume;
pub mod error;
pub mod event;
pub mod health;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod publish;
pub mod query;
pub mod receive;
pub mod revocation;
pub mod serve;
pub mod simulate;
pub mod stats;
pub mod store;
pub mod telemetry;
