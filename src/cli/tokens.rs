//! `connectflow tokens`: issue, list and revoke the API's bearer tokens.
//!
//! Only `tokens issue`'s token goes to stdout, alone on its line, so that
//! `TOKEN=$(connectflow tokens issue ...)` captures exactly it; what is said
//! to the operator goes to stderr. `tokens list` writes one line per token.

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{ArgGroup, Args, Subcommand};

use crate::api::Scope;
use crate::config::DatabaseArgs;
use crate::program::ProgramId;
use crate::store;
use crate::store::tokens::{self, NewToken, Revoked, TokenRecord};

/// The longest token name.
const MAX_NAME_CHARS: usize = 100;

/// The longest expiry, in days (100 years).
const MAX_EXPIRY_DAYS: i64 = 36_500;

/// `connectflow tokens ...`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token: prints it (and nothing else) on stdout, once; only its
    /// SHA-256 digest is stored. It works in every running process within
    /// 5 s.
    Issue(IssueArgs),
    /// List every token, one line each: id, name, programs, scopes, created,
    /// expires, last used (to the minute), revoked. Never the token.
    List(ListArgs),
    /// Revoke a token by its id: every running process refuses it (401)
    /// within 5 s. Revoking a revoked token changes nothing; an unknown id is
    /// an error (exit status 1).
    Revoke(RevokeArgs),
}

/// `connectflow tokens issue`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("program_choice").required(true).multiple(false).args(["programs", "all_programs"])))]
pub struct IssueArgs {
    /// Who or what the token is for (shown by `tokens list`): 1 to 100
    /// characters, without control characters or surrounding spaces.
    #[arg(long, value_parser = parse_name)]
    pub name: String,

    /// The programs whose customers the token may see, comma-separated
    /// program ids (`acme-card,beta`). Exactly one of `--programs` and
    /// `--all-programs` is required.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub programs: Vec<ProgramId>,

    /// The token may see every program, present and future.
    #[arg(long)]
    pub all_programs: bool,

    /// What the token may do, comma-separated: `read` (lifecycles, events,
    /// changes, customer lists), `stats` (the stats routes), `revoke`
    /// (revocations of consent), `audit` (the access log).
    #[arg(long, required = true, value_delimiter = ',', value_name = "SCOPE,...", value_parser = parse_scope)]
    pub scopes: Vec<Scope>,

    /// The token stops working this many days from now (1 to 36500).
    /// Without it, it works until revoked.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=MAX_EXPIRY_DAYS))]
    pub expires_in_days: Option<i64>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// `connectflow tokens list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// `connectflow tokens revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The id of the token to revoke (`tok_...`, the first column of
    /// `tokens list`).
    #[arg(value_name = "ID")]
    pub token_id: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

fn parse_scope(name: &str) -> Result<Scope, String> {
    name.parse().map_err(|err: crate::api::UnknownScope| err.to_string())
}

fn parse_name(name: &str) -> Result<String, String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) || name.trim() != name {
        return Err(format!(
            "a token name is 1 to {MAX_NAME_CHARS} characters, without control characters or surrounding spaces"
        ));
    }
    Ok(name.to_owned())
}

/// Runs a `tokens` subcommand against the database (migrated first).
pub async fn run(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Issue(args) => issue(args).await,
        TokensCommand::List(args) => list(&args.database).await,
        TokensCommand::Revoke(args) => revoke(args).await,
    }
}

async fn connect(database: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::pool(database)?;
    store::migrate(&pool).await?;
    Ok(pool)
}

async fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let pool = connect(&args.database).await?;
    let mut programs = args.programs;
    programs.sort();
    programs.dedup();
    let mut scopes = args.scopes;
    scopes.sort();
    scopes.dedup();
    let expires_at = args
        .expires_in_days
        .map(|days| Utc::now().checked_add_signed(chrono::Duration::days(days)).context("the expiry is out of range"))
        .transpose()?;
    let new = NewToken {
        name: args.name,
        programs: (!args.all_programs).then_some(programs),
        scopes: scopes.iter().map(|scope| scope.as_str().to_owned()).collect(),
        expires_at,
    };
    let issued = tokens::issue(&pool, &new).await?;
    println!("{}", issued.token.expose());
    eprintln!(
        "issued {} ({}): programs {}, scopes {}, expires {}. The token above is shown only this once; it works \
         within 5 s",
        issued.token_id,
        new.name,
        programs_text(new.programs.as_deref().map(|p| p.iter().map(ProgramId::as_str).collect::<Vec<_>>())),
        new.scopes.join(","),
        time_text(new.expires_at, "never"),
    );
    Ok(())
}

async fn list(database: &DatabaseArgs) -> anyhow::Result<()> {
    let pool = connect(database).await?;
    let records = tokens::list(&pool).await?;
    for record in &records {
        println!("{}", list_line(record));
    }
    eprintln!("{} tokens", records.len());
    Ok(())
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let pool = connect(&args.database).await?;
    match tokens::revoke(&pool, &args.token_id).await? {
        Revoked::Now => eprintln!("revoked {}: every API process refuses it within 5 s", args.token_id),
        Revoked::Already(at) => eprintln!("{} was already revoked, at {}", args.token_id, time_text(Some(at), "")),
    }
    Ok(())
}

/// One line of `tokens list`: the id first, then labelled fields separated
/// by tabs (a name has no control characters, so no tab).
fn list_line(record: &TokenRecord) -> String {
    [
        record.token_id.clone(),
        format!("name={}", record.name),
        format!("programs={}", programs_text(record.programs.clone())),
        format!("scopes={}", record.scopes.join(",")),
        format!("created={}", time_text(Some(record.created_at), "")),
        format!("expires={}", time_text(record.expires_at, "never")),
        format!("last_used={}", time_text(record.last_used_at, "never")),
        format!("revoked={}", time_text(record.revoked_at, "no")),
    ]
    .join("\t")
}

fn programs_text<S: AsRef<str>>(programs: Option<Vec<S>>) -> String {
    match programs {
        None => "all".to_owned(),
        Some(programs) => programs.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(","),
    }
}

fn time_text(at: Option<DateTime<Utc>>, none: &str) -> String {
    at.map_or_else(|| none.to_owned(), |at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<IssueArgs, clap::Error> {
        let cli = Cli::try_parse_from(["connectflow", "tokens", "issue"].iter().chain(args))?;
        match cli.command {
            Command::Tokens(TokensCommand::Issue(args)) => Ok(args),
            other => panic!("tokens issue expected, got {other:?}"),
        }
    }

    #[test]
    fn issue_takes_programs_or_all_programs_and_known_scopes() {
        let args = parse(&["--name", "ci", "--programs", "acme,beta", "--scopes", "read,stats"]).expect("parses");
        assert_eq!(args.programs.iter().map(ProgramId::as_str).collect::<Vec<_>>(), ["acme", "beta"]);
        assert_eq!(args.scopes, [Scope::Read, Scope::Stats]);
        assert!(!args.all_programs && args.expires_in_days.is_none());
        let args = parse(&["--name", "ops", "--all-programs", "--scopes", "audit", "--expires-in-days", "30"])
            .expect("parses");
        assert!(args.all_programs && args.programs.is_empty());
        assert_eq!(args.expires_in_days, Some(30));
    }

    #[test]
    fn issue_refuses_what_it_cannot_grant_as_usage_errors() {
        let refused = [
            &["--name", "x", "--scopes", "read"][..],
            &["--name", "x", "--programs", "a", "--all-programs", "--scopes", "read"],
            &["--name", "x", "--all-programs", "--scopes", "read,write"],
            &["--name", "x", "--all-programs", "--scopes", "Read"],
            &["--name", "x", "--all-programs"],
            &["--name", "x", "--programs", "Acme", "--scopes", "read"],
            &["--name", "x", "--programs", "", "--scopes", "read"],
            &["--name", "", "--all-programs", "--scopes", "read"],
            &["--name", "x", "--all-programs", "--scopes", "read", "--expires-in-days", "0"],
            &["--all-programs", "--scopes", "read"],
        ];
        for args in refused {
            let err = parse(args).expect_err(&format!("{args:?} refused"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn list_lines_start_with_the_id_and_never_hold_a_secret() {
        let at = DateTime::from_timestamp(1_764_000_000, 0).expect("time");
        let record = TokenRecord {
            token_id: "tok_0123456789abcdef".into(),
            name: "ci reader".into(),
            programs: None,
            scopes: vec!["read".into(), "stats".into()],
            created_at: at,
            expires_at: None,
            revoked_at: Some(at),
            last_used_at: None,
        };
        assert_eq!(
            list_line(&record),
            "tok_0123456789abcdef\tname=ci reader\tprograms=all\tscopes=read,stats\tcreated=2025-11-24T16:00:00Z\t\
             expires=never\tlast_used=never\trevoked=2025-11-24T16:00:00Z"
        );
    }
}
