//! The database schema, as numbered SQL migrations applied in order at open.
//!
//! Two daemons may open the same database at once (an active one and a standby), so migrations run under a
//! transaction-scoped advisory lock and each one is recorded in `mimi_migrations` in the transaction that applies
//! it. A database migrated by a newer mimi-bridge is refused. This is the database's own shape; the shape of
//! what is stored in it (the `meta` tree's schema version) is checked above the backend, as for every backend.

/// The migrations, in order: index `n` brings the database to version `n + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: every tree in one table, keys ordered bytewise; the leader lease, one row.
    "CREATE TABLE mimi_kv (
         tree  text COLLATE \"C\" NOT NULL,
         key   bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (tree, key)
     );
     CREATE TABLE mimi_leader (
         id         integer PRIMARY KEY CHECK (id = 1),
         holder     text NOT NULL,
         epoch      bigint NOT NULL,
         expires_at timestamptz NOT NULL
     );
     INSERT INTO mimi_leader VALUES (1, '', 0, 'epoch');",
];

/// Key of the advisory lock that serialises migrations (an arbitrary constant: "mimi" in ASCII).
pub(crate) const MIGRATION_LOCK: i64 = 0x6d69_6d69;

/// Creates the bookkeeping table if needed and applies the migrations the database lacks. Returns the version.
pub(crate) async fn migrate(client: &tokio_postgres::Client) -> Result<usize, String> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS mimi_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .or_else(|e| {
            // Two daemons creating the table at the same moment: one of them sees a unique violation, and the
            // table exists either way.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) { Ok(()) } else { Err(e) }
        })
        .map_err(|e| format!("creating mimi_migrations: {e}"))?;
    loop {
        client.batch_execute("BEGIN").await.map_err(|e| e.to_string())?;
        let step = async {
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            let row = client.query_one("SELECT coalesce(max(version), 0) FROM mimi_migrations", &[]).await?;
            let version: i32 = row.get(0);
            Ok::<_, tokio_postgres::Error>(version)
        };
        let version = match step.await {
            Ok(v) => usize::try_from(v).unwrap_or(0),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e.to_string());
            }
        };
        if version > MIGRATIONS.len() {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(format!(
                "the database has schema version {version}, this mimi-bridge understands up to {}: upgrade \
                 mimi-bridge",
                MIGRATIONS.len()
            ));
        }
        if version == MIGRATIONS.len() {
            client.batch_execute("COMMIT").await.map_err(|e| e.to_string())?;
            return Ok(version);
        }
        let next = i32::try_from(version + 1).unwrap_or(i32::MAX);
        let applied = async {
            client.batch_execute(MIGRATIONS[version]).await?;
            client.execute("INSERT INTO mimi_migrations (version) VALUES ($1)", &[&next]).await?;
            client.batch_execute("COMMIT").await
        };
        if let Err(e) = applied.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(format!("migration {next}: {e}"));
        }
        tracing::info!(version = next, "PostgreSQL schema migrated");
    }
}
