//! `mimi-bridge generate-registration`: the appservice registration file of a `[matrix.NAME]` account.
//!
//! The tokens are the account's `as_token` / `hs_token` as the config gives them (`KEY_file`, `env:NAME` or
//! inline, see [`crate::secrets`]). A `KEY_file` that does not exist yet is created with a fresh random token,
//! mode 0600, so a first setup is: write the `[matrix.NAME]` table with `as_token_file` / `hs_token_file`, run
//! this command, hand the registration file to the homeserver. The registration contains both tokens: it is
//! written mode 0600 (give the homeserver's user read access yourself).

use crate::config::Config;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes the registration of the Matrix account `account` (or the only one) of `config_path` to `out`.
pub fn run(config_path: &Path, account: Option<&str>, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::load(config_path)?;
    let names: Vec<&String> = cfg.matrix.keys().filter(|n| account.is_none_or(|a| a == n.as_str())).collect();
    let name = match names.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(format!("{}: no [matrix.{}] account", config_path.display(), account.unwrap_or("NAME")).into());
        }
        _ => return Err("several [matrix.NAME] accounts: pick one with --account NAME".into()),
    };
    let table = cfg.matrix.get(&name).map(|t| t.get_ref().clone()).unwrap_or_default();
    for key in ["as_token_file", "hs_token_file"] {
        if let Some(toml::Value::String(path)) = table.get(key) {
            create_token_file(Path::new(path)).map_err(|e| format!("matrix.{name}.{key}: {path}: {e}"))?;
        }
    }
    let (_, resolved) = cfg
        .resolved_accounts()?
        .into_iter()
        .find(|(id, _)| id.network() == "matrix" && id.name() == name)
        .ok_or_else(|| format!("matrix.{name} vanished from the config"))?;
    let matrix: connector_matrix::Config =
        resolved.try_into().map_err(|e: toml::de::Error| format!("matrix.{name}: {}", e.message()))?;
    matrix.check().map_err(|e| format!("matrix.{name}: {e}"))?;
    let yaml = connector_matrix::registration::registration_yaml(&matrix);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(yaml.as_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{}: registration of matrix.{name} written (it holds both tokens; mode 0600)", out.display());
    Ok(())
}

/// Creates `path` with a fresh random token (mode 0600) unless it exists.
fn create_token_file(path: &Path) -> std::io::Result<()> {
    let token = connector_matrix::registration::random_token();
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => f.write_all(format!("{token}\n").as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
