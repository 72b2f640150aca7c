//! mimi-mls's integration tests: one test binary, so the crate links its tests once.

mod mls_support;

mod hub_external_removes;
mod mls_big_group;
mod mls_crash;
mod mls_engine;
mod mls_interop;
mod mls_leaves;
mod mls_restart;
mod mls_verified_signatures;
