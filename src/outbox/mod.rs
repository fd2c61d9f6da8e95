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
//!   relay `LISTEN`s to on a connection of its own, and it polls every
//!   [`SAFETY_POLL`] anyway (a notification is lost while the listening
//!   connection is down).
//! - **The consumer's changes need no claim** ([`RelayHandle`]): a lane
//!   with a place reserved in its relay's queue writes the rows of
//!   customers with nothing else unpublished already leased to a token of
//!   its own ([`crate::store::changes::Announce::HandOff`]) and hands the
//!   records to the relay after the commit; the relay publishes and
//!   settles them as a claimed round. A customer with a change in flight
//!   waits for it, claimed: its rows are written unleased, and a hand-off
//!   that held a customer another batch woke the relay for claims again
//!   when it settles.
//! - **No transaction open while Kafka is slow**: a round *claims* up to
//!   1000 customers in a short transaction, leasing all of each one's
//!   unpublished rows (`leased_until`, and a `lease_token` of the round),
//!   commits, publishes, then *settles* in another short transaction that
//!   touches only rows still carrying its token.
//! - **Several relays (one per `consume` process) never publish one
//!   customer's versions concurrently or out of order**: a customer is
//!   claimed only when none of its rows is leased or backing off, under a
//!   transaction-scoped advisory lock of its own
//!   (`pg_try_advisory_xact_lock` on `connectflow.relay:<customer>`; a
//!   customer another relay is claiming is skipped, not waited for), and a
//!   lease outlasts the longest round. Customers are claimed, not Kafka
//!   partitions, so a relay needs no partition assignment and keeps working
//!   when consumers come and go.
//! - **One customer holds back only itself**: a change Kafka does not
//!   confirm stops its customer's round there and sets `not_before` on it
//!   (100 ms, doubling per attempt, at most 30 s); the other customers go
//!   on, and two rounds run at once, so a round waiting on Kafka for
//!   one customer does not hold back the next wake-up's round (the leases
//!   keep rounds apart as they keep relays apart). A change the changes topic refuses for good (too large, invalid;
//!   tried alone first, since the broker refuses a batch as a whole) is
//!   *parked*: a metadata-only record on the dead-letter topic, the counter
//!   `connectflow_lifecycle_changes_parked_total{reason}`, and its row
//!   marked `parked_at`, never claimed again. The customer's later changes
//!   follow it: each carries the whole `after`, so a subscriber misses one
//!   step of the customer's history, not its state.
//! - **Exactly one record per change, except after a crash**: a relay that
//!   dies between Kafka's confirmation and settling leaves the rows leased
//!   until the lease runs out (two minutes), and another relay publishes
//!   them again: subscribers de-duplicate by `change_id`. Never a gap: a
//!   version is deleted only when it and every earlier one are confirmed or
//!   parked. An erasure deletes a customer's outbox rows but the leased
//!   ones, which their relay settles (a row whose record the erasure
//!   deleted goes unpublished), so the erased change and its tombstone
//!   never overtake a change in flight.

mod handle;
mod relay;

pub use handle::{HandOffSlot, RelayHandle};
pub use relay::{LEASE, Relay, SAFETY_POLL};

use crate::store::error::StoreError;

/// Why a relay round stopped: Postgres failed claiming or settling. The
/// changes stay in the outbox and a later round publishes them (a lease
/// taken runs out first).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed claiming, reading or settling changes.
    #[error(transparent)]
    Store(#[from] StoreError),
}
