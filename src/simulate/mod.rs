//! `connectflow simulate`: realistic, correctly signed Finicity Connect
//! webhooks sent to a receiver, exactly as Finicity would, and optionally a
//! check that every simulated customer ends in the states its flow should.
//! It is the smoke test a partner runs after a deployment.
//!
//! The journey of a run: [`plan`] draws the customers and the order of their
//! webhooks from a seed (no network, unit-tested); [`send`] signs and POSTs
//! them with Finicity's headers and (compressed) retries; [`verify`] polls
//! the query API; [`changes`] reads the lifecycle-change topic back
//! (`--verify-changes`); [`summary`] counts and prints. Each simulated customer
//! starts with the `ping` Finicity sends when a Connect URL is generated,
//! then its flow's events ([`flows`]). [`scenario`] says who the customers
//! are: the flows of `--flow`, or an institution outage whose statuses
//! [`institutions`] then verifies.

pub mod changes;
pub mod flows;
pub(crate) mod funnel;
pub(crate) mod institutions;
pub mod plan;
pub mod scenario;
pub(crate) mod send;
pub mod summary;
pub(crate) mod verify;

use std::fmt;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::{PossibleValuesParser, RangedU64ValueParser};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, KafkaArgs, Secret, SecretList};
use crate::program::ProgramId;
use changes::ChangesExpectation;
use flows::Flow;
use funnel::ExpectedFunnel;
use institutions::{InstitutionExpectation, InstitutionVerifier};
use plan::{Plan, PlanSpec};
use scenario::{Scenario, ScenarioSummary};
use send::{RetryPolicy, Sender};
use summary::{ChangesVerification, InstitutionVerification, Summary, Verification};
use verify::{Expectation, Verifier};

/// How long one webhook or API request may take before it counts as not
/// answered (Finicity documents no timeout; a receiver should answer within
/// a few seconds).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `--flow` value that selects every flow.
pub const ALL_FLOWS: &str = "all";

/// `connectflow simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Where to send the webhooks.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/finicity/connect", value_parser = http_url)]
    pub url: String,

    /// The program to send for: the webhooks go to `--url` + `/{program}`
    /// (`POST /webhooks/finicity/connect/{program}`), sign them with that
    /// program's partner secret (--secret), and --verify with a token that
    /// holds the program (--api-token). --verify-changes then reads the
    /// program's changes topic (`{program}` in --changes-topic). Default: the
    /// `default` program at `--url` itself.
    #[arg(long, value_name = "ID")]
    pub program: Option<ProgramId>,

    /// Partner secret to sign with (default: the first of FINICITY_PARTNER_SECRETS).
    #[arg(long, env = "FINICITY_PARTNER_SECRETS", hide_env_values = true)]
    pub secret: Option<SecretList>,

    /// What to rehearse. `institution-outage` prints its institutions' ids
    /// in the summary, and with --verify polls GET /v1/institutions/{id}
    /// (scope stats) until each shows the status its sessions imply, as
    /// consume's default thresholds give it (consume evaluates every
    /// CONNECTFLOW_HEALTH_INTERVAL_SECONDS: see --verify-timeout-s).
    /// --shuffle and --duplicates apply to both.
    #[arg(long, value_enum, default_value_t = Scenario::Flows)]
    pub scenario: Scenario,

    /// Flows to run, comma-separated or repeated, or `all`. See --list-flows.
    /// Only with --scenario flows.
    #[arg(long, value_delimiter = ',', default_value = ALL_FLOWS, value_parser = flow_names())]
    pub flow: Vec<String>,

    /// Print the flows with the states each should end in, and exit without
    /// sending anything.
    #[arg(long)]
    pub list_flows: bool,

    /// Customers per selected flow; with --scenario institution-outage,
    /// sessions per institution (default 30 there, at least 20).
    #[arg(
        long,
        default_value_t = 1,
        default_value_if("scenario", "institution-outage", "30"),
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub customers: u64,

    /// Largest number of webhook requests per second over all customers,
    /// retries included; 0 or absent for as fast as the receiver answers.
    #[arg(long, value_name = "PER_SECOND", value_parser = non_negative)]
    pub rate: Option<f64>,

    /// Customers sent side by side; each customer's webhooks go one at a time.
    #[arg(long, default_value_t = 8, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub concurrency: usize,

    /// Share of events sent a second time (0 to 1), as Finicity's retries
    /// do: the resend is byte-identical and comes after the original.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = fraction)]
    pub duplicates: f64,

    /// Send each customer's events in a random order (delivery order is not
    /// guaranteed by Finicity); the customer's `ping` stays first.
    #[arg(long)]
    pub shuffle: bool,

    /// Seed of the customer ids, shuffles and duplicate picks: the same seed
    /// and options repeat a run. Default: a random seed, printed in the
    /// summary.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Retries of a webhook answered 5xx or not at all (4xx are not
    /// retried). Finicity's 5 retries in 5 minutes are compressed to waits of
    /// 250 ms doubling up to 4 s.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: u32,

    /// After sending, poll the query API until every simulated customer shows
    /// its flow's consent and authentication states (and, with --scenario
    /// institution-outage, every institution its status); exit non-zero on
    /// any mismatch.
    #[arg(long)]
    pub verify: bool,

    /// Base URL of the query API used by --verify.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = http_url)]
    pub api_url: String,

    /// Bearer token for the query API (default: the first of
    /// CONNECTFLOW_API_TOKENS): scope read for --verify, and stats too with
    /// --scenario institution-outage (GET /v1/institutions/{id}).
    #[arg(long, env = "CONNECTFLOW_API_TOKENS", hide_env_values = true)]
    pub api_token: Option<SecretList>,

    /// How long --verify waits for every customer to match, in seconds
    /// (and --verify-changes, after it, for the changes to be published).
    /// With --scenario institution-outage, also for the institutions'
    /// statuses, which consume evaluates only every
    /// CONNECTFLOW_HEALTH_INTERVAL_SECONDS (60 by default): the wait must
    /// exceed that interval, and is 180 by default there.
    #[arg(
        long,
        default_value_t = 60,
        default_value_if("scenario", "institution-outage", "180"),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub verify_timeout_s: u64,

    /// After --verify passed, read the lifecycle-change topic
    /// (--changes-topic on --kafka-brokers) and check that every simulated
    /// customer has exactly the versions 1 to its lifecycle's `version` on it,
    /// in order (a repeat allowed, a gap never), the last in its flow's
    /// states; exit non-zero otherwise. Reads the whole topic from its
    /// beginning: meant for rehearsal deployments.
    #[arg(long, env = "CONNECTFLOW_SIMULATE_VERIFY_CHANGES")]
    pub verify_changes: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

impl SimulateArgs {
    /// The flows selected by `--flow`, each once, in the order given.
    ///
    /// `all` is every webhook flow, and the flows that call the revocation
    /// API too when an API token is given (`--api-token`, or
    /// `CONNECTFLOW_API_TOKENS`); naming such a flow without a token is an
    /// error.
    pub fn selected_flows(&self) -> anyhow::Result<Vec<&'static Flow>> {
        if self.scenario != Scenario::Flows {
            if self.flow.iter().any(|name| name != ALL_FLOWS) {
                anyhow::bail!(
                    "--flow chooses the flows of --scenario flows; --scenario {} sends its own sessions",
                    self.scenario.as_str()
                );
            }
            return Ok(Vec::new());
        }
        if self.flow.is_empty() || self.flow.iter().any(|name| name == ALL_FLOWS) {
            let with_api = self.api_token.is_some();
            return Ok(flows::all_flows().filter(|flow| with_api || !flow.revokes_through_api).collect());
        }
        let mut selected: Vec<&'static Flow> = Vec::new();
        for name in &self.flow {
            let flow = flows::flow(name).with_context(|| format!("unknown flow {name:?} (see --list-flows)"))?;
            if flow.revokes_through_api && self.api_token.is_none() {
                anyhow::bail!(
                    "flow {name:?} revokes through the API: it needs an API token (set --api-token or \
                     CONNECTFLOW_API_TOKENS)"
                );
            }
            if !selected.contains(&flow) {
                selected.push(flow);
            }
        }
        Ok(selected)
    }

    /// The secret to sign with: `--secret`, else the first partner secret.
    pub fn signing_secret(&self) -> Result<Secret, ConfigError> {
        self.secret.as_ref().and_then(|list| list.iter().next().cloned()).ok_or(ConfigError {
            variable: "FINICITY_PARTNER_SECRETS",
            problem: "simulate needs a partner secret to sign with (set --secret or the variable)".into(),
        })
    }

    /// Refuses `--verify-changes` without `--verify`: the topic is checked
    /// against the versions the query API showed for verified customers.
    pub fn changes_verification(&self) -> Result<bool, ConfigError> {
        if self.verify_changes && !self.verify {
            return Err(ConfigError {
                variable: "CONNECTFLOW_SIMULATE_VERIFY_CHANGES",
                problem: "--verify-changes needs --verify (the topic is checked against the verified lifecycles)"
                    .into(),
            });
        }
        Ok(self.verify_changes)
    }

    /// The query API token: `--api-token`, else the first API token.
    /// (`--scenario institution-outage` needs scope `stats` too.)
    pub fn verification_token(&self) -> Result<Secret, ConfigError> {
        self.api_token.as_ref().and_then(|list| list.iter().next().cloned()).ok_or(ConfigError {
            variable: "CONNECTFLOW_API_TOKENS",
            problem: "simulate --verify needs a query API token (set --api-token or the variable)".into(),
        })
    }
}

/// What a simulation did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The sending.
    pub summary: Summary,
    /// The verification, when asked for and the sending was not interrupted.
    pub verification: Option<Verification>,
    /// The changes-topic verification, when asked for and the verification
    /// passed.
    pub changes: Option<ChangesVerification>,
    /// The funnel the API must show for the simulated customers.
    pub funnel: Option<ExpectedFunnel>,
    /// `--scenario institution-outage`'s institutions, as planned.
    pub scenario: Option<ScenarioSummary>,
    /// Their statuses, as verified (with `--verify`, when the sending was
    /// not interrupted).
    pub institutions: Option<InstitutionVerification>,
}

impl Outcome {
    /// `Ok` when every webhook was accepted and, if asked for, every customer
    /// verified; else an error saying what failed (exit status 1).
    pub fn check(&self) -> anyhow::Result<()> {
        let summary = &self.summary;
        if summary.interrupted {
            anyhow::bail!("interrupted after {} of {} webhooks", summary.sent, summary.planned);
        }
        if !summary.all_accepted() {
            anyhow::bail!("{} of {} webhooks were not accepted", summary.planned - summary.accepted, summary.planned);
        }
        if summary.revocations_failed > 0 {
            anyhow::bail!("{} revocations through the API were not accepted", summary.revocations_failed);
        }
        match &self.verification {
            Some(v) if v.interrupted => anyhow::bail!("verification interrupted"),
            Some(Verification { refused: Some(refused), .. }) => anyhow::bail!("{refused}"),
            Some(v) if !v.passed() => {
                anyhow::bail!("{} of {} customers are not in their expected states", v.checked - v.matched, v.checked)
            }
            _ => {}
        }
        match &self.institutions {
            Some(i) if i.interrupted => anyhow::bail!("institutions verification interrupted"),
            Some(InstitutionVerification { refused: Some(refused), .. }) => anyhow::bail!("{refused}"),
            Some(i) if !i.passed() => anyhow::bail!(
                "{} of {} institutions are not in their expected statuses",
                i.institutions.len() - i.matched(),
                i.institutions.len()
            ),
            _ => {}
        }
        match &self.changes {
            Some(c) if c.interrupted => anyhow::bail!("changes verification interrupted"),
            Some(ChangesVerification { error: Some(error), .. }) => anyhow::bail!("{error}"),
            Some(c) if !c.passed() => anyhow::bail!(
                "{} of {} customers' changes on {} are not their lifecycle's versions in order",
                c.checked - c.matched,
                c.checked,
                c.topic
            ),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary)?;
        if let Some(scenario) = &self.scenario {
            write!(f, "\n{scenario}")?;
        }
        if let Some(verification) = &self.verification {
            write!(f, "\n{verification}")?;
        }
        if let Some(institutions) = &self.institutions {
            write!(f, "\n{institutions}")?;
        }
        if let Some(changes) = &self.changes {
            write!(f, "\n{changes}")?;
        }
        if let Some(funnel) = &self.funnel {
            write!(f, "\n{funnel}")?;
        }
        Ok(())
    }
}

/// Runs `connectflow simulate`: lists the flows, or sends (and verifies) and
/// prints the summary to stdout. An error when a webhook was not accepted, a
/// customer did not verify, or the run was interrupted.
pub async fn run(args: SimulateArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.list_flows {
        print!("{}{}", flow_table(), scenario::scenario_table());
        return Ok(());
    }
    let outcome = simulate(&args, &shutdown).await?;
    println!("{outcome}");
    outcome.check()
}

/// Sends the planned webhooks and, with `--verify`, checks the resulting
/// lifecycles (and with `--verify-changes` then the lifecycle-change topic).
/// Errors only for what stops the run from starting (missing
/// secret, bad option); webhooks not accepted, mismatches and a refused API
/// token are in the [`Outcome`].
pub async fn simulate(args: &SimulateArgs, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
    let verify_changes = args.changes_verification()?;
    let secret = args.signing_secret()?;
    let token = if args.verify { Some(args.verification_token()?) } else { None };
    let program = args.program.clone().unwrap_or_default();
    let url = match &args.program {
        Some(program) => format!("{}/{program}", args.url.trim_end_matches('/')),
        None => args.url.clone(),
    };
    let url = reqwest::Url::parse(&url).with_context(|| format!("--url {url:?} is not a URL"))?;
    let mut kafka = args.kafka.clone();
    kafka.changes_topic = kafka.changes_topic_for(program.as_str());
    let spec = PlanSpec {
        flows: args.selected_flows()?,
        customers_per_flow: args.customers,
        duplicates: args.duplicates,
        shuffle: args.shuffle,
        seed: args.seed.unwrap_or_else(rand::random),
        now: chrono::Utc::now(),
    };
    let (plan, planned_institutions) = match args.scenario {
        Scenario::Flows => (Plan::build(&spec)?, Vec::new()),
        Scenario::InstitutionOutage => {
            let outage = scenario::plan(args.customers, &spec)?;
            (outage.plan, outage.institutions)
        }
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("connectflow-simulate/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;

    let mut sender = Sender::new(client.clone(), url, secret, RetryPolicy::rehearsal(args.retries), args.rate);
    if plan.customers.iter().any(|customer| customer.flow.revokes_through_api) {
        let token = args.verification_token()?;
        sender = sender.with_revocations(&args.api_url, token, plan.seed);
    }
    let progress = progress_bar(plan.deliveries(), "webhooks");
    let sent = sender.send(&plan, args.concurrency, &progress, shutdown).await;
    progress.finish_and_clear();

    let (verification, institutions) = match token {
        Some(token) if !sent.summary.interrupted => {
            let expectations: Vec<Expectation> = plan
                .customers
                .iter()
                .zip(&sent.all_accepted)
                .filter(|(_, all_accepted)| **all_accepted)
                .map(|(customer, _)| Expectation::of(customer, plan.seed, &program))
                .collect();
            let skipped = plan.customers.len() as u64 - expectations.len() as u64;
            let progress = progress_bar(expectations.len() as u64, "customers verified");
            let timeout = Duration::from_secs(args.verify_timeout_s);
            let institutions = async {
                if planned_institutions.is_empty() {
                    return None;
                }
                let expectations = planned_institutions
                    .iter()
                    .map(|institution| {
                        let accepted = plan
                            .customers
                            .iter()
                            .zip(&sent.all_accepted)
                            .filter(|(customer, all_accepted)| {
                                **all_accepted && customer.institution.as_ref() == Some(&institution.institution_id)
                            })
                            .count() as u64;
                        InstitutionExpectation::of(institution, accepted)
                    })
                    .collect();
                let verifier = InstitutionVerifier::new(client.clone(), &args.api_url, token.clone());
                Some(verifier.verify(expectations, timeout, shutdown).await)
            };
            let verifier = Verifier::new(client.clone(), &args.api_url, token.clone(), args.concurrency);
            let lifecycles = verifier.verify(expectations, skipped, timeout, &progress, shutdown);
            let (verification, institutions) = tokio::join!(lifecycles, institutions);
            progress.finish_and_clear();
            (Some(verification), institutions)
        }
        _ => (None, None),
    };
    let changes = match &verification {
        Some(verification) if verify_changes && verification.passed() => {
            let expectations: Vec<ChangesExpectation> = plan
                .customers
                .iter()
                .map(|customer| ChangesExpectation {
                    customer_id: customer.customer_id.clone(),
                    flow: customer.flow.name,
                    consent: customer.flow.expected_consent.as_str(),
                    authentication: customer.flow.expected_authentication.as_str(),
                    version: verification.versions.get(&customer.customer_id).copied(),
                })
                .collect();
            let timeout = Duration::from_secs(args.verify_timeout_s);
            Some(changes::verify_changes(&kafka, expectations, timeout, shutdown).await)
        }
        _ => None,
    };
    Ok(Outcome {
        summary: sent.summary,
        verification,
        changes,
        funnel: ExpectedFunnel::of(&plan.customers),
        scenario: (!planned_institutions.is_empty()).then_some(ScenarioSummary { institutions: planned_institutions }),
        institutions,
    })
}

/// The `--list-flows` table: each flow, the states it should end in, and
/// what it rehearses.
pub fn flow_table() -> String {
    let mut table = format!("{:<27} {:<9} {:<15} {}\n", "FLOW", "CONSENT", "AUTHENTICATION", "WHAT HAPPENS");
    for flow in flows::all_flows() {
        table.push_str(&flow.table_row());
    }
    table
}

/// A progress bar on stderr when it is a terminal, else a hidden one.
fn progress_bar(len: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what);
    if let Ok(style) =
        ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ({per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    bar
}

/// `--flow` values: every flow's name and `all`.
fn flow_names() -> PossibleValuesParser {
    PossibleValuesParser::new(std::iter::once(ALL_FLOWS).chain(flows::all_flows().map(|f| f.name)))
}

/// An `http://` or `https://` URL.
fn http_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(text.to_owned()),
        Ok(_) => Err("expected an http:// or https:// URL".to_owned()),
        Err(err) => Err(format!("not a URL: {err}")),
    }
}

/// A number from 0 to 1.
fn fraction(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| "expected a number from 0 to 1".to_owned())
}

/// A finite number, 0 or more.
fn non_negative(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| "expected a number, 0 or more".to_owned())
}

#[cfg(test)]
mod tests;
