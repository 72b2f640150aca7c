//! Bot mode: the account's matrix-sdk client — its store (state, and the device's end-to-end keys) under the
//! account's state directory — logged in once, with a password or an access token, and restored from the session
//! kept beside it at every later start: one device however often the daemon restarts.

use super::position::write_atomically;
use crate::Config;
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::encryption::EncryptionSettings;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::{Client, SessionMeta, SessionTokens};
use std::path::Path;

/// The display name of the bot's device.
pub const DEVICE_NAME: &str = "mimi-bridge";

/// Why the client is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The homeserver refused the credentials: nothing to retry until the configuration changes.
    #[error("the homeserver refused the credentials: {0}")]
    BadCredentials(String),
    /// Not now (unreachable, overloaded): try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The state directory or the store cannot be used.
    #[error("{0}")]
    Local(String),
}

/// How a failed call to the homeserver counts.
pub fn classify(e: &matrix_sdk::Error) -> LoginError {
    match e.as_client_api_error() {
        Some(api) if matches!(api.error_kind(), Some(ErrorKind::Forbidden | ErrorKind::UnknownToken(_))) => {
            LoginError::BadCredentials(api.to_string())
        }
        Some(api) if api.status_code.is_client_error() && api.status_code.as_u16() != 429 => {
            LoginError::BadCredentials(api.to_string())
        }
        _ => LoginError::Unavailable(e.to_string()),
    }
}

/// Whether the homeserver says the session's token is not (or no longer) valid.
pub fn is_unknown_token(e: &matrix_sdk::Error) -> bool {
    matches!(e.client_api_error_kind(), Some(ErrorKind::UnknownToken(_)))
}

/// A client for the account of `cfg`, logged in (or restored), with its store in `dir`.
pub async fn client(cfg: &Config, dir: &Path) -> Result<Client, LoginError> {
    let session_file = dir.join("session.json");
    let local = |what: &str, e: &dyn std::fmt::Display| LoginError::Local(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| local(&dir.display().to_string(), &e))?;
    // Checked as the store opens: a fresh login removes the store of any earlier device first.
    let build = || async {
        let passphrase = crate::store_passphrase::check(&dir.join("sdk"), cfg.store_passphrase.as_deref())
            .map_err(LoginError::Local)?;
        Client::builder()
            .homeserver_url(&cfg.homeserver_url)
            .sqlite_store(dir.join("sdk"), passphrase)
            .with_encryption_settings(EncryptionSettings { auto_enable_cross_signing: true, ..Default::default() })
            .build()
            .await
            .map_err(|e| local("the Matrix client store", &e))
    };
    let kept = match std::fs::read(&session_file) {
        // A session without its store (moved away to start over) is a device whose keys are gone: log in anew.
        Ok(_) if !dir.join("sdk").exists() => {
            tracing::warn!(user = %cfg.bot_user_id(), "the kept session has no store beside it: logging in again");
            None
        }
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(local(&session_file.display().to_string(), &e)),
    };
    if let Some(bytes) = kept {
        let session: MatrixSession =
            serde_json::from_slice(&bytes).map_err(|e| local(&session_file.display().to_string(), &e))?;
        if session.meta.user_id.as_str() != cfg.bot_user_id() {
            return Err(LoginError::BadCredentials(format!(
                "the kept session ({}) is {}'s, not {}'s: remove it and the store beside it to log in as the \
                 configured account",
                session_file.display(),
                session.meta.user_id,
                cfg.bot_user_id()
            )));
        }
        let client = build().await?;
        client.restore_session(session).await.map_err(|e| local("restoring the session", &e))?;
        match client.whoami().await {
            Ok(_) => return Ok(client),
            Err(e) if matches!(e.client_api_error_kind(), Some(ErrorKind::UnknownToken(_))) => {
                // Logged out elsewhere: a new device needs a new store (the keys are the old device's).
                tracing::warn!(user = %cfg.bot_user_id(), "the bot's session was ended on the homeserver: logging in again");
                drop(client);
            }
            Err(e) => return Err(LoginError::Unavailable(e.to_string())),
        }
    }
    // A fresh device: the store of any earlier one goes first (its keys are not the new device's, and a login cut
    // short before its session was kept left one behind), then the session that pointed at it.
    match std::fs::remove_dir_all(dir.join("sdk")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(local("the old Matrix client store", &e)),
        _ => {}
    }
    match std::fs::remove_file(&session_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(local(&session_file.display().to_string(), &e));
        }
        _ => {}
    }
    let client = build().await?;
    let user = cfg.bot_user_id();
    match (&cfg.access_token, &cfg.password) {
        (Some(token), _) if !token.trim().is_empty() => {
            let (user_id, device_id) = whoami(&cfg.homeserver_url, token.trim()).await?;
            if user_id != user {
                return Err(LoginError::BadCredentials(format!("the access token is {user_id}'s, not {user}'s")));
            }
            let session = MatrixSession {
                meta: SessionMeta {
                    user_id: user_id.as_str().try_into().map_err(|e| local("the homeserver's user id", &e))?,
                    device_id: device_id.as_str().into(),
                },
                tokens: SessionTokens { access_token: token.trim().to_owned(), refresh_token: None },
            };
            client.restore_session(session).await.map_err(|e| local("using the access token", &e))?;
        }
        (_, Some(password)) => {
            client
                .matrix_auth()
                .login_username(&user, password)
                .initial_device_display_name(DEVICE_NAME)
                .send()
                .await
                .map_err(|e| classify(&e))?;
        }
        _ => return Err(LoginError::BadCredentials("neither `password` nor `access_token` is set".into())),
    }
    let session = client.matrix_auth().session().ok_or_else(|| local("the login", &"it gave no session"))?;
    let json = serde_json::to_vec(&session).map_err(|e| local("the session", &e))?;
    write_atomically(&session_file, &json).map_err(|e| local(&session_file.display().to_string(), &e))?;
    tracing::info!(user = %user, device = %session.meta.device_id, "Matrix bot logged in; its session is kept");
    Ok(client)
}

/// The user and device of an access token (`GET /account/whoami`).
async fn whoami(homeserver: &str, token: &str) -> Result<(String, String), LoginError> {
    let url = format!("{}/_matrix/client/v3/account/whoami", homeserver.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| LoginError::Local(format!("an HTTP client: {e}")))?;
    let resp =
        http.get(url).bearer_auth(token).send().await.map_err(|e| LoginError::Unavailable(format!("whoami: {e}")))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_client_error() && status.as_u16() != 429 {
        return Err(LoginError::BadCredentials(format!("whoami: HTTP {status}: {}", body["error"])));
    }
    if !status.is_success() {
        return Err(LoginError::Unavailable(format!("whoami: HTTP {status}")));
    }
    match (body["user_id"].as_str(), body["device_id"].as_str()) {
        (Some(u), Some(d)) => Ok((u.to_owned(), d.to_owned())),
        _ => Err(LoginError::BadCredentials("the access token belongs to no device (whoami names none)".into())),
    }
}
