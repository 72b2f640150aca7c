//! `mimi-bridge`: the daemon binary. Thin by design — the CLI lives in the `mimi_bridge` library next to it, the
//! business logic in `bridge-core` and the connector crates.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = mimi_bridge::cli::Cli::parse();
    match mimi_bridge::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mimi-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
