//! `mimi-bridge`: the daemon binary. Thin by design — CLI, config, wiring, signals; no business logic (that lives
//! in `bridge-core` and the connector crates).

mod cli;
mod config;
mod content_cmd;
mod run;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mimi-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
