//! [`StoreError`]: what went wrong in Postgres, classified so the consumer
//! can decide between retrying a batch and parking a record.

use std::borrow::Cow;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres (or the way to it) failed in a way that can pass: retry the
    /// same work later.
    #[error("{context}: {source}")]
    Transient {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The data itself cannot be stored or read back: retrying the same work
    /// fails the same way. The consumer isolates and parks the record.
    #[error("{context}: {reason}")]
    Permanent {
        /// What was being done.
        context: &'static str,
        /// Why, for the `dlq_reason` header: the SQLSTATE and the table,
        /// column or constraint Postgres named, or the decoding error. Never
        /// a stored value.
        reason: String,
    },
    /// What is already stored for a customer, not the work at hand, is at
    /// fault: a lifecycle written by a newer version, a history that no
    /// longer decodes, a duplicate change version after a restore. Parking
    /// the new event would lose a valid event for it, and recomputing with
    /// older rules could move the customer backwards: the consumer stalls
    /// instead (retrying, `/livez` failing) until an operator or a newer
    /// version resolves it.
    #[error("{context}: the stored state of customer {customer_id} is in the way: {reason}")]
    StoredState {
        /// What was being done.
        context: &'static str,
        /// The customer whose stored state is in the way.
        customer_id: String,
        /// Why (never a stored value).
        reason: String,
    },
    /// The group's stored position in a partition is behind the first
    /// record of the batch: Postgres lost transactions this consumer had
    /// applied (a failover). Nothing was written; the consumer reads the
    /// partitions again from the stored positions.
    #[error(
        "the stored consumer positions are behind the batch (Postgres lost applied transactions): {}",
        describe_gaps(gaps)
    )]
    PositionsBehind {
        /// The partitions, their stored positions and the batch's first offsets.
        gaps: Vec<crate::store::positions::PositionGap>,
    },
}

fn describe_gaps(gaps: &[crate::store::positions::PositionGap]) -> String {
    gaps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl StoreError {
    /// Whether retrying the same work can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Whether stored state, not the work at hand, is at fault
    /// ([`StoreError::StoredState`]).
    pub fn is_stored_state(&self) -> bool {
        matches!(self, Self::StoredState { .. })
    }

    /// Whether this is Postgres' unique violation (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Permanent { reason, .. } if reason.starts_with(UNIQUE_VIOLATION_REASON))
    }

    /// A permanent error for data that does not decode.
    pub fn undecodable(context: &'static str, err: &serde_json::Error) -> Self {
        Self::Permanent { context, reason: format!("does not decode: {}", bounded(&err.to_string())) }
    }

    /// Classifies a sqlx error met while doing `context`.
    pub fn from_sqlx(context: &'static str, source: sqlx::Error) -> Self {
        match &source {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) if is_permanent_sqlstate(&code) => {
                    Self::Permanent { context, reason: database_reason(&code, db.as_ref()) }
                }
                _ => Self::Transient { context, source },
            },
            // Encoding a parameter or decoding a column fails the same way
            // every time.
            sqlx::Error::Encode(err) | sqlx::Error::Decode(err) => {
                Self::Permanent { context, reason: format!("value does not convert: {}", bounded(&err.to_string())) }
            }
            sqlx::Error::ColumnDecode { index, source: err } => Self::Permanent {
                context,
                reason: format!("column {index} does not decode: {}", bounded(&err.to_string())),
            },
            // Connections lost or refused, pool timeouts, TLS and protocol
            // trouble, and anything not known to be about the data.
            _ => Self::Transient { context, source },
        }
    }
}

/// Whether a sqlx error says Postgres cannot be reached or used *now*: the
/// connection failed or was lost, the pool is exhausted, or Postgres
/// reported a connection, resource or shutdown class (08, 53, 57). The query
/// API answers those 503 (retry) rather than 500.
pub fn is_transient_sqlx(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("53") || code.starts_with("57"))
        }
        _ => false,
    }
}

/// Extension for `Result<T, sqlx::Error>`: `.store("what")?`.
pub trait StoreResultExt<T> {
    /// Classifies the error (see [`StoreError::from_sqlx`]).
    fn store(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> StoreResultExt<T> for Result<T, sqlx::Error> {
    fn store(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|err| StoreError::from_sqlx(context, err))
    }
}

/// SQLSTATEs that say the data is at fault:
/// class 22 (data exception: a NUL in text, a value out of range), class 23
/// (integrity: a check constraint; the dedup itself never raises one, it is
/// `ON CONFLICT DO NOTHING`) and class 54 (program limit: an index row over
/// the btree limit). Everything else is retried: class 08 (connection), 53
/// (insufficient resources), 57P01-57P03 (shutdown, cannot connect now),
/// 40001 and 40P01 (serialisation failure, deadlock), 55P03 (lock not
/// available), and unknown codes, which are more likely an outage or a
/// migration in progress than a bad record. A lane stuck on those shows in
/// `/livez` (`CONNECTFLOW_CONSUMER_STALL_SECONDS`).
pub fn is_permanent_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
}

/// How the reason of a unique violation starts (see [`database_reason`]).
const UNIQUE_VIOLATION_REASON: &str = "postgres SQLSTATE 23505";

fn database_reason(code: &str, db: &dyn sqlx::error::DatabaseError) -> String {
    let mut reason = format!("postgres SQLSTATE {code}: {}", bounded(db.message()));
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        for (what, name) in [("table", pg.table()), ("column", pg.column()), ("constraint", pg.constraint())] {
            if let Some(name) = name {
                reason.push_str(&format!("; {what} {name}"));
            }
        }
    }
    reason
}

/// At most 200 characters: Postgres messages can quote a value.
fn bounded(text: &str) -> Cow<'_, str> {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => Cow::Owned(format!("{}...", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_as_the_contract_says() {
        for permanent in ["22P05", "22001", "22008", "23514", "23502", "54000"] {
            assert!(is_permanent_sqlstate(permanent), "{permanent}");
        }
        for transient in ["08006", "08001", "53300", "57P01", "57P02", "57P03", "40001", "40P01", "55P03", "42P01"] {
            assert!(!is_permanent_sqlstate(transient), "{transient}");
        }
    }

    #[test]
    fn connection_trouble_is_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(StoreError::from_sqlx("x", io).is_transient());
        assert!(StoreError::from_sqlx("x", sqlx::Error::PoolTimedOut).is_transient());
        assert!(!StoreError::from_sqlx("x", sqlx::Error::Decode("bad".into())).is_transient());
    }

    #[test]
    fn reasons_are_bounded() {
        let long = "x".repeat(5000);
        assert!(bounded(&long).len() < 220);
        assert_eq!(bounded("short"), "short");
    }
}
