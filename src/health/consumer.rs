//! What the consumer's lanes tell `/livez` and `/metrics`: whether a lane has
//! held records without progress for too long (a stall), and how old the
//! oldest record it has not applied yet is.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One lane's progress.
#[derive(Debug, Default)]
struct LaneState {
    /// Since when the lane holds records without having made progress: set
    /// when it takes a batch, moved forward by every commit or park, cleared
    /// when the batch is done.
    waiting_since: Option<Instant>,
    /// When the oldest record the lane holds was polled from Kafka.
    oldest_polled_at: Option<Instant>,
}

/// The health of every lane of one consumer.
#[derive(Debug)]
pub struct ConsumerHealth {
    lanes: Vec<Mutex<LaneState>>,
    stall_after: Duration,
}

/// A lane found stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The lane's index.
    pub lane: usize,
    /// How long it has held records without progress.
    pub for_: Duration,
}

impl ConsumerHealth {
    /// Health for `lanes` lanes; a lane is stalled after `stall_after`
    /// without progress while it holds records.
    pub fn new(lanes: usize, stall_after: Duration) -> Self {
        Self { lanes: (0..lanes).map(|_| Mutex::default()).collect(), stall_after }
    }

    fn with_lane(&self, lane: usize, change: impl FnOnce(&mut LaneState)) {
        if let Some(state) = self.lanes.get(lane) {
            // A poisoned lock only means a panic elsewhere: the state is two
            // timestamps and stays usable.
            change(&mut state.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }

    /// The lane took a batch whose oldest record was polled at `polled_at`.
    pub fn batch_started(&self, lane: usize, polled_at: Instant) {
        self.with_lane(lane, |s| {
            s.waiting_since = Some(Instant::now());
            s.oldest_polled_at = Some(polled_at);
        });
    }

    /// The lane committed or parked part of its batch.
    pub fn progressed(&self, lane: usize) {
        self.with_lane(lane, |s| {
            if s.waiting_since.is_some() {
                s.waiting_since = Some(Instant::now());
            }
        });
    }

    /// The lane finished its batch.
    pub fn batch_done(&self, lane: usize) {
        self.with_lane(lane, |s| *s = LaneState::default());
    }

    /// The lanes stalled now, if any.
    pub fn stalls(&self) -> Vec<Stall> {
        let now = Instant::now();
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(lane, state)| {
                let since = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).waiting_since?;
                let for_ = now.saturating_duration_since(since);
                (for_ > self.stall_after).then_some(Stall { lane, for_ })
            })
            .collect()
    }

    /// Per lane, the age of the oldest record it holds (zero when idle).
    pub fn oldest_unapplied(&self) -> Vec<Duration> {
        let now = Instant::now();
        self.lanes
            .iter()
            .map(|state| {
                state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .oldest_polled_at
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_holding_records_without_progress_is_stalled_and_an_idle_one_is_not() {
        let health = ConsumerHealth::new(2, Duration::from_millis(20));
        assert!(health.stalls().is_empty(), "idle lanes never stall");
        health.batch_started(1, Instant::now());
        assert!(health.stalls().is_empty(), "not yet");
        std::thread::sleep(Duration::from_millis(40));
        let stalls = health.stalls();
        assert_eq!(stalls.len(), 1);
        assert_eq!(stalls[0].lane, 1);
        assert!(health.oldest_unapplied()[1] >= Duration::from_millis(40));
        assert_eq!(health.oldest_unapplied()[0], Duration::ZERO);
        health.progressed(1);
        assert!(health.stalls().is_empty(), "progress resets the clock");
        health.batch_done(1);
        std::thread::sleep(Duration::from_millis(40));
        assert!(health.stalls().is_empty(), "a finished lane is idle");
        assert_eq!(health.oldest_unapplied()[1], Duration::ZERO);
    }
}
