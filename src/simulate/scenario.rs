//! What `simulate` rehearses (`--scenario`): the flows chosen by `--flow`
//! (`flows`, the default), or an institution outage (`institution-outage`).
//!
//! The outage is sessions at four institutions whose ids the seed gives
//! (`99`, 8 digits of the seed's hash, then the institution's number:
//! distinct per run, so runs in one window do not mix their statuses), each
//! session a customer of its own (`started`, `adding`, then its ending:
//! [`SESSION_FLOWS`]):
//!
//! | institution | its sessions | status implied |
//! |---|---|---|
//! | `outage` | 80 % `unableToConnect` code 102 (site down), the rest `added` | `down` |
//! | `healthy-a` | 5 % code 102, 10 % `invalidCredentials`, the rest `added` | `healthy` |
//! | `healthy-b` | 3 % code 102, 5 % `invalidCredentials`, the rest `added` | `healthy` |
//! | `wrong-passwords` | 70 % `invalidCredentials`, the rest `added`, no bank failure | `healthy` |
//!
//! The statuses are those `consume` computes with its default thresholds
//! (`unknown` below 20 sessions, `degraded` from 20 % of sessions failed by
//! the institution, `down` from 60 %): hence at least [`MIN_SESSIONS`]
//! sessions per institution. The endings of an institution are spread
//! evenly over its sessions and the institutions interleaved, so an
//! evaluation part-way through the run sees about the final rates (a
//! healthy institution is not caught `degraded` by an early run of
//! failures, which only the hysteresis would heal).
//!
//! `--shuffle` and `--duplicates` apply: whatever the order of its three
//! events, a session ends once, at its institution (each ending names it),
//! with its outcome (an event that arrives late is folded in its place, and
//! `started` and `adding` end nothing), and a resend is deduplicated.

use std::fmt;

use sha2::{Digest, Sha256};

use super::flows::{Flow, SESSION_FLOWS};
use super::plan::{Casting, Plan, PlanError, PlanSpec};
use crate::institution::InstitutionStatus;

/// `--scenario`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scenario {
    /// The flows of --flow, --customers customers each (see --list-flows).
    #[default]
    Flows,
    /// Sessions at four institutions (ids from the seed, printed in the
    /// summary): one fails at the bank for 80 % of them (down), two are
    /// healthy, one has 70 % wrong passwords (still healthy). --customers is
    /// the sessions per institution (default 30, at least 20); --verify also
    /// polls GET /v1/institutions/{id} for each status (scope stats).
    InstitutionOutage,
}

impl Scenario {
    /// The `--scenario` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Flows => "flows",
            Self::InstitutionOutage => "institution-outage",
        }
    }
}

/// Fewest sessions per institution: `consume`'s default
/// `CONNECTFLOW_INSTITUTION_MIN_SESSIONS`, below which a status is `unknown`.
pub const MIN_SESSIONS: u64 = 20;

/// `--customers`' default with `--scenario institution-outage`.
pub const DEFAULT_SESSIONS: u64 = 30;

/// `--verify-timeout-s`' default with `--scenario institution-outage`: three
/// beats of `consume`'s default `CONNECTFLOW_HEALTH_INTERVAL_SECONDS` (60).
pub const DEFAULT_VERIFY_TIMEOUT_S: u64 = 180;

/// How a session of the scenario ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ending {
    /// `unableToConnect` with code 102: the institution fails.
    BankDown,
    /// `invalidCredentials`: the customer fails.
    WrongPassword,
    /// `added`: the session succeeds.
    Added,
}

impl Ending {
    /// Every ending.
    pub const ALL: [Self; 3] = [Self::BankDown, Self::WrongPassword, Self::Added];

    /// The session's flow ([`SESSION_FLOWS`]).
    pub fn flow(self) -> &'static Flow {
        match self {
            Self::Added => &SESSION_FLOWS[0],
            Self::BankDown => &SESSION_FLOWS[1],
            Self::WrongPassword => &SESSION_FLOWS[2],
        }
    }
}

/// One institution of the scenario: what its sessions do, what status that
/// implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Its name in the summary.
    pub role: &'static str,
    /// Percent of its sessions that fail at the bank (code 102).
    pub bank_down_percent: u64,
    /// Percent that end with a wrong password.
    pub wrong_password_percent: u64,
    /// The status `consume` must give it.
    pub expected: InstitutionStatus,
}

/// The scenario's institutions, in order (the last digit of each id is its
/// place here, from 1).
pub const PROFILES: [Profile; 4] = [
    Profile { role: "outage", bank_down_percent: 80, wrong_password_percent: 0, expected: InstitutionStatus::Down },
    Profile {
        role: "healthy-a",
        bank_down_percent: 5,
        wrong_password_percent: 10,
        expected: InstitutionStatus::Healthy,
    },
    Profile {
        role: "healthy-b",
        bank_down_percent: 3,
        wrong_password_percent: 5,
        expected: InstitutionStatus::Healthy,
    },
    Profile {
        role: "wrong-passwords",
        bank_down_percent: 0,
        wrong_password_percent: 70,
        expected: InstitutionStatus::Healthy,
    },
];

/// One institution as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedInstitution {
    /// Its id (digits, from the seed).
    pub institution_id: String,
    /// Its profile.
    pub profile: &'static Profile,
    /// Sessions that fail at the bank.
    pub bank_down: u64,
    /// Sessions that end with a wrong password.
    pub wrong_passwords: u64,
    /// Sessions that succeed.
    pub added: u64,
}

impl PlannedInstitution {
    /// Its sessions.
    pub fn sessions(&self) -> u64 {
        self.bank_down + self.wrong_passwords + self.added
    }

    /// Sessions of `ending`.
    pub fn count(&self, ending: Ending) -> u64 {
        match ending {
            Ending::BankDown => self.bank_down,
            Ending::WrongPassword => self.wrong_passwords,
            Ending::Added => self.added,
        }
    }

    /// Its sessions' endings in send order: each ending spread evenly (at
    /// every point, the ending furthest behind its share comes next).
    pub fn endings(&self) -> Vec<Ending> {
        let n = self.sessions();
        let mut given = [0u64; 3];
        (0..n)
            .filter_map(|i| {
                let next =
                    (0..Ending::ALL.len()).filter(|&k| given[k] < self.count(Ending::ALL[k])).max_by_key(|&k| {
                        // How far behind its share, in units of 1/n.
                        i128::from((i + 1) * self.count(Ending::ALL[k])) - i128::from(n * given[k])
                    })?;
                given[next] += 1;
                Some(Ending::ALL[next])
            })
            .collect()
    }
}

/// The institutions of the run with `seed`, `sessions` sessions each.
pub fn institutions(seed: u64, sessions: u64) -> Vec<PlannedInstitution> {
    let share = |percent: u64| (sessions * percent + 50) / 100;
    PROFILES
        .iter()
        .enumerate()
        .map(|(index, profile)| {
            let bank_down = share(profile.bank_down_percent);
            let wrong_passwords = share(profile.wrong_password_percent).min(sessions - bank_down);
            PlannedInstitution {
                institution_id: institution_id(seed, index),
                profile,
                bank_down,
                wrong_passwords,
                added: sessions - bank_down - wrong_passwords,
            }
        })
        .collect()
}

/// The id of the scenario's institution at `index` (from 0) in the run with
/// `seed`: `99`, 8 digits of the seed's hash, then `index + 1`.
pub fn institution_id(seed: u64, index: usize) -> String {
    let hash = Sha256::digest(format!("connectflow-simulate/institutions/{seed}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    format!("99{:08}{}", u64::from_be_bytes(first) % 100_000_000, index + 1)
}

/// The outage scenario as planned: its customers and its institutions.
#[derive(Debug, Clone, PartialEq)]
pub struct OutagePlan {
    /// One customer per session.
    pub plan: Plan,
    /// The institutions.
    pub institutions: Vec<PlannedInstitution>,
}

/// Plans `sessions` sessions at each institution, drawn with `spec`'s
/// duplicate share, shuffle, seed and time: session 0 of every institution,
/// then session 1 of every institution, and so on.
pub fn plan(sessions: u64, spec: &PlanSpec) -> Result<OutagePlan, PlanError> {
    if sessions < MIN_SESSIONS {
        return Err(PlanError::TooFewSessions(sessions));
    }
    let institutions = institutions(spec.seed, sessions);
    let endings: Vec<Vec<Ending>> = institutions.iter().map(PlannedInstitution::endings).collect();
    let cast = (0..sessions as usize).flat_map(|i| {
        institutions.iter().zip(&endings).map(move |(institution, endings)| Casting {
            flow: endings[i].flow(),
            institution: Some(institution.institution_id.clone()),
        })
    });
    let plan = Plan::build_cast(cast, spec)?;
    Ok(OutagePlan { plan, institutions })
}

/// The planned institutions, as the summary prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioSummary {
    /// The institutions.
    pub institutions: Vec<PlannedInstitution>,
}

impl fmt::Display for ScenarioSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sessions = self.institutions.first().map_or(0, PlannedInstitution::sessions);
        write!(
            f,
            "scenario institution-outage: {} institutions, {sessions} sessions each (statuses as consume's default \
             thresholds give them)",
            self.institutions.len()
        )?;
        for i in &self.institutions {
            write!(
                f,
                "\n  institution {} {:<15} {} unableToConnect (code 102), {} invalidCredentials, {} added: expect {}",
                i.institution_id,
                i.profile.role,
                i.bank_down,
                i.wrong_passwords,
                i.added,
                i.profile.expected.as_str()
            )?;
        }
        Ok(())
    }
}

/// The `--list-flows` lines of the scenario: its sessions' flows and its
/// institutions.
pub fn scenario_table() -> String {
    let mut table = String::from("\n--scenario institution-outage: one customer per session, each of these flows:\n");
    for flow in SESSION_FLOWS {
        table.push_str(&flow.table_row());
    }
    table.push_str(&format!("{:<27} {:<9} {:<15} {}\n", "INSTITUTION", "STATUS", "BANK DOWN", "WRONG PASSWORD"));
    for profile in &PROFILES {
        let bank_down = format!("{} %", profile.bank_down_percent);
        table.push_str(&format!(
            "{:<27} {:<9} {:<15} {} %\n",
            profile.role,
            profile.expected.as_str(),
            bank_down,
            profile.wrong_password_percent
        ));
    }
    table
}

#[cfg(test)]
mod tests;
