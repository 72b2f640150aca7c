//! `mimi-bridge status` and `mimi-bridge portal …`: the CLI side of the admin API.

use crate::admin::{ApiError, PortalList, StatusReport};
use crate::client::{AdminClient, Answer};
use crate::config::Config;
use crate::data_dir::ADMIN_TOKEN_FILE;
use crate::secrets::{self, Secret};
use bridge_api::connector::Health;
use clap::Subcommand;
use std::fmt::Write as _;

/// `portal` subcommands.
#[derive(Debug, Subcommand)]
pub enum PortalCommand {
    /// List every portal with its linked rooms.
    List {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Link a room to a portal, at once and durably (it survives restarts).
    ///
    /// Example: `mimi-bridge portal link rust irc.libera '#rust'`. The account must be configured, unless
    /// `--force` (its deliveries then wait in the outbox until the account exists).
    Link {
        /// The portal's name.
        portal: String,
        /// The account, `network.name` as in the config's table (`irc.libera`).
        account: String,
        /// The room's native name (`#rust`, `!id:example.org`, `room@muc.example.org`).
        room: String,
        /// Link even if the account is neither configured nor running.
        #[arg(long)]
        force: bool,
    },
    /// Unlink a room from its portal, at once and durably. Deliveries still pending for it stay in the outbox.
    Unlink {
        /// The account, `network.name`.
        account: String,
        /// The room's native name.
        room: String,
    },
}

/// The client for the daemon `cfg` describes, with its admin token (from the config, or the one the daemon wrote
/// into its data directory).
fn client(cfg: &Config) -> Result<AdminClient, Box<dyn std::error::Error>> {
    let token = match cfg.admin_token()? {
        Some(t) => t,
        None => {
            let path = cfg.bridge.data_dir.join(ADMIN_TOKEN_FILE);
            secrets::from_file(&path).map_err(|e| {
                format!("no admin token configured and {e} (run this as the daemon's user, or set admin.token_file)")
            })?
        }
    };
    Ok(AdminClient::new(*cfg.admin.listen.get_ref(), token))
}

fn call<T>(
    cfg: &Config,
    f: impl AsyncFnOnce(&AdminClient) -> Result<Answer, crate::client::ClientError>,
    ok: impl FnOnce(&[u8]) -> Result<T, Box<dyn std::error::Error>>,
) -> Result<T, Box<dyn std::error::Error>> {
    let c = client(cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = rt.block_on(f(&c))?;
    if !answer.status.is_success() {
        let msg = serde_json::from_slice::<ApiError>(&answer.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).trim().to_owned());
        return Err(format!("the daemon answered {}: {msg}", answer.status).into());
    }
    ok(&answer.body)
}

fn health_text(h: &Health) -> String {
    match h {
        Health::Connecting => "connecting".into(),
        Health::Connected => "connected".into(),
        Health::BackingOff { retry_in, reason } => format!("backing off ({reason}; retry in {retry_in:?})"),
        Health::BadCredentials { reason } => format!("bad credentials ({reason})"),
        Health::Stopped => "stopped".into(),
    }
}

/// Renders a status report for people.
pub fn render_status(s: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "mimi-bridge {} — {} — up {} s",
        s.version,
        if s.ready { "ready" } else { "NOT READY" },
        s.uptime_secs
    );
    if !s.store.backend.is_empty() {
        let epoch = s.store.lease_epoch.map(|e| format!(" (leader lease epoch {e})")).unwrap_or_default();
        let _ = writeln!(o, "store {}: {}{epoch}", s.store.backend, s.store.role);
    }
    let _ = writeln!(o, "\naccounts:");
    if s.accounts.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for a in &s.accounts {
        let _ = writeln!(o, "  {:<24} {}", a.account, health_text(&a.health));
    }
    let _ = writeln!(o, "\nportals:");
    if s.portals.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for p in &s.portals {
        let epoch = p.mls_epoch.map_or_else(|| "-".to_owned(), |e| e.to_string());
        let _ = writeln!(o, "  {:<24} queue {:<5} mls epoch {epoch}", p.name, p.queue_depth);
        for l in &p.legs {
            let _ = writeln!(
                o,
                "    {}/{:<20} pending {:<5} delivered {:<7} failed {}",
                l.account, l.room, l.pending, l.delivered, l.failed
            );
        }
    }
    o
}

/// Whether the daemon on `cfg`'s admin address is a standby (its `/health` says so; no token needed).
fn is_standby(cfg: &Config) -> bool {
    let c = AdminClient::new(*cfg.admin.listen.get_ref(), Secret::new("-"));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
    rt.block_on(c.get("/health")).is_ok_and(|a| a.body.starts_with(b"standby"))
}

/// `mimi-bridge status`.
pub fn status(cfg: &Config, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    // A standby that never ran has written no admin token yet; it answers without one.
    if client(cfg).is_err() && is_standby(cfg) {
        return Err(crate::standby::STANDBY_STATUS.into());
    }
    call(
        cfg,
        async |c| c.get("/v1/status").await,
        |body| {
            if json {
                println!("{}", String::from_utf8_lossy(body));
            } else {
                let s: StatusReport = serde_json::from_slice(body)?;
                print!("{}", render_status(&s));
            }
            Ok(())
        },
    )
}

/// `mimi-bridge portal …`.
pub fn portal(cfg: &Config, cmd: PortalCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        PortalCommand::List { json } => call(
            cfg,
            async |c| c.get("/v1/portals").await,
            |body| {
                if json {
                    println!("{}", String::from_utf8_lossy(body));
                    return Ok(());
                }
                let list: PortalList = serde_json::from_slice(body)?;
                if list.portals.is_empty() {
                    println!("(no portals)");
                }
                for p in list.portals {
                    println!("{}", p.name);
                    for l in p.legs {
                        println!("  {} {}", l.account, l.room);
                    }
                }
                Ok(())
            },
        ),
        PortalCommand::Link { portal, account, room, force } => {
            let body = serde_json::json!({ "portal": portal, "account": account, "room": room, "force": force });
            call(
                cfg,
                async |c| c.post("/v1/link", &body).await,
                |_| {
                    println!("linked {account} {room} to portal {portal}");
                    Ok(())
                },
            )
        }
        PortalCommand::Unlink { account, room } => {
            let body = serde_json::json!({ "account": account, "room": room });
            call(
                cfg,
                async |c| c.post("/v1/unlink", &body).await,
                |_| {
                    println!("unlinked {account} {room}");
                    Ok(())
                },
            )
        }
    }
}
