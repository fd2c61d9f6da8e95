//! The lifecycle-change outbox and its relay: the changes the store
//! recorded in the consumer's transaction ([`crate::store::changes`]) are
//! published to `CONNECTFLOW_CHANGES_TOPIC`, in `(customer, version)`
//! order, and deleted from the outbox only after Kafka confirmed them.
//!
//! - **Wakes without busy polling**: the consumer's lanes wake the relay of
//!   their own process after each batch that recorded changes (in memory: a
//!   `NOTIFY` from every batch would serialise the lanes' commits, since
//!   Postgres takes a database-wide lock to commit a notifying
//!   transaction). Writers outside `consume` (`reproject`) `NOTIFY` on
//!   [`CHANGES_CHANNEL`](crate::store::changes::CHANGES_CHANNEL), which the
//!   relay `LISTEN`s to, and it polls every [`SAFETY_POLL`] anyway (a
//!   notification is lost while the listening connection is down).
//! - **Several relays (one per `consume` process) never publish one
//!   customer's versions concurrently or out of order**: a relay claims
//!   customers with a transaction-scoped advisory lock of their own
//!   (`pg_try_advisory_xact_lock` on `connectflow.relay:<customer>`; a
//!   customer another relay holds is skipped, not waited for), publishes each
//!   claimed customer's unpublished versions one after another, and marks
//!   them in the same transaction. Customers are claimed per transaction,
//!   not by Kafka partition, so a relay needs no partition assignment and
//!   keeps working when consumers come and go.
//! - **Exactly one record per change, except after a crash**: a relay that
//!   dies between Kafka's confirmation and its commit leaves the rows
//!   unpublished, and they are published again: subscribers de-duplicate by
//!   `change_id`. Never a gap: a version is marked only when it and every
//!   earlier one are confirmed.

mod relay;

pub use relay::{Relay, SAFETY_POLL};

use crate::store::error::StoreError;

/// Why a relay round did not publish everything it claimed. Either way the
/// changes stay in the outbox and the next round publishes them.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed claiming, reading or marking changes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka refused or did not confirm some changes in time.
    #[error("publishing lifecycle changes: {count} changes not confirmed by Kafka")]
    Unconfirmed {
        /// How many.
        count: usize,
    },
}
