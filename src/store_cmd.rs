//! `mimi-bridge store …`: back up, inspect, check and move the embedded store between backends.
//!
//! Run these while the daemon is stopped: the embedded backends lock their files, PostgreSQL has its leader lease,
//! and a second opener is refused with an error that says so.
//!
//! Moving between backends: `store export` with the old config, then `store import` into a new, empty data
//! directory with the new config (`bridge.store`, and for PostgreSQL its connection settings).

use crate::config::Config;
use clap::Subcommand;
use mimi_store::{Backend, CommitConfig, export, schema};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every entry of the store as JSON lines to standard output (a backup, or the input of `import`).
    Export {
        /// Where the config file is (for `bridge.data_dir`).
        #[arg(long, short, default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Use this data directory instead of the config's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Load an export into an empty data directory (with the config's backend, or `--backend`).
    Import {
        /// The export file (`-` for standard input).
        file: PathBuf,
        /// Where the config file is (for `bridge.data_dir` and `bridge.store`).
        #[arg(long, short, default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Use this data directory instead of the config's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Backend for a new data directory: `redb`, `sled` or `postgres` (default: the config's `bridge.store`;
        /// `postgres` needs the config's connection settings).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Verify the schema version and the store's invariants; exit 1 if anything is wrong.
    Check {
        /// Where the config file is (for `bridge.data_dir`).
        #[arg(long, short, default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Use this data directory instead of the config's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Where a command works: the data dir (from `--data-dir`, else from the config), the config's backend and its
/// PostgreSQL connection, when the config was loaded. With `--data-dir` the config is read only if it exists.
struct Place {
    dir: PathBuf,
    backend: Option<Backend>,
    postgres: Option<mimi_store::PostgresConfig>,
}

fn locate(config: &Path, data_dir: Option<PathBuf>) -> Result<Place, String> {
    let cfg = match &data_dir {
        Some(_) if !config.exists() => None,
        _ => Some(Config::load(config).map_err(|e| e.to_string())?),
    };
    // A tool never waits for the lease like a standby: it fails at once while a daemon is active.
    let postgres = match &cfg {
        Some(c) => c.postgres().map_err(|e| e.to_string())?.map(|mut p| {
            p.wait_for_lease = false;
            p
        }),
        None => None,
    };
    Ok(Place {
        dir: data_dir.or_else(|| cfg.as_ref().map(|c| c.bridge.data_dir.clone())).unwrap_or_default(),
        backend: cfg.as_ref().map(|c| c.bridge.store),
        postgres,
    })
}

/// Runs a `store` subcommand; `Ok(false)` means "ran, found problems" (exit 1).
pub fn run(cmd: StoreCommand) -> Result<bool, String> {
    // What `import` creates (the data directory, its marker, a database file) is private, as if the daemon had
    // created it: the daemon refuses a data directory others can read.
    crate::data_dir::private_umask();
    match cmd {
        StoreCommand::Export { config, data_dir } => {
            let Place { dir, postgres, .. } = locate(&config, data_dir)?;
            let kv = schema::open_backend_at(&dir, None, postgres.as_ref()).map_err(|e| e.to_string())?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = export::export(kv.as_ref(), &mut out, &bridge_core::SCHEMA).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| format!("standard output: {e}"))?;
            eprintln!("exported {n} entries from {} ({})", dir.display(), kv.backend());
            Ok(true)
        }
        StoreCommand::Import { file, config, data_dir, backend } => {
            let Place { dir, backend: cfg_backend, postgres } = locate(&config, data_dir)?;
            let wanted = match backend {
                Some(b) => {
                    Backend::parse(&b).ok_or_else(|| format!("unknown backend {b:?}: use redb, sled or postgres"))?
                }
                None => cfg_backend.unwrap_or(Backend::Redb),
            };
            if wanted == Backend::Postgres && postgres.is_none() {
                return Err(format!(
                    "importing into PostgreSQL needs its connection settings: set bridge.store = \"postgres\" and \
                     bridge.postgres_url_file (or postgres_url = \"env:NAME\") in {}",
                    config.display()
                ));
            }
            let store = bridge_core::open_store_at(&dir, Some(wanted), postgres.as_ref(), CommitConfig::default())
                .map_err(|e| e.to_string())?;
            let n = if file.as_os_str() == "-" {
                export::import(
                    store.kv().as_ref(),
                    &mut std::io::stdin().lock(),
                    &bridge_core::SCHEMA,
                    &bridge_core::known_trees(),
                )
            } else {
                let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                export::import(
                    store.kv().as_ref(),
                    &mut BufReader::new(f),
                    &bridge_core::SCHEMA,
                    &bridge_core::known_trees(),
                )
            }
            .map_err(|e| format!("{}: {e}", file.display()))?;
            eprintln!("imported {n} entries into {} ({wanted})", dir.display());
            Ok(true)
        }
        StoreCommand::Check { config, data_dir } => {
            let Place { dir, postgres, .. } = locate(&config, data_dir)?;
            let kv = schema::open_backend_at(&dir, None, postgres.as_ref()).map_err(|e| e.to_string())?;
            let report = bridge_core::check::check(kv.as_ref(), &dir).map_err(|e| e.to_string())?;
            println!("{report}");
            Ok(report.is_ok())
        }
    }
}
