//! The one backoff of every loop that waits out an outage: the consumer's
//! lanes (Postgres away), the outbox relay (Postgres or Kafka away) and
//! parking a dead letter (Kafka refusing): a first pause, doubled after each
//! failure up to a cap, back to the first after a success, and a sleep that
//! shutdown cuts short.
//!
//! Why a type of our own rather than `backon` or `tokio-retry`: both retry a
//! closure until it succeeds (`op.retry(policy).when(..).notify(..)`), and
//! none of the three loops has that shape. Parking switches from the whole
//! record to its metadata without pausing and gives up after a time, not a
//! count; a lane drops revoked records and takes the assignment lock anew
//! for each attempt; the relay waits for notifications and reconnects its
//! listener between rounds, and only its failures pause. What the loops
//! share is the arithmetic of the pause and a sleep in a `select!` with the
//! `CancellationToken`; with a crate they would keep their loops and use it
//! as an iterator of durations, a dependency for these few lines.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A capped, doubling pause between attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 100 ms, then 200 ms, 400 ms, ... up to 5 s: a blip costs a tenth of a
    /// second, an outage one attempt every 5 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Starts at `first`; never pauses longer than `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, next: first }
    }

    /// The pause the next [`wait`](Self::wait) takes (for the log line that
    /// announces the retry).
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// Back to the first pause: the next failure is a new one.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for [`delay`](Self::delay) and doubles the next pause, up to
    /// the cap. Returns false, as soon as it happens, when `shutdown` is
    /// cancelled first.
    #[must_use = "false means shutdown: stop retrying"]
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.advance();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }

    /// The current pause, without sleeping; doubles the next one (for a
    /// loop that waits in a `select!` of its own, as the relay does).
    pub fn advance(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_a_reset_starts_again() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.advance().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        assert_eq!(backoff.delay(), Duration::from_millis(500));
        backoff.reset();
        assert_eq!(backoff.delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn shutdown_cuts_a_pause_short() {
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!backoff.wait(&shutdown).await, "cancelled: no hour-long sleep");
        let mut short = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert!(short.wait(&CancellationToken::new()).await);
    }
}
