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

mod access_log;
pub mod api;
pub mod app;
mod backoff;
pub mod change;
pub mod cli;
pub mod config;
mod console;
mod consume;
pub mod dead_letter;
mod error;
pub mod event;
mod expiry;
mod health;
mod history;
pub mod institution;
pub mod institution_health;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod outbox;
pub mod program;
mod publish;
pub mod receive;
mod retention;
mod secret;
mod serve;
pub mod simulate;
pub mod store;
pub mod telemetry;
