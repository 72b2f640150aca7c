//! Where the PostgreSQL server is and how to reach it: [`PostgresConfig`], TLS with rustls, and the connections'
//! runtime.
//!
//! The connection string is a secret (it may hold a password): it comes from a file or the environment, never from
//! the TOML, and [`PostgresConfig::display`] — what logs and errors show — leaves the password out.

use super::super::kv::StoreError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::Host;

/// How long a connection attempt may take, and how long an unanswered connection lives (TCP keepalive and
/// `TCP_USER_TIMEOUT`): a server that went away shows up as an error, never as a write that hangs.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection to a PostgreSQL server, and the leader lease's timing.
#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq connection string or URL (`postgresql://user:password@host:5432/db?sslmode=require`).
    pub url: String,
    /// PEM file of the CA that signs the server's certificate, for `sslmode=require`; `None` trusts the system
    /// store.
    pub ca_file: Option<PathBuf>,
    /// How long the leader lease lasts without renewal: a standby takes over this long after the active daemon
    /// stopped renewing it (it renews every third of it).
    pub lease: Duration,
    /// When another daemon holds the lease: `true` waits for it (a standby), `false` fails at once.
    pub wait_for_lease: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("server", &self.display())
            .field("ca_file", &self.ca_file)
            .field("lease", &self.lease)
            .field("wait_for_lease", &self.wait_for_lease)
            .finish()
    }
}

impl PostgresConfig {
    /// A config for `url` with the default lease (5 s) that fails if another daemon is active.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ca_file: None, lease: Duration::from_secs(5), wait_for_lease: false }
    }

    /// The parsed connection string, with the timeouts of [`NETWORK_TIMEOUT`].
    pub(crate) fn parsed(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut c: tokio_postgres::Config = self.url.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's message quotes no part of the string, so no secret leaks through it.
            StoreError::Backend {
                backend: "postgres",
                path: PathBuf::from("<connection string>"),
                message: format!("invalid PostgreSQL connection string: {e}"),
            }
        })?;
        c.connect_timeout(NETWORK_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(NETWORK_TIMEOUT);
        if c.get_application_name().is_none() {
            c.application_name("mimi-bridge");
        }
        let remote = c.get_hosts().iter().any(|h| match h {
            Host::Tcp(name) => !matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1"),
            Host::Unix(_) => false,
        });
        if remote && c.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            tracing::warn!(
                server = %self.display(),
                "the PostgreSQL connection string allows an unencrypted connection to a remote server (sslmode is not \
                 `require`): someone on the path could read or change the store, MLS keys included; add \
                 `sslmode=require`"
            );
        }
        Ok(c)
    }

    /// `user@host:port/dbname` without the password: what errors and logs show.
    pub fn display(&self) -> String {
        let Ok(c) = self.url.parse::<tokio_postgres::Config>() else {
            return "<invalid connection string>".into();
        };
        let host = match c.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgresql://{}@{host}:{port}/{}",
            c.get_user().unwrap_or("?"),
            c.get_dbname().or(c.get_user()).unwrap_or("?")
        )
    }
}

/// A runtime of its own for the PostgreSQL connections: the store's methods block (the [`crate::KvStore`]
/// contract), and they may be called from the daemon's async tasks, where blocking on the daemon's own runtime
/// would deadlock it.
pub(crate) struct Runtime {
    rt: Option<tokio::runtime::Runtime>,
}

impl Runtime {
    pub(crate) fn new() -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres-io")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io { path: PathBuf::from("<postgres runtime>"), source: e })?;
        Ok(Self { rt: Some(rt) })
    }

    /// Runs `fut` on the store's runtime and blocks the calling thread until it is done. Safe to call from any
    /// thread, an async task's included; never from a future running on this runtime.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rt = self.rt.as_ref().ok_or(StoreError::Closed)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Closed)
    }

    /// Starts a task on the store's runtime.
    pub(crate) fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.rt {
            rt.spawn(fut);
        }
    }
}

impl Drop for Runtime {
    /// Stops the runtime without waiting for its tasks: a plain drop panics in an async context, where the last
    /// reference to a store may well go.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Opens one connection to the server, with TLS when the connection string asks for it, and drives it on `rt`.
pub(crate) fn connect(rt: &Runtime, cfg: &PostgresConfig) -> Result<Arc<tokio_postgres::Client>, StoreError> {
    let parsed = cfg.parsed()?;
    let tls = tls(cfg)?;
    let server = cfg.display();
    let client = rt.run(async move {
        let (client, connection) = parsed.connect(tls).await.map_err(|e| with_causes(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok::<_, String>(client)
    })?;
    client.map(Arc::new).map_err(|message| StoreError::Backend {
        backend: "postgres",
        path: PathBuf::from(&server),
        message: format!("could not connect: {message}"),
    })
}

/// `e` and its causes (tokio-postgres says "error performing TLS handshake" and keeps the why in the source).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// rustls for `sslmode=prefer/require`: the CA of `ca_file`, or the system store. Built even for `sslmode=disable`
/// (where it is not used) so that a bad `ca_file` is reported at once.
fn tls(cfg: &PostgresConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |message: String| StoreError::Backend {
        backend: "postgres",
        path: cfg.ca_file.clone().unwrap_or_else(|| PathBuf::from("<system CA store>")),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let c = PostgresConfig::new("postgresql://bridge:s3cret@db.example.org:6543/mimi?sslmode=require");
        assert_eq!(c.display(), "postgresql://bridge@db.example.org:6543/mimi");
        assert!(!format!("{c:?}").contains("s3cret"));
        let kv = PostgresConfig::new("host=/run/postgresql user=bridge password=s3cret dbname=mimi");
        assert_eq!(kv.display(), "postgresql://bridge@/run/postgresql:5432/mimi");
        let bad = PostgresConfig::new("postgresql://bridge:s3cret@db:notaport/mimi");
        let err = bad.parsed().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("invalid PostgreSQL connection string"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
