//! What bounds the cost of the statistics routes: a share of the API's
//! connections (`CONNECTFLOW_STATS_CONCURRENCY` places, so that a burst of
//! statistics requests leaves lookups, listings and revocations their
//! connections; a time series takes one place, and a second when one is
//! free, to count the two halves of its window at once) and a cache of recent
//! answers
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

/// The places a time series takes at most: its window is counted in as many
/// parts at once, each a statement on a connection of its own. Postgres
/// counts the funnel and the institutions in parallel by itself (the
/// customers' extended statistics tell it how few groups they have) but
/// never a time series (it cannot estimate the groups of `date_bin`, so it
/// expects one per row), so two parts take about a third less time on this
/// machine's two cores (docs/benchmarks.md), and half on a database with
/// cores to spare.
pub const MOST_PARTS: usize = 2;

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

    /// Places to compute a statistics answer, held until dropped (as many
    /// as the permit's `num_permits`: the parts the request may count in):
    /// one, waited for, and the `most - 1` more if they are free then
    /// (never waited for, and never taken from a request waiting: the
    /// semaphore hands places to its waiters first); 503 `busy` when none
    /// frees up within the wait.
    pub async fn places(&self, most: usize) -> Result<SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(self.wait, self.places.acquire()).await {
            Ok(Ok(mut places)) => {
                let more = u32::try_from(most.saturating_sub(1)).unwrap_or(0);
                if more > 0
                    && let Ok(more) = self.places.try_acquire_many(more)
                {
                    places.merge(more);
                }
                Ok(places)
            }
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
        let held = cost.places(1).await.expect("the one place");
        assert_eq!(held.num_permits(), 1);
        assert!(matches!(cost.places(MOST_PARTS).await, Err(ApiError::Busy)));
        drop(held);
        assert!(cost.places(MOST_PARTS).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_takes_a_second_place_only_when_one_is_free() {
        let cost = StatsCost::new(3, Duration::from_millis(20), Duration::ZERO);
        let first = cost.places(MOST_PARTS).await.expect("places");
        assert_eq!(first.num_permits(), MOST_PARTS);
        // One place left: the next request counts in one part, and the one
        // after it waits, then is busy.
        let second = cost.places(MOST_PARTS).await.expect("the last place");
        assert_eq!(second.num_permits(), 1);
        assert!(matches!(cost.places(MOST_PARTS).await, Err(ApiError::Busy)));
        drop(first);
        assert_eq!(cost.places(MOST_PARTS).await.expect("places again").num_permits(), MOST_PARTS);
        assert_eq!(cost.places(1).await.expect("a place").num_permits(), 1, "a request that asks for one");
    }

    #[tokio::test]
    async fn a_free_place_goes_to_a_waiting_request_before_a_second_part() {
        let cost = std::sync::Arc::new(StatsCost::new(2, Duration::from_secs(5), Duration::ZERO));
        let first = cost.places(MOST_PARTS).await.expect("places");
        assert_eq!(first.num_permits(), 2);
        let waiting = tokio::spawn({
            let cost = cost.clone();
            async move { cost.places(MOST_PARTS).await.map(|places| places.num_permits()) }
        });
        // The waiter is queued before the places are released.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        let third = cost.places(MOST_PARTS).await.expect("a place");
        assert_eq!(third.num_permits(), 1, "one of the two places went to the waiter");
        assert_eq!(waiting.await.expect("the waiter").expect("a place"), 1);
    }
}
