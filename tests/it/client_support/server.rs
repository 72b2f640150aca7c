//! The daemon's MIMI endpoints and client API served in-process on a free loopback port (the real router on a
//! fresh provider), over plain HTTP or over TLS with the daemon's own listener.

use mimi_bridge::listener::{self, Limits, Plain};
use mimi_bridge::mimi_http::router;
use mimi_bridge::mimi_tls::MimiTls;
use mimi_provider::Provider;
use mimi_store::{Backend, CommitConfig};
use std::path::Path;

/// Serves provider `domain` (store in `dir`) until `rt` ends; returns its base URL: `http://127.0.0.1:PORT`, or
/// with `tls`, `https://localhost:PORT`.
pub fn serve(rt: &tokio::runtime::Runtime, dir: &Path, domain: &str, tls: Option<MimiTls>) -> String {
    rt.block_on(async {
        let store = bridge_core::open_store(dir, Some(Backend::Redb), CommitConfig::default()).expect("store");
        let provider = Provider::open(domain, store).expect("provider");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let app = router(crate::common::api::state(provider, url.clone(), Default::default()));
        let (limits, forever) = (Limits::default(), std::future::pending());
        match tls {
            Some(tls) => tokio::spawn(listener::serve("test", listener, tls, app, limits, forever)),
            None => tokio::spawn(listener::serve("test", listener, Plain, app, limits, forever)),
        };
        url
    })
}
