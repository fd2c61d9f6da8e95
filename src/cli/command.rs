//! The command line: the subcommands and their arguments, each group of
//! which lives with the configuration of its room ([`crate::config`],
//! [`crate::simulate::SimulateArgs`], [`super::tokens`]), and the one-line rendering of a
//! refused command line.

use clap::{Parser, Subcommand};

use super::audit::AuditArgs;
use super::tokens::TokensCommand;
use crate::config::{AllArgs, ConsumeArgs, DlqCommand, LogFormat, MigrateArgs, ReprojectArgs, ServeArgs};
use crate::simulate::SimulateArgs;

/// connectflow: Finicity Connect webhooks -> Kafka -> consent and
/// authentication lifecycle in Postgres, with a query API.
#[derive(Debug, Parser)]
#[command(name = "connectflow", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `pretty` for people, `json` for log pipelines. Defaults to
    /// `pretty` on a terminal, else `json`. `RUST_LOG` filters (default `info`).
    #[arg(long, env = "CONNECTFLOW_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The HTTP side: webhook receiver, query API, health and metrics on one listener.
    Serve(ServeArgs),
    /// The Kafka consumer that maintains the lifecycle in Postgres.
    Consume(ConsumeArgs),
    /// `serve` and `consume` in one process (the default for local use).
    All(AllArgs),
    /// Apply the database migrations and create the Kafka topics when missing.
    Migrate(MigrateArgs),
    /// Recompute lifecycle state from the recorded events (after a change to
    /// the state machine), in bounded batches, while the service runs.
    Reproject(ReprojectArgs),
    /// Work with the dead-letter topic (`dlq replay`).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Send realistic, signed Finicity Connect webhooks to a receiver, as
    /// Finicity would, and optionally verify the states they end in.
    Simulate(SimulateArgs),
    /// Issue, list and revoke the query API's bearer tokens, each scoped to
    /// programs and to what it may do (`tokens issue`, `tokens list`,
    /// `tokens revoke`).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Print the access log (one JSON record per `/v1` request, oldest
    /// first), filtered by customer, token and time; like `GET /v1/audit`.
    Audit(AuditArgs),
}

/// Renders a clap parse error as the one line the contract asks for, naming
/// the environment variable behind the flag when there is one.
pub fn one_line_error(err: &clap::Error) -> String {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};

    let rendered = err.to_string();
    let mut first = rendered.lines().next().unwrap_or("error: invalid configuration").trim().to_owned();
    let flag = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let long = flag
        .as_deref()
        .and_then(|f| f.strip_prefix("--"))
        .map(|f| f.split([' ', '=', '<']).next().unwrap_or(f).to_owned());
    let arg = long.as_deref().and_then(|long| arg_of_flag(&Cli::command(), long));
    // clap quotes the refused value; a secret's value is never printed.
    if arg.as_ref().is_some_and(clap::Arg::is_hide_env_values_set)
        && let Some(ContextValue::String(value)) = err.get(ContextKind::InvalidValue)
        && !value.is_empty()
    {
        first = first.replace(value.as_str(), "[redacted]");
    }
    let env = arg.and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    match env {
        Some(env) => format!("{first} [env: {env}]"),
        None => first,
    }
}

fn arg_of_flag(cmd: &clap::Command, long: &str) -> Option<clap::Arg> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .cloned()
        .or_else(|| cmd.get_subcommands().find_map(|sub| arg_of_flag(sub, long)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("connectflow").chain(args.iter().copied()))
    }

    #[test]
    fn a_refused_secret_value_is_never_echoed() {
        let err = parse(&["migrate", "--kafka-properties", "sasl.password=hunter2;acks=1"]).expect_err("refused");
        let line = one_line_error(&err);
        assert!(!line.contains("hunter2"), "{line}");
        assert!(line.contains("acks") && line.contains("CONNECTFLOW_KAFKA_PROPERTIES"), "{line}");
    }

    #[test]
    fn missing_partner_secret_is_named() {
        let cli = parse(&["serve", "--api-tokens", "t"]).expect("parses");
        let Command::Serve(args) = cli.command else { panic!("serve expected") };
        let err = args.http.settings(&args.lifecycle).expect_err("secret is required");
        assert_eq!(err.variable, "FINICITY_PARTNER_SECRETS");
    }

    #[test]
    fn malformed_value_names_the_variable_on_one_line() {
        let err = parse(&["serve", "--listen", "not-an-address"]).expect_err("bad address");
        let line = one_line_error(&err);
        assert!(line.contains("CONNECTFLOW_LISTEN"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = parse(&["all"]).expect("parses");
        let Command::All(args) = cli.command else { panic!("all expected") };
        assert_eq!(args.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.database.url.expose(), "postgres://connectflow:connectflow@127.0.0.1:5432/connectflow");
        assert_eq!(args.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(args.kafka.events_topic, "finicity.connect.events.v1");
        assert_eq!(args.kafka.dlq_topic, "finicity.connect.events.v1.dlq");
        assert_eq!(args.consumer.group, "connectflow-lifecycle");
        assert_eq!(args.consumer.batch, 500);
        assert_eq!(args.consumer.linger_ms, 20);
        assert_eq!(args.http.max_body_bytes, 1 << 20);
        assert_eq!(args.http.publish_timeout_ms, 5000);
        assert_eq!(args.migration.topic_partitions, 6);
    }
}
