//! `tollgate`: see `tollgate --help`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tollgate_server::cli::Cli;
use tollgate_server::config::ConfigError;

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        // `--help` and `--version` are "errors" printed to stdout with success.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.run_with(Some(&matches)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            // A config file that cannot be used is bad input, as a bad flag is.
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
