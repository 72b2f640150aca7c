//! `mimi-bridge content …`: MIMI content messages for people debugging interop and for scripted checks.

use clap::Subcommand;
use mimi_content::json;
use std::io::{Read, Write};
use std::path::PathBuf;

/// `content` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContentCommand {
    /// Print a MIMI content message (CBOR) as lossless JSON: field names as in the draft's CDDL, byte strings as
    /// lowercase hex, extensions as [key, value] pairs. `-` reads standard input.
    Decode {
        /// The CBOR file.
        file: PathBuf,
    },
    /// Read the JSON form on standard input and write the deterministic CBOR to standard output.
    Encode,
    /// Print a message's id (lowercase hex), from its own senderUri/roomUri extensions unless given.
    Id {
        /// The CBOR file (`-` for standard input).
        file: PathBuf,
        /// Sender URI to use instead of extension 1.
        #[arg(long)]
        sender: Option<String>,
        /// Room URI to use instead of extension 2.
        #[arg(long)]
        room: Option<String>,
    },
}

fn read_input(file: &PathBuf) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("standard input: {e}"))?;
    } else {
        buf = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(buf)
}

/// Runs a `content` subcommand. Errors are one line; the caller exits 1.
pub fn run(cmd: ContentCommand) -> Result<(), String> {
    match cmd {
        ContentCommand::Decode { file } => {
            let bytes = read_input(&file)?;
            let out = json::decode_to_json(&bytes).map_err(|e| e.to_string())?;
            println!("{out}");
        }
        ContentCommand::Encode => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("standard input: {e}"))?;
            let bytes = json::encode_from_json(&text).map_err(|e| e.to_string())?;
            std::io::stdout().write_all(&bytes).map_err(|e| format!("standard output: {e}"))?;
        }
        ContentCommand::Id { file, sender, room } => {
            let bytes = read_input(&file)?;
            let id = json::message_id_hex(&bytes, sender.as_deref(), room.as_deref()).map_err(|e| e.to_string())?;
            println!("{id}");
        }
    }
    Ok(())
}
