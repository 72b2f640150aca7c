//! The client's command line, shared by the `mimi-client` binary and `mimi-bridge client`.

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where the client keeps its state, which server it talks to, and what to do.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Directory holding this client's keys and state.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// Base URL of the daemon's client API (`[mimi] listen`), e.g. http://127.0.0.1:8448 or https://chat.example.org.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// PEM file of the CA certificates that may sign an https:// server's certificate (default: the system's).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The client's commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Registers USER (a local name or a mimi:// URI) and uploads KeyPackages.
    Register {
        /// The user.
        user: String,
    },
    /// Creates a room hosted by the server; prints its URI on the last line.
    CreateRoom {
        /// The room's name.
        name: String,
    },
    /// Adds USERs (local names or mimi:// URIs, also of other providers) to ROOM from one KeyPackage each, in
    /// commits of at most `--batch` adds; users already in the room are skipped. A user without a KeyPackage is
    /// named and left out, the others are added, and the command then fails.
    Invite {
        /// The room: a name on your server, or a mimi:// URI.
        room: String,
        /// The users to add.
        #[arg(required = true, num_args = 1.., value_name = "USER")]
        users: Vec<String>,
        /// Most users one commit adds: every member processes each commit, so a few large commits seat many
        /// users faster than one commit each. At most 500 (a commit carries each added user's KeyPackage).
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=500))]
        batch: u16,
    },
    /// Prints the rooms this user was invited to (one `ROOM SEQ` line each; SEQ is the Welcome's place in the log).
    Invites,
    /// Joins ROOM: from a Welcome if invited, else by external commit.
    Join {
        /// The room: a name on your server, or a mimi:// URI.
        room: String,
    },
    /// Sends TEXT to ROOM; prints the message id. `--reply-to ID` makes it a reply, `--edit ID` a new version of
    /// your message ID (ids in hex, as `send` and `listen --json` print them). A TEXT starting with `/me ` is an
    /// emote.
    Send {
        /// The room: a name on your server, or a mimi:// URI.
        room: String,
        /// The message.
        text: String,
        /// Reply to this message.
        #[arg(long, value_name = "ID", conflicts_with = "edit")]
        reply_to: Option<String>,
        /// Replace (edit) this message of yours.
        #[arg(long, value_name = "ID")]
        edit: Option<String>,
        /// Attach this file: encrypted with a fresh key, the ciphertext written to `--upload-dir` (named by its
        /// hash) and linked at `--upload-url`/HASH as a MIMI external part — for a static file host you run.
        #[arg(long, value_name = "PATH", requires_all = ["upload_dir", "upload_url"])]
        attach: Option<PathBuf>,
        /// The media type of the attached file.
        #[arg(long, value_name = "TYPE", default_value = "application/octet-stream")]
        attach_type: String,
        /// Where the attached file's ciphertext is written.
        #[arg(long, value_name = "DIR")]
        upload_dir: Option<PathBuf>,
        /// The URL under which `--upload-dir` is served.
        #[arg(long, value_name = "URL")]
        upload_url: Option<String>,
    },
    /// Prints messages of ROOM not seen yet, then new ones.
    Listen {
        /// The room: a name on your server, or a mimi:// URI.
        room: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after N messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Stop after SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Talks in ROOM interactively: prints messages as they arrive and sends each line read from standard input.
    ///
    /// `/me ACTION` sends an emote, `/quit` (or the end of the input) ends the session, `/help` lists the commands.
    Chat {
        /// The room: a name on your server, or a mimi:// URI.
        room: String,
    },
}
