//! Who is calling and what they may do: the [`Principal`] a bearer token
//! stands for, its [`Scope`]s and its [`ProgramAccess`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::program::ProgramId;

/// What a token may do. Each `/v1` route needs one scope; a token without
/// it gets 403 `forbidden` naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Lifecycles, events, changes and customer lists.
    Read,
    /// The funnel's statistics.
    Stats,
    /// Revocations of consent.
    Revoke,
    /// The access log.
    Audit,
    /// Erasures of customers.
    Erase,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Self; 5] = [Self::Read, Self::Stats, Self::Revoke, Self::Audit, Self::Erase];

    /// The scope's name, as granted (`--scopes`), stored and documented.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Stats => "stats",
            Self::Revoke => "revoke",
            Self::Audit => "audit",
            Self::Erase => "erase",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: the scopes are read, stats, revoke, audit and erase")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == name).ok_or_else(|| UnknownScope(name.to_owned()))
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope (a bootstrap token's).
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The scopes in the set, in [`Scope::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |scope| self.contains(*scope))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Self(scopes.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }
}

/// The programs a token may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramAccess {
    /// Every program, present and future.
    All,
    /// These programs only (possibly none, when every program it was issued
    /// for is unknown to this process).
    Only(Arc<BTreeSet<ProgramId>>),
}

impl ProgramAccess {
    /// Whether `program`'s customers are visible.
    pub fn allows(&self, program: &ProgramId) -> bool {
        match self {
            Self::All => true,
            Self::Only(programs) => programs.contains(program),
        }
    }

    /// The programs, when not all of them.
    pub fn only(&self) -> Option<&BTreeSet<ProgramId>> {
        match self {
            Self::All => None,
            Self::Only(programs) => Some(programs),
        }
    }
}

/// The caller of a `/v1` route, as its bearer token says: put into the
/// request's extensions by [`super::require_token`], taken by every handler
/// (it is an extractor), which checks its route's scope first with
/// [`Principal::require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (`tok_...` for an issued token, `bootstrap-...` for one
    /// of `CONNECTFLOW_API_TOKENS`): what logs and the access log name.
    pub token_id: Arc<str>,
    /// The token's name (`bootstrap` for `CONNECTFLOW_API_TOKENS`).
    pub token_name: Arc<str>,
    /// The programs whose customers it may see.
    pub programs: ProgramAccess,
    /// What it may do.
    pub scopes: Scopes,
}

impl Principal {
    /// Ok when the token holds `scope`, else 403 `forbidden` naming it.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this token lacks the '{scope}' scope")))
        }
    }
}

impl Principal {
    /// The programs a request of this principal sees, as the store filters
    /// by them (`None`: every program): its own, or the one `program_id=`
    /// names, which must be among them (else 403 `forbidden`; an id that
    /// is not a program id is 400).
    pub fn visible(&self, requested: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
        let Some(requested) = requested else {
            return Ok(self.programs.only().map(|set| set.iter().map(|p| p.as_str().to_owned()).collect()));
        };
        let program = ProgramId::parse(requested)
            .map_err(|_| ApiError::BadRequest(format!("program_id must match {}", ProgramId::PATTERN)))?;
        if !self.programs.allows(&program) {
            return Err(ApiError::Forbidden(format!("this token does not hold the program '{program}'")));
        }
        Ok(Some(vec![program.to_string()]))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            // A handler mounted outside `require_token`: a programming error,
            // never an open door.
            ApiError::Internal(anyhow::anyhow!("no principal in the request: the route is not behind require_token"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scopes: &[Scope]) -> Principal {
        Principal {
            token_id: "tok_1".into(),
            token_name: "test".into(),
            programs: ProgramAccess::All,
            scopes: scopes.iter().copied().collect(),
        }
    }

    #[test]
    fn scope_names_parse_exactly() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!(["read", "stats", "revoke", "audit", "erase"], Scope::ALL.map(Scope::as_str));
        for unknown in ["", "Read", "READ", " read", "read ", "write", "admin", "stat", "*"] {
            assert_eq!(unknown.parse::<Scope>(), Err(UnknownScope(unknown.to_owned())), "{unknown:?}");
        }
    }

    #[test]
    fn scope_sets_hold_exactly_their_members() {
        let set: Scopes = [Scope::Stats, Scope::Audit, Scope::Stats].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![Scope::Stats, Scope::Audit]);
        assert!(!set.contains(Scope::Read) && !set.contains(Scope::Revoke));
        assert_eq!(Scopes::all().iter().collect::<Vec<_>>(), Scope::ALL.to_vec());
        assert_eq!(Scopes::default().iter().count(), 0);
    }

    #[test]
    fn a_missing_scope_is_forbidden_and_named() {
        let reader = principal(&[Scope::Read]);
        assert!(reader.require(Scope::Read).is_ok());
        for missing in [Scope::Stats, Scope::Revoke, Scope::Audit] {
            let err = reader.require(missing).expect_err("forbidden");
            assert_eq!(err.status_and_code().1, "forbidden");
            assert_eq!(err.to_string(), format!("this token lacks the '{missing}' scope"));
        }
        assert!(principal(&[]).require(Scope::Read).is_err());
        let everything = principal(&Scope::ALL);
        assert!(Scope::ALL.into_iter().all(|scope| everything.require(scope).is_ok()));
    }

    #[test]
    fn a_principal_sees_its_programs_and_may_narrow_to_one_of_them() {
        let id = |text: &str| ProgramId::parse(text).expect("program id");
        let mut acme = principal(&[Scope::Read]);
        acme.programs = ProgramAccess::Only(Arc::new([id("acme"), id("beta")].into_iter().collect()));
        assert_eq!(acme.visible(None).ok(), Some(Some(vec!["acme".to_owned(), "beta".to_owned()])));
        assert_eq!(acme.visible(Some("beta")).ok(), Some(Some(vec!["beta".to_owned()])));
        let other = acme.visible(Some("gamma")).expect_err("not held");
        assert_eq!(other.status_and_code().1, "forbidden");
        assert_eq!(acme.visible(Some("Not/A/Program")).map_err(|e| e.status_and_code().1), Err("invalid_request"));
        let everyone = principal(&[Scope::Read]);
        assert_eq!(everyone.visible(None).ok(), Some(None));
        assert_eq!(everyone.visible(Some("gamma")).ok(), Some(Some(vec!["gamma".to_owned()])));
    }

    #[test]
    fn programs_allow_their_members_only() {
        let id = |text: &str| ProgramId::parse(text).expect("program id");
        let only = ProgramAccess::Only(Arc::new([id("acme"), id("beta")].into_iter().collect()));
        assert!(only.allows(&id("acme")) && only.allows(&id("beta")));
        assert!(!only.allows(&id("gamma")) && !only.allows(&ProgramId::default()));
        assert_eq!(only.only().map(BTreeSet::len), Some(2));
        assert!(ProgramAccess::All.allows(&id("anything")));
        assert_eq!(ProgramAccess::All.only(), None);
    }
}
