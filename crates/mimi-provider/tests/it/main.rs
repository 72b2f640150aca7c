//! Two providers, a.test and b.test, in one process on a [`MemoryNetwork`](mimi_provider::testing::MemoryNetwork):
//! the federation procedures and the client API's policy of `mimi-provider`, driven by real MLS clients, without
//! HTTP.

mod federation;
mod support;
