//! Real clients for end-to-end runs, shared by the `mimi-bench` benchmark and the daemon's cross-network scenario
//! tests (tests/it): an IRC user ([`irc`]), a Matrix user with a `/sync` loop ([`matrix`]), an XMPP user
//! ([`xmpp`]); each notes the benchmark markers ([`measure`]) of what it reads, with the instant it read them, on
//! one monotonic clock. [`peers`] runs bridges as child processes; [`push_probe`] notes when the homeserver pushes
//! a message to an appservice.

pub mod irc;
pub mod matrix;
pub mod measure;
pub mod peers;
pub mod push_probe;
pub mod sustained;
pub mod xmpp;
