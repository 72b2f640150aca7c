//! The `mimi-bridge` daemon as a library: CLI, configuration, lifecycle, admin API, metrics and systemd
//! integration. The binary (`src/main.rs`) only parses the command line and calls [`cli::dispatch`]; tests start a
//! [`daemon::Daemon`] in-process where they need to attach test accounts.

pub mod admin;
pub mod admin_cmd;
pub mod capabilities_cmd;
pub mod cli;
pub mod client;
pub mod config;
pub mod content_cmd;
pub mod daemon;
pub mod data_dir;
pub mod listener;
pub mod logging;
pub mod media;
pub mod mimi_http;
pub mod mimi_tls;
pub mod networks;
pub mod notify;
pub mod registration_cmd;
pub mod secrets;
pub mod standby;
pub mod store_cmd;
pub mod telemetry;
