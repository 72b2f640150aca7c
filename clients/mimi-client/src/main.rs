//! `mimi-client`: the native MLS client as a binary of its own (the same commands as `mimi-bridge client`; the
//! client lives in the library next to it).

use clap::Parser;
use std::process::ExitCode;

/// Native MLS client for mimi-bridge.
#[derive(Parser)]
#[command(name = "mimi-client", about = "Native MLS client for mimi-bridge")]
struct Cli {
    #[command(flatten)]
    args: mimi_client::ClientArgs,
}

fn main() -> ExitCode {
    match mimi_client::run(Cli::parse().args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mimi-client: {e}");
            ExitCode::FAILURE
        }
    }
}
