//! Integration tests on real Postgres and real Kafka (see helpers.rs).

mod config;
mod foundations;
mod helpers;
mod kafka_util;
mod lifecycle;
mod query;
mod receive;
mod simulate;
