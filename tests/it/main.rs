//! The daemon's integration tests, scenarios a user would recognise, run against the real `mimi-bridge` binary and
//! real servers: one test binary, so the workspace links it once.

mod client_support;
mod common;

mod admin_api;
mod capability_matrix;
mod client_api_auth;
mod client_cli;
mod content_cli;
mod daemon;
mod docs_paths;
mod failover;
mod fault_injection;
mod federated_legs;
mod federation;
mod hostile_input;
mod http_clients;
mod https;
mod hub_validation;
mod identities;
mod irc_daemon;
mod listener_bounds;
mod matrix_bot_daemon;
mod matrix_daemon;
mod matrix_media;
mod media;
mod memory_bounds;
mod mimi_tls;
mod no_loss;
mod quotas;
mod retention;
mod run_overrides;
mod server_restarts;
mod shutdown_load;
mod slice;
mod store_failure;
mod store_move;
mod systemd_unit;
mod three_networks;
mod xmpp_crash;
mod xmpp_daemon;
