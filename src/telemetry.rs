//! Structured logging with `tracing`: JSON in production, pretty on a terminal;
//! and [`LogLimiter`], which keeps a flood of one kind of event from flooding
//! the log.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Pretty } else { LogFormat::Json });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // Already installed (tests start several apps in one process): keep it.
    let _ = result;
}

/// Lets at most one log line per key through each interval, and counts the
/// ones it held back, so a flood (10,000 bad signatures a second) writes a
/// line a second per reason instead of 10,000, and the line says how many
/// were left out. The metrics still count every event: this only thins the
/// log.
///
/// Keys are `&'static str` reasons, so the set is bounded by the code. The
/// count held back since a key's last line is reported by its next line: a
/// burst that ends leaves its count to the next event of that key (the
/// metrics have it at once). Time is passed in, so tests need no clock.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    keys: Mutex<HashMap<&'static str, Window>>,
}

/// One key's state: when its last line went out, and how many were held
/// back since.
#[derive(Debug, Clone, Copy)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

impl Default for LogLimiter {
    /// One line per key per second.
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl LogLimiter {
    /// At most one line per key per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self { interval, keys: Mutex::new(HashMap::new()) }
    }

    /// `Some(held back since the key's last line)`: log this one (with that
    /// count, e.g. a `suppressed` field). `None`: leave it out (counted).
    pub fn admit(&self, key: &'static str, now: Instant) -> Option<u64> {
        // Nothing below panics, so a poisoned lock still holds sound state.
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        match keys.get_mut(key) {
            Some(window) if now.saturating_duration_since(window.logged_at) < self.interval => {
                window.suppressed = window.suppressed.saturating_add(1);
                None
            }
            Some(window) => {
                let suppressed = window.suppressed;
                *window = Window { logged_at: now, suppressed: 0 };
                Some(suppressed)
            }
            None => {
                keys.insert(key, Window { logged_at: now, suppressed: 0 });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_event_of_a_key_is_logged() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.admit("bad signature", Instant::now()), Some(0));
    }

    #[test]
    fn one_line_per_interval_carries_the_count_left_out() {
        let limiter = LogLimiter::new(SECOND);
        let start = Instant::now();
        assert_eq!(limiter.admit("k", start), Some(0));
        for ms in 1..=999 {
            assert_eq!(limiter.admit("k", start + Duration::from_millis(ms)), None, "{ms} ms");
        }
        assert_eq!(limiter.admit("k", start + SECOND), Some(999), "a full interval later");
        assert_eq!(limiter.admit("k", start + SECOND + Duration::from_millis(1)), None);
        assert_eq!(limiter.admit("k", start + 5 * SECOND), Some(1), "the count restarted at the last line");
        assert_eq!(limiter.admit("k", start + 6 * SECOND), Some(0), "nothing left out in between");
    }

    #[test]
    fn keys_are_limited_independently() {
        let limiter = LogLimiter::new(SECOND);
        let now = Instant::now();
        assert_eq!(limiter.admit("invalid_signature", now), Some(0));
        assert_eq!(limiter.admit("payload_too_large", now), Some(0));
        assert_eq!(limiter.admit("invalid_signature", now), None);
        assert_eq!(limiter.admit("invalid_signature", now), None);
        assert_eq!(limiter.admit("payload_too_large", now + SECOND), Some(0));
        assert_eq!(limiter.admit("invalid_signature", now + SECOND), Some(2));
    }

    #[test]
    fn a_clock_read_out_of_order_is_left_out_not_a_panic() {
        // Threads read `Instant::now()` before taking the lock, so an
        // earlier instant can arrive after a later one.
        let limiter = LogLimiter::new(SECOND);
        let now = Instant::now() + 10 * SECOND;
        assert_eq!(limiter.admit("k", now), Some(0));
        assert_eq!(limiter.admit("k", now - SECOND), None);
        assert_eq!(limiter.admit("k", now + SECOND), Some(1));
    }

    #[test]
    fn threads_together_log_once_and_count_the_rest() {
        let limiter = std::sync::Arc::new(LogLimiter::new(SECOND));
        let now = Instant::now();
        let admitted: u64 = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || (0..1000).filter(|_| limiter.admit("k", now).is_some()).count() as u64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().expect("thread"))
            .sum();
        assert_eq!(admitted, 1);
        assert_eq!(limiter.admit("k", now + SECOND), Some(7999));
    }
}
