//! What bounds the cost of the statistics routes: a share of the API's
//! connections (`CONNECTFLOW_STATS_CONCURRENCY` places, so that a burst of
//! statistics requests leaves lookups, listings and revocations their
//! connections) and a cache of recent answers
//! (`CONNECTFLOW_STATS_CACHE_SECONDS`), so that a dashboard polling the same
//! window computes it once per period.
//!
//! An answer is cached per query (the route, its parameters parsed: two
//! spellings of one time are one query) and per set of programs visible: two
//! tokens that see the same programs share answers, a token never gets one
//! computed for other programs.

use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hashlink::LruCache;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::model::{Funnel, Institutions, Timeseries};
use crate::error::ApiError;
use crate::telemetry::LogLimiter;

/// Answers kept per route, at most; the least recently used goes first.
pub const CACHED_ANSWERS_PER_ROUTE: usize = 1_000;

/// A statistics query as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatsQuery {
    /// `since` as asked (`None`: the default).
    pub since: Option<DateTime<Utc>>,
    /// `until` as asked (`None`: now, when computed).
    pub until: Option<DateTime<Utc>>,
    /// What else the route takes (the bucket's length in seconds, the
    /// institutions' limit; 0 for the funnel).
    pub detail: i64,
    /// The programs visible, sorted (`None`: every program).
    pub programs: Option<Vec<String>>,
}

impl StatsQuery {
    /// The query; `programs` is sorted so that its order does not matter.
    pub fn new(
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        detail: i64,
        programs: Option<&[String]>,
    ) -> Self {
        let programs = programs.map(|programs| {
            let mut programs = programs.to_vec();
            programs.sort_unstable();
            programs.dedup();
            programs
        });
        Self { since, until, detail, programs }
    }
}

/// Recent answers of one route, for `ttl` each, at most `capacity` of them.
#[derive(Debug)]
pub struct AnswerCache<K: Eq + Hash, V> {
    ttl: Duration,
    answers: Mutex<LruCache<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> AnswerCache<K, V> {
    /// A cache keeping answers `ttl` (zero: none).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, answers: Mutex::new(LruCache::new(capacity.max(1))) }
    }

    /// The answer to `key` computed less than `ttl` ago.
    pub fn get(&self, key: &K) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        // A panic elsewhere while holding the lock leaves a valid map.
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        match answers.get(key) {
            Some((at, answer)) if at.elapsed() < self.ttl => Some(answer.clone()),
            Some(_) => {
                answers.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for `key`, evicting the least recently used answer
    /// when full.
    pub fn insert(&self, key: K, answer: V) {
        if self.ttl.is_zero() {
            return;
        }
        self.answers.lock().unwrap_or_else(PoisonError::into_inner).insert(key, (Instant::now(), answer));
    }
}

/// The statistics routes' places and cached answers.
#[derive(Debug)]
pub struct StatsCost {
    places: Semaphore,
    wait: Duration,
    refusals_log: LogLimiter,
    /// `/v1/stats/funnel`.
    pub funnel: AnswerCache<StatsQuery, Funnel>,
    /// `/v1/stats/timeseries`.
    pub timeseries: AnswerCache<StatsQuery, Timeseries>,
    /// `/v1/stats/institutions`.
    pub institutions: AnswerCache<StatsQuery, Institutions>,
}

impl StatsCost {
    /// `concurrency` statistics requests computed at once, each waiting for
    /// a place at most `wait`; answers kept `ttl`.
    pub fn new(concurrency: usize, wait: Duration, ttl: Duration) -> Self {
        Self {
            places: Semaphore::new(concurrency),
            wait,
            refusals_log: LogLimiter::default(),
            funnel: AnswerCache::new(ttl, CACHED_ANSWERS_PER_ROUTE),
            timeseries: AnswerCache::new(ttl, CACHED_ANSWERS_PER_ROUTE),
            institutions: AnswerCache::new(ttl, CACHED_ANSWERS_PER_ROUTE),
        }
    }

    /// A place to compute a statistics answer, held until dropped; 503
    /// `busy` when none frees up within the wait.
    pub async fn place(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(self.wait, self.places.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or closed (never: the semaphore is not closed).
            Ok(Err(_)) | Err(_) => {
                if let Some(suppressed) = self.refusals_log.admit("busy", Instant::now()) {
                    tracing::warn!(wait = ?self.wait, suppressed, "statistics request refused: every statistics place is taken");
                }
                Err(ApiError::Busy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_for_their_ttl_only_and_not_at_all_with_zero() {
        let cache = AnswerCache::new(Duration::from_secs(3600), 10);
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"b"), None);
        let expired = AnswerCache::new(Duration::from_nanos(1), 10);
        expired.insert("a", 1);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(expired.get(&"a"), None);
        let disabled = AnswerCache::new(Duration::ZERO, 10);
        disabled.insert("a", 1);
        assert_eq!(disabled.get(&"a"), None);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used() {
        let cache = AnswerCache::new(Duration::from_secs(3600), 2);
        cache.insert("a", 1);
        cache.insert("b", 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.insert("c", 3);
        assert_eq!((cache.get(&"a"), cache.get(&"b"), cache.get(&"c")), (Some(1), None, Some(3)));
    }

    #[test]
    fn the_programs_of_a_query_are_a_set_and_part_of_its_key() {
        let (one, two) = (["acme".to_owned(), "zeta".to_owned()], ["zeta".to_owned(), "acme".to_owned()]);
        assert_eq!(StatsQuery::new(None, None, 0, Some(&one)), StatsQuery::new(None, None, 0, Some(&two)));
        assert_ne!(StatsQuery::new(None, None, 0, Some(&one[..1])), StatsQuery::new(None, None, 0, Some(&one)));
        assert_ne!(StatsQuery::new(None, None, 0, None), StatsQuery::new(None, None, 0, Some(&one)));
    }

    #[tokio::test]
    async fn a_statistics_request_past_the_places_is_busy_after_the_wait() {
        let cost = StatsCost::new(1, Duration::from_millis(20), Duration::ZERO);
        let held = cost.place().await.expect("the one place");
        assert!(matches!(cost.place().await, Err(ApiError::Busy)));
        drop(held);
        assert!(cost.place().await.is_ok());
    }
}
