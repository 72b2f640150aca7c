//! Command-line interface.

use crate::config::{self, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimi-bridge links IRC channels, XMPP MUCs and Matrix rooms to end-to-end-encrypted MLS groups that speak the
/// IETF MIMI content format.
///
/// Start with `mimi-bridge check-config config.example.toml`, then `mimi-bridge run --config FILE`.
#[derive(Debug, Parser)]
#[command(name = "mimi-bridge", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM or Ctrl-C.
    ///
    /// Opens the store in `bridge.data_dir` (creating it, mode 0700, on first start), creates the configured
    /// portals and links their legs, starts one connection per configured account, and bridges. SIGTERM stops
    /// intake, lets every portal finish what it accepted, flushes the store and exits 0.
    Run {
        /// The config file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 if valid, 1 with `FILE:LINE:COLUMN: key ...: problem` if not.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Decode, encode and identify MIMI content messages (draft-ietf-mimi-content).
    #[command(subcommand)]
    Content(crate::content_cmd::ContentCommand),
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Run { config } => {
            let cfg = Config::load(&config)?;
            crate::run::run(cfg)
        }
        Command::Content(cmd) => crate::content_cmd::run(cmd).map_err(Into::into),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} portal(s), {} account(s), {} MIMI peer(s), store {}, native registration {:?})",
                file.display(),
                cfg.portal.len(),
                cfg.accounts().len(),
                cfg.mimi.peer.len(),
                cfg.bridge.store,
                cfg.mimi.registration
            );
            Ok(())
        }
    }
}
