//! `mimi-bridge status` and `mimi-bridge portal …`: the CLI side of the admin API.

use crate::admin::{ApiError, PortalList, StatusReport};
use crate::client::{AdminClient, Answer};
use crate::config::Config;
use crate::data_dir::ADMIN_TOKEN_FILE;
use crate::secrets::{self, Secret};
use bridge_api::connector::Health;
use bridge_core::mls_rooms::{Invited, MAX_INVITED_AT_ONCE};
use clap::Subcommand;
use std::collections::HashSet;
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
    /// Invite native users into a portal's MLS group: the bridge claims a KeyPackage of each and adds them, in
    /// commits of at most `--batch` users, and each joins from the Welcome the hub keeps for them
    /// (`mimi-bridge client … join`). How an invite-only portal (`join = "invite"`) gets its first members.
    ///
    /// A user without a KeyPackage is named and left out, the others are added, and the command then fails;
    /// users already in the group are said so and skipped.
    Invite {
        /// The portal's name.
        portal: String,
        /// The users: URIs (`mimi://example.org/u/alice`, also of federated providers) or names of this
        /// provider's users.
        #[arg(required = true, num_args = 1.., value_name = "USER")]
        users: Vec<String>,
        /// Most users one commit adds (at most 500): every member processes each commit, so a few large commits
        /// seat many users faster than one commit each.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u16).range(1..=MAX_INVITED_AT_ONCE as i64))]
        batch: u16,
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
    call_with(client(cfg)?, f, ok)
}

fn call_with<T>(
    c: AdminClient,
    f: impl AsyncFnOnce(&AdminClient) -> Result<Answer, crate::client::ClientError>,
    ok: impl FnOnce(&[u8]) -> Result<T, Box<dyn std::error::Error>>,
) -> Result<T, Box<dyn std::error::Error>> {
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
        PortalCommand::Invite { portal, users, batch } => invite(cfg, &portal, &users, usize::from(batch)),
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

/// `mimi-bridge portal invite`: one call of the admin API per batch; the users left out are named at the end, and
/// if a batch fails, the users of it and of the batches after it.
fn invite(cfg: &Config, portal: &str, users: &[String], batch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut seen = HashSet::new();
    let unique: Vec<&String> = users.iter().filter(|u| seen.insert(u.as_str())).collect();
    // Claims from slow providers and a commit in a big group take longer than other calls.
    let timeout = INVITE_TIMEOUT;
    let mut left_out = Vec::new();
    let batches: Vec<&[&String]> = unique.chunks(batch.clamp(1, MAX_INVITED_AT_ONCE)).collect();
    for (i, chunk) in batches.iter().enumerate() {
        let body = serde_json::json!({ "portal": portal, "users": chunk });
        let answer = call_with(
            client(cfg)?.with_timeout(timeout),
            async |c| c.post("/v1/invite", &body).await,
            |body| Ok(serde_json::from_slice::<Invited>(body)?),
        );
        let done = match answer {
            Ok(done) => done,
            Err(e) => {
                let rest: Vec<&str> = batches[i..].iter().flat_map(|b| b.iter().map(|u| u.as_str())).collect();
                left_out.extend(rest.iter().map(|u| u.to_string()));
                return Err(format!(
                    "{e}; not invited to portal {portal}: {} ({} of {})",
                    left_out.join(", "),
                    left_out.len(),
                    unique.len()
                )
                .into());
            }
        };
        for user in done.added {
            println!("invited {user} to portal {portal}");
        }
        for user in done.already_members {
            println!("{user} is already in portal {portal}");
        }
        for l in done.left_out {
            eprintln!("{}: {}", l.user, l.error);
            left_out.push(l.user);
        }
    }
    if left_out.is_empty() {
        return Ok(());
    }
    Err(format!("{} not invited to portal {portal}: {}", left_out.len(), left_out.join(", ")).into())
}

/// How long `portal invite` waits for each batch: the daemon claims the users' KeyPackages within
/// [`bridge_core::mls_rooms::CLAIMS_TIMEOUT`] (4 minutes), then commits.
const INVITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
