//! `connectflow audit`: the access log from the command line, one JSON
//! record per line, oldest first (the same records as `GET /v1/audit`).

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;

use crate::config::DatabaseArgs;
use crate::event::CustomerId;
use crate::store;
use crate::store::access_log::{AccessFilter, page};

/// Records read per query.
const PAGE: i64 = 1_000;

/// `connectflow audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Only requests naming this customer.
    #[arg(long)]
    pub customer_id: Option<CustomerId>,

    /// Only requests made with this token (`tok_...`, `bootstrap-...`).
    #[arg(long)]
    pub token_id: Option<String>,

    /// Only requests at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,

    /// Only requests before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// Prints every matching record.
pub async fn run(args: &AuditArgs) -> anyhow::Result<()> {
    let pool = store::pool(&args.database)?;
    store::migrate(&pool).await?;
    let filter = AccessFilter {
        customer_id: args.customer_id.as_ref().map(ToString::to_string),
        token_id: args.token_id.clone(),
        since: args.since,
        until: args.until,
        within_programs: None,
    };
    let mut out = std::io::stdout().lock();
    let mut after = None;
    loop {
        let (records, next) = page(&pool, &filter, after, PAGE).await?;
        for record in &records {
            serde_json::to_writer(&mut out, record).context("writing a record")?;
            out.write_all(b"\n").context("writing a record")?;
        }
        match next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    out.flush().context("writing the records")?;
    Ok(())
}
