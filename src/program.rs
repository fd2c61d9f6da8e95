//! Programs: one client's card program each, with its own Finicity partner
//! secrets, its own authorization period and its own customers.
//!
//! Programs are declared in a TOML file (`CONNECTFLOW_PROGRAMS_FILE`), read
//! at start by `serve`, `consume` and `all`, so the receiver never needs
//! Postgres to know them. Without a file there is one program, `default`,
//! and everything works as it did before programs existed.

use serde::Deserialize;
use toml::Spanned;

pub use crate::event::{InvalidProgramId, ProgramId};

use crate::lifecycle::AuthorizationPolicy;
use crate::secret::SecretList;

/// The environment variable of the default partner secrets.
pub const DEFAULT_SECRETS_ENV: &str = "FINICITY_PARTNER_SECRETS";

/// One client's card program.
#[derive(Debug, Clone)]
pub struct Program {
    /// Its id (in URLs, Kafka headers, topic names and every record).
    pub id: ProgramId,
    /// Its display name.
    pub name: String,
    /// How long its customers' authorizations last.
    pub authorization: AuthorizationPolicy,
    /// The secrets its Finicity partner signs with (current first); `None`
    /// where the process does not receive webhooks (`consume`).
    pub partner_secrets: Option<SecretList>,
}

/// Every program this process knows, in id order.
#[derive(Debug, Clone)]
pub struct Programs {
    programs: Vec<Program>,
    /// The period of customers whose program is not (or no longer) declared.
    fallback: AuthorizationPolicy,
}

/// Why the programs file cannot be used. Each names the line or the
/// environment variable at fault, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {cause}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        cause: String,
    },
    /// Not TOML, or not the expected shape.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No `[[program]]` at all.
    #[error("declares no [[program]]")]
    Empty,
    /// An id that is not `^[a-z0-9][a-z0-9-]{0,31}$`.
    #[error("line {line}: program id {id:?} does not match {pattern}", pattern = ProgramId::PATTERN)]
    InvalidId {
        /// 1-based line of the id.
        line: usize,
        /// The id as written (bounded: ids are short or rejected).
        id: String,
    },
    /// The same id twice.
    #[error("line {line}: duplicate program id {id:?}")]
    DuplicateId {
        /// 1-based line of the second declaration.
        line: usize,
        /// The id.
        id: String,
    },
    /// A program's secrets variable is unset or empty.
    #[error("program {program}: the environment variable {variable} is unset or empty")]
    UnsetVariable {
        /// The program.
        program: String,
        /// The variable.
        variable: String,
    },
    /// A program's secrets variable is not a comma-separated list.
    #[error("program {program}: the environment variable {variable}: {problem}")]
    InvalidVariable {
        /// The program.
        program: String,
        /// The variable.
        variable: String,
        /// What is wrong (never the value).
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    program: Vec<Spanned<Declared>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    id: Spanned<String>,
    name: String,
    authorization_days: Option<Spanned<u32>>,
    partner_secrets_env: Option<Spanned<String>>,
}

/// Whether partner secrets must be resolved (the processes that receive
/// webhooks) or are not needed (`consume`, `migrate`).
#[derive(Debug, Clone, Copy)]
pub enum Secrets<'a> {
    /// Every program must have its secrets; `default` is the value of
    /// `FINICITY_PARTNER_SECRETS` (or `--partner-secrets`), for the programs
    /// that do not name a variable of their own.
    Required {
        /// The default partner secrets, when configured.
        default: Option<&'a SecretList>,
    },
    /// Secrets are not read.
    NotNeeded,
}

impl Programs {
    /// The one program `default` of a deployment without a programs file.
    pub fn single(authorization: AuthorizationPolicy, partner_secrets: Option<SecretList>) -> Self {
        Self {
            programs: vec![Program {
                id: ProgramId::default_program(),
                name: ProgramId::DEFAULT.to_owned(),
                authorization,
                partner_secrets,
            }],
            fallback: authorization,
        }
    }

    /// Parses a programs file. `authorization` is the period of programs
    /// that do not set their own (`CONNECTFLOW_AUTHORIZATION_DAYS`); `env`
    /// looks up environment variables (the process's own in production).
    pub fn parse(
        text: &str,
        authorization: AuthorizationPolicy,
        secrets: Secrets<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProgramsError> {
        let line = |offset: usize| text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1);
        let shape: FileShape = toml::from_str(text).map_err(|err| ProgramsError::Malformed {
            line: err.span().map_or(1, |span| line(span.start)),
            message: err.message().to_owned(),
        })?;
        if shape.program.is_empty() {
            return Err(ProgramsError::Empty);
        }
        let mut programs: Vec<Program> = Vec::with_capacity(shape.program.len());
        for declared in shape.program {
            let declared = declared.into_inner();
            let id_line = line(declared.id.span().start);
            let id = ProgramId::parse(declared.id.get_ref()).map_err(|_| ProgramsError::InvalidId {
                line: id_line,
                id: declared.id.get_ref().chars().take(64).collect(),
            })?;
            if programs.iter().any(|p| p.id == id) {
                return Err(ProgramsError::DuplicateId { line: id_line, id: id.to_string() });
            }
            let partner_secrets = match secrets {
                Secrets::NotNeeded => None,
                Secrets::Required { default } => Some(resolve_secrets(
                    &id,
                    declared.partner_secrets_env.as_ref().map(|v| v.get_ref().as_str()),
                    default,
                    env,
                )?),
            };
            programs.push(Program {
                id,
                name: declared.name,
                authorization: declared
                    .authorization_days
                    .map_or(authorization, |days| AuthorizationPolicy::new(days.into_inner())),
                partner_secrets,
            });
        }
        programs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Self { programs, fallback: authorization })
    }

    /// Reads and parses the programs file at `path`.
    pub fn load(
        path: &std::path::Path,
        authorization: AuthorizationPolicy,
        secrets: Secrets<'_>,
    ) -> Result<Self, ProgramsError> {
        let text = std::fs::read_to_string(path).map_err(|err| ProgramsError::Unreadable {
            path: path.display().to_string(),
            cause: err.kind().to_string(),
        })?;
        Self::parse(&text, authorization, secrets, &|name| std::env::var(name).ok())
    }

    /// The program `id`, when declared.
    pub fn get(&self, id: &str) -> Option<&Program> {
        self.programs.iter().find(|p| p.id == id)
    }

    /// Every program, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Program> {
        self.programs.iter()
    }

    /// How long authorizations of program `id`'s customers last (the
    /// default period for a program no longer declared).
    pub fn authorization(&self, id: &str) -> AuthorizationPolicy {
        self.get(id).map_or(self.fallback, |p| p.authorization)
    }

    /// The period of programs that do not set their own.
    pub fn default_authorization(&self) -> AuthorizationPolicy {
        self.fallback
    }
}

/// A program's partner secrets: from the variable it names, else the
/// default ones.
fn resolve_secrets(
    id: &ProgramId,
    variable: Option<&str>,
    default: Option<&SecretList>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SecretList, ProgramsError> {
    let unset =
        |variable: &str| ProgramsError::UnsetVariable { program: id.to_string(), variable: variable.to_owned() };
    let Some(variable) = variable else {
        return default.cloned().ok_or_else(|| unset(DEFAULT_SECRETS_ENV));
    };
    let value = env(variable).filter(|v| !v.is_empty()).ok_or_else(|| unset(variable))?;
    value.parse().map_err(|problem| ProgramsError::InvalidVariable {
        program: id.to_string(),
        variable: variable.to_owned(),
        problem,
    })
}

#[cfg(test)]
mod tests;
