//! Integration tests on real Postgres and real Kafka (see helpers.rs).

mod audit;
mod browser;
mod changes;
mod config;
mod consent;
mod console;
mod console_programs;
mod consumer;
mod foundations;
mod helpers;
mod isolation;
mod kafka_util;
mod lifecycle;
mod minimisation;
mod pg_proxy;
mod programs;
mod query;
mod receive;
mod receive_hardening;
mod receive_properties;
mod simulate;
mod stats;
mod tokens;
mod topics;
