//! Command-line interface.

use crate::config::{self, Config};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimi-bridge links IRC channels, XMPP MUCs and Matrix rooms to end-to-end-encrypted MLS groups that speak the
/// IETF MIMI content format.
///
/// Start with `mimi-bridge check-config config.example.toml`, then `mimi-bridge run --config FILE`. While it
/// runs, `mimi-bridge status` and `mimi-bridge portal list|link|unlink` talk to it over its admin API
/// (`[admin] listen`, authenticated with the admin token).
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
    /// Opens the store in `bridge.data_dir` (creating it, mode 0700, on first start; refusing to start if other
    /// users can read it), creates the configured portals and links their legs, starts one connection per
    /// configured account, serves the admin API, and bridges. Under systemd (Type=notify) it reports READY, pets
    /// the watchdog while its event loop answers, and reports STOPPING. SIGTERM stops intake, lets every portal
    /// finish what it accepted, closes the accounts, flushes the store and exits 0 — or exits 1 if that takes
    /// longer than `bridge.shutdown_timeout`. A second signal exits at once (accepted events are durable).
    ///
    /// `--data-dir` and `--listen` override the file's `[bridge] data_dir` and `[mimi] listen`, so several
    /// instances can run side by side from one config file (give each its own `[admin] listen` port, or port 0).
    Run {
        /// The config file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The data directory, instead of `[bridge] data_dir`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The address of the MIMI endpoints and the client API, instead of `[mimi] listen` (plain HTTP only on
        /// loopback, as in the file).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Check a config file and exit: 0 if valid, 1 with `FILE:LINE:COLUMN: key ...: problem` if not.
    ///
    /// Also reads the secrets the file refers to (token files, `env:` variables), so run it as the daemon's user
    /// with the daemon's environment.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Write the appservice registration file of a `[matrix.NAME]` account, for the homeserver to load.
    ///
    /// Token files named by `as_token_file` / `hs_token_file` that do not exist yet are created with random
    /// tokens (mode 0600). The registration holds both tokens and is written mode 0600.
    GenerateRegistration {
        /// The config file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The Matrix account (`NAME` of `[matrix.NAME]`); needed only when there are several.
        #[arg(long)]
        account: Option<String>,
        /// Where to write the registration (YAML).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print, as markdown, what each network can express and what crosses from one network to another.
    ///
    /// Without `--config`: one reference account per network and mode (this is docs/capabilities.md). With it: the
    /// file's own accounts, with their settings.
    Capabilities {
        /// Describe this config file's accounts instead of the reference ones.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the running daemon's health: every account, every portal's queue depth and MLS epoch, every leg's
    /// pending, delivered and failed deliveries.
    Status {
        /// The daemon's config file (for the admin address and token).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, link and unlink portals' rooms on the running daemon (effective at once, persisted).
    Portal {
        /// The daemon's config file (for the admin address and token).
        #[arg(long, short, default_value = config::DEFAULT_PATH, global = true)]
        config: PathBuf,
        /// What to do.
        #[command(subcommand)]
        command: crate::admin_cmd::PortalCommand,
    },
    /// Decode, encode and identify MIMI content messages (draft-ietf-mimi-content).
    #[command(subcommand)]
    Content(crate::content_cmd::ContentCommand),
    /// Back up, inspect, check and move the embedded store (run while the daemon is stopped).
    #[command(subcommand)]
    Store(crate::store_cmd::StoreCommand),
    /// The native MLS client (the `mimi-client` binary's commands): `--state DIR --server URL COMMAND`.
    ///
    /// Holds its own keys in `--state DIR` and talks to a daemon's client API (`[mimi] listen`) at `--server`
    /// (`http://` on loopback, or `https://` verified against `--ca-file` or the system's CAs). `chat ROOM` is
    /// the interactive mode.
    Client(mimi_client::ClientArgs),
}

/// Runs a parsed command line; the exit code on success.
pub fn dispatch(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Run { config, data_dir, listen } => {
            let cfg = Config::load(&config)?.with_overrides(data_dir, listen)?;
            crate::daemon::run(cfg).map_err(|e| e as Box<dyn std::error::Error>)
        }
        Command::GenerateRegistration { config, account, out } => {
            crate::registration_cmd::run(&config, account.as_deref(), &out).map(|()| ExitCode::SUCCESS)
        }
        Command::Capabilities { config } => {
            print!("{}", crate::capabilities_cmd::run(config.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(args) => mimi_client::run(args).map(|()| ExitCode::SUCCESS).map_err(Into::into),
        Command::Content(cmd) => crate::content_cmd::run(cmd).map(|()| ExitCode::SUCCESS).map_err(Into::into),
        Command::Status { config, json } => {
            crate::admin_cmd::status(&Config::load(&config)?, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Portal { config, command } => {
            crate::admin_cmd::portal(&Config::load(&config)?, command).map(|()| ExitCode::SUCCESS)
        }
        Command::Store(cmd) => Ok(if crate::store_cmd::run(cmd)? { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            let accounts = cfg.resolved_accounts()?;
            println!(
                "{}: ok ({} portal(s), {} account(s), {} MIMI peer(s), store {}, native registration {:?})",
                file.display(),
                cfg.portal.len(),
                accounts.len(),
                cfg.mimi.peer.len(),
                cfg.bridge.store,
                cfg.mimi.registration
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
