//! Integration tests on real Postgres and real Kafka (see helpers.rs).

mod changes;
mod config;
mod consent;
mod consumer;
mod foundations;
mod helpers;
mod kafka_util;
mod lifecycle;
mod pg_proxy;
mod query;
mod receive;
mod receive_hardening;
mod receive_properties;
mod simulate;
mod topics;
