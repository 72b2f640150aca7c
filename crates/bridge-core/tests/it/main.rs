//! bridge-core's integration tests: one test binary, so the crate links its tests once.

mod crash;
mod provider_portal;
mod remote_room;
mod retention;
mod router;
mod schema_v1;
mod store_backends;
mod store_postgres;
