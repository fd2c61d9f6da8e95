//! `connectflow simulate`: realistic, correctly signed Finicity Connect
//! webhooks sent to a receiver, exactly as Finicity would.

pub mod flows;

use clap::Args;

use crate::config::SecretList;

/// `connectflow simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Where to send the webhooks.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/finicity/connect")]
    pub url: String,

    /// Partner secret to sign with (default: the first of FINICITY_PARTNER_SECRETS).
    #[arg(long, env = "FINICITY_PARTNER_SECRETS", hide_env_values = true)]
    pub secret: Option<SecretList>,
}

/// Runs the simulation.
pub async fn run(_args: SimulateArgs, _shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("simulate is being built")
}
