//! The issued tokens an API process accepts: an in-memory copy of the
//! active rows of `api_tokens`, refreshed from Postgres every
//! [`REFRESH_INTERVAL`], and the uses waiting to be written back as
//! `last_used_at`.
//!
//! A request never reads Postgres to authenticate: it looks its token's
//! digest up in the copy, and checks the expiry against its own clock (a
//! token that expires between two refreshes stops at once). A token issued
//! or revoked elsewhere is seen at the next refresh, so within
//! `REFRESH_INTERVAL` plus one query in every process. When Postgres cannot
//! be read the last good copy stays in use (bootstrap tokens never depend on
//! it).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::principal::{Principal, ProgramAccess, Scope, Scopes};
use crate::program::ProgramId;
use crate::store::error::StoreError;
use crate::store::tokens::{self, ActiveToken};

/// How often the copy is refreshed: issued, revoked and expired tokens take
/// effect within 5 s (this plus a query).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// A token's use is written back at most this often (per token and process).
pub const USE_GRANULARITY_S: i64 = 60;

/// The longest a final write of the uses may hold up shutdown.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// One active issued token.
#[derive(Debug)]
pub(super) struct CachedToken {
    pub(super) principal: Principal,
    expires_at: Option<DateTime<Utc>>,
    /// When a use was last reported for writing (Unix seconds; 0 = never).
    reported_use: AtomicI64,
}

impl CachedToken {
    /// Whether the token still works at `now`.
    pub(super) fn works_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|expires_at| now < expires_at)
    }

    /// Whether a use at `now` is to be written: the first use a minute
    /// after the last one written. Exactly one concurrent caller wins.
    fn claim_use(&self, now: DateTime<Utc>) -> bool {
        let now = now.timestamp();
        let last = self.reported_use.load(Ordering::Relaxed);
        now - last >= USE_GRANULARITY_S
            && self.reported_use.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// The active issued tokens by their digest.
///
/// A plain `HashMap` lookup is not a timing oracle here: what is looked up is
/// the SHA-256 of the presented token, and issued tokens carry 256 random
/// bits, so learning how many leading bytes of a digest matched says nothing
/// usable about any token. (Bootstrap tokens, chosen by people, keep the
/// constant-time comparison.)
#[derive(Debug, Default)]
pub(super) struct IssuedTokens {
    by_digest: HashMap<[u8; 32], CachedToken>,
}

impl IssuedTokens {
    /// From the active rows. A use already reported by `previous` (this
    /// process's copy until now) or written by any process is carried over,
    /// so a refresh does not make a token's use due again.
    fn from_rows(rows: Vec<ActiveToken>, previous: &Self) -> Self {
        let mut by_digest = HashMap::with_capacity(rows.len());
        for row in rows {
            let Ok(digest) = <[u8; 32]>::try_from(row.digest.as_slice()) else {
                tracing::warn!(token_id = %row.token_id, "an API token's digest is not 32 bytes; ignored");
                continue;
            };
            let reported = previous.by_digest.get(&digest).map_or(0, |old| old.reported_use.load(Ordering::Relaxed));
            let written = row.last_used_at.map_or(0, |at| at.timestamp());
            let principal = Principal {
                token_id: row.token_id.as_str().into(),
                token_name: row.name.as_str().into(),
                programs: programs(&row.token_id, row.programs),
                scopes: scopes(&row.token_id, &row.scopes),
            };
            by_digest.insert(
                digest,
                CachedToken {
                    principal,
                    expires_at: row.expires_at,
                    reported_use: AtomicI64::new(reported.max(written)),
                },
            );
        }
        Self { by_digest }
    }

    /// The token with this digest, if it is in the copy and works at `now`.
    pub(super) fn find(&self, digest: &[u8; 32], now: DateTime<Utc>) -> Option<&CachedToken> {
        self.by_digest.get(digest).filter(|token| token.works_at(now))
    }

    /// How many tokens the copy holds.
    pub(super) fn len(&self) -> usize {
        self.by_digest.len()
    }
}

/// A stored token's programs. An id this process cannot parse (never written
/// by `tokens issue`) is left out: the token sees less, never more.
fn programs(token_id: &str, stored: Option<Vec<String>>) -> ProgramAccess {
    let Some(stored) = stored else { return ProgramAccess::All };
    let mut programs = BTreeSet::new();
    for text in stored {
        match ProgramId::parse(&text) {
            Ok(program) => {
                programs.insert(program);
            }
            Err(_) => tracing::warn!(%token_id, program = %text, "an API token names an invalid program; ignored"),
        }
    }
    ProgramAccess::Only(Arc::new(programs))
}

/// A stored token's scopes. A name this process does not know (granted by
/// a newer version) is left out.
fn scopes(token_id: &str, stored: &[String]) -> Scopes {
    stored
        .iter()
        .filter_map(|name| match name.parse::<Scope>() {
            Ok(scope) => Some(scope),
            Err(_) => {
                tracing::debug!(%token_id, scope = %name, "an API token has a scope this version does not know");
                None
            }
        })
        .collect()
}

/// The issued tokens this process accepts and the uses to write back.
#[derive(Debug, Default)]
pub(super) struct IssuedCache {
    current: RwLock<Arc<IssuedTokens>>,
    /// The latest use of each token not yet written.
    uses: Mutex<HashMap<Arc<str>, DateTime<Utc>>>,
}

impl IssuedCache {
    /// The current copy (a cheap `Arc` clone; the lock is held for no more).
    pub(super) fn current(&self) -> Arc<IssuedTokens> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Notes that `token` was used at `now`, to be written at the next
    /// refresh if a minute has passed since its last written use.
    pub(super) fn note_use(&self, token: &CachedToken, now: DateTime<Utc>) {
        if token.claim_use(now) {
            let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
            uses.insert(token.principal.token_id.clone(), now);
        }
    }

    fn replace(&self, tokens: IssuedTokens) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
    }

    /// Reads the active tokens from Postgres and makes them the copy.
    /// Returns how many there are.
    pub(super) async fn refresh(&self, pool: &PgPool) -> Result<usize, StoreError> {
        let rows = tokens::active(pool).await?;
        let fresh = IssuedTokens::from_rows(rows, &self.current());
        let count = fresh.len();
        self.replace(fresh);
        Ok(count)
    }

    /// Writes the noted uses in one statement; on failure they are kept for
    /// the next attempt (one entry per token, so this stays bounded).
    pub(super) async fn write_uses(&self, pool: &PgPool) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.uses.lock().unwrap_or_else(PoisonError::into_inner));
        if pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<(String, DateTime<Utc>)> = pending.iter().map(|(id, at)| (id.to_string(), *at)).collect();
        let written = tokens::record_uses(pool, &batch).await;
        if written.is_err() {
            let mut uses = self.uses.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, at) in pending {
                let entry = uses.entry(id).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
        written
    }

    /// Refreshes the copy and writes the uses every [`REFRESH_INTERVAL`]
    /// until `shutdown`, then writes the last uses (bounded in time).
    pub(super) async fn keep_fresh(&self, pool: &PgPool, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(REFRESH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let refreshed = tokio::select! {
                () = shutdown.cancelled() => break,
                refreshed = self.refresh(pool) => refreshed,
            };
            match refreshed {
                Ok(count) if failing => {
                    failing = false;
                    tracing::info!(tokens = count, "API tokens read from Postgres again");
                }
                Ok(_) => {}
                // Logged once per outage, not every 2 s.
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "cannot read the API tokens; the last ones read stay in use");
                }
                Err(_) => {}
            }
            if let Err(err) = self.write_uses(pool).await {
                tracing::debug!(error = %err, "cannot record when API tokens were used; retrying later");
            }
        }
        match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, self.write_uses(pool)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "the last uses of API tokens were not recorded"),
            Err(_) => tracing::warn!("recording the last uses of API tokens timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration as TimeDelta;

    use super::*;

    fn row(token_id: &str, token: &str, expires_at: Option<DateTime<Utc>>) -> ActiveToken {
        ActiveToken {
            token_id: token_id.to_owned(),
            name: format!("{token_id} name"),
            digest: tokens::digest(token.as_bytes()).to_vec(),
            programs: Some(vec!["acme".to_owned(), "Not A Program".to_owned()]),
            scopes: vec!["read".to_owned(), "future-scope".to_owned()],
            expires_at,
            last_used_at: None,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn an_expired_token_stops_at_its_expiry_without_a_refresh() {
        let now = at("2026-12-04T10:00:00Z");
        let expiring = row("tok_a", "cf_a", Some(now + TimeDelta::seconds(1)));
        let cache = IssuedTokens::from_rows(vec![expiring, row("tok_b", "cf_b", None)], &IssuedTokens::default());
        let a = tokens::digest(b"cf_a");
        assert!(cache.find(&a, now).is_some());
        assert!(cache.find(&a, now + TimeDelta::milliseconds(999)).is_some());
        assert!(cache.find(&a, now + TimeDelta::seconds(1)).is_none(), "expired at its expiry");
        assert!(cache.find(&a, now + TimeDelta::days(1)).is_none());
        let b = tokens::digest(b"cf_b");
        assert!(cache.find(&b, now + TimeDelta::days(10_000)).is_some(), "no expiry: never expires");
        assert!(cache.find(&tokens::digest(b"cf_c"), now).is_none());
    }

    #[test]
    fn stored_programs_and_scopes_only_narrow() {
        let cache = IssuedTokens::from_rows(vec![row("tok_a", "cf_a", None)], &IssuedTokens::default());
        let token = cache.find(&tokens::digest(b"cf_a"), Utc::now()).expect("found");
        let principal = &token.principal;
        assert_eq!((&*principal.token_id, &*principal.token_name), ("tok_a", "tok_a name"));
        assert_eq!(principal.scopes.iter().collect::<Vec<_>>(), vec![Scope::Read]);
        let programs = principal.programs.only().expect("not all programs");
        assert_eq!(programs.iter().map(ProgramId::as_str).collect::<Vec<_>>(), vec!["acme"]);
        let mut every = row("tok_b", "cf_b", None);
        every.programs = None;
        let cache = IssuedTokens::from_rows(vec![every], &IssuedTokens::default());
        let token = cache.find(&tokens::digest(b"cf_b"), Utc::now()).expect("found");
        assert_eq!(token.principal.programs, ProgramAccess::All);
    }

    #[test]
    fn a_use_is_written_at_most_once_a_minute_and_survives_a_refresh() {
        let now = at("2026-12-04T10:00:00Z");
        let cache = IssuedCache::default();
        cache.replace(IssuedTokens::from_rows(vec![row("tok_a", "cf_a", None)], &IssuedTokens::default()));
        let digest = tokens::digest(b"cf_a");
        let current = cache.current();
        let token = current.find(&digest, now).expect("found");
        assert!(token.claim_use(now));
        assert!(!token.claim_use(now + TimeDelta::seconds(59)));
        // A refresh (the row not yet written) keeps what was reported.
        let refreshed = IssuedTokens::from_rows(vec![row("tok_a", "cf_a", None)], &current);
        let token = refreshed.find(&digest, now).expect("found");
        assert!(!token.claim_use(now + TimeDelta::seconds(30)));
        assert!(token.claim_use(now + TimeDelta::seconds(60)));
        // A use another process wrote counts too.
        let mut written = row("tok_a", "cf_a", None);
        written.last_used_at = Some(now + TimeDelta::seconds(100));
        let refreshed = IssuedTokens::from_rows(vec![written], &IssuedTokens::default());
        let token = refreshed.find(&digest, now).expect("found");
        assert!(!token.claim_use(now + TimeDelta::seconds(150)));
        assert!(token.claim_use(now + TimeDelta::seconds(160)));
    }

    #[test]
    fn noted_uses_wait_one_per_token() {
        let now = at("2026-12-04T10:00:00Z");
        let cache = IssuedCache::default();
        cache.replace(IssuedTokens::from_rows(
            vec![row("tok_a", "cf_a", None), row("tok_b", "cf_b", None)],
            &IssuedTokens::default(),
        ));
        let current = cache.current();
        for (token, seconds) in [("cf_a", 0), ("cf_a", 10), ("cf_b", 20), ("cf_a", 70)] {
            let token = current.find(&tokens::digest(token.as_bytes()), now).expect("found");
            cache.note_use(token, now + TimeDelta::seconds(seconds));
        }
        let uses = cache.uses.lock().expect("lock").clone();
        assert_eq!(uses.len(), 2);
        assert_eq!(uses.get("tok_a").copied(), Some(now + TimeDelta::seconds(70)));
        assert_eq!(uses.get("tok_b").copied(), Some(now + TimeDelta::seconds(20)));
    }
}
