//! The `connectflow` binary: parses the command line and hands over to the
//! library.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use connectflow::cli::{self, Cli, one_line_error};

// mimalloc: the receiver allocates a little per request (JSON in, JSON out);
// the system allocator's share of CPU under load halves with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("{}", one_line_error(&err));
            return ExitCode::from(2);
        }
    };
    connectflow::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", cli::describe(&err));
            ExitCode::from(cli::exit_status(&err))
        }
    }
}
