//! What only the PostgreSQL store has: the leader lease (one writer per database, a standby that takes over, a
//! fenced old leader that writes nothing more), a lost connection failing the store, and TLS to the server.
//! The rest of the store suite runs on PostgreSQL in `store_backends::on_postgres`.

use super::store_backends::{postgres_cluster, postgres_for, tmp};
use bridge_core::open_store_at;
use mimi_store::{Backend, Batch, CommitConfig, PostgresConfig, Store, StoreError};
use std::path::Path;
use std::time::{Duration, Instant};

fn open(dir: &Path, cfg: &PostgresConfig) -> Result<Store, StoreError> {
    open_store_at(dir, Some(Backend::Postgres), Some(cfg), CommitConfig::default())
}

fn put(store: &Store, key: &str) -> Result<(), StoreError> {
    let mut b = Batch::new();
    b.put("msgs", key.as_bytes().to_vec(), b"v".to_vec());
    store.commit_blocking(b)
}

/// The database name in a connection string made by [`postgres_for`].
fn db_name(cfg: &PostgresConfig) -> String {
    cfg.url.rsplit('/').next().and_then(|s| s.split('?').next()).unwrap_or_default().to_owned()
}

#[test]
fn a_second_daemon_is_refused_while_the_first_holds_the_lease() {
    let (d1, d2) = (tmp(), tmp());
    let cfg = postgres_for(d1.path());
    let active = open(d1.path(), &cfg).expect("the first daemon opens");
    put(&active, "a").expect("and writes");
    let err = open(d2.path(), &cfg).err().expect("a second daemon on the same database is refused");
    let msg = err.to_string();
    assert!(msg.contains("another mimi-bridge") && msg.contains("standby"), "{msg}");
    assert!(!msg.contains(harness::postgres::PASSWORD), "the error shows the password: {msg}");
}

#[test]
fn a_standby_takes_over_at_once_when_the_active_one_stops_cleanly() {
    let (d1, d2) = (tmp(), tmp());
    let cfg = postgres_for(d1.path());
    let active = open(d1.path(), &cfg).expect("active");
    put(&active, "before").expect("write");
    let mut standby_cfg = cfg.clone();
    standby_cfg.wait_for_lease = true;
    let dir2 = d2.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let store = open(&dir2, &standby_cfg);
        let _ = tx.send(Instant::now());
        store
    });
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err(), "the standby waits while the active one runs");
    let stopped = Instant::now();
    drop(active);
    let took_over = rx.recv_timeout(Duration::from_secs(10)).expect("the standby takes over");
    let standby = waiter.join().expect("thread").expect("standby store");
    assert!(took_over - stopped < Duration::from_secs(3), "took {:?} after a clean stop", took_over - stopped);
    assert_eq!(standby.get("msgs", b"before").expect("get"), Some(b"v".to_vec()), "the standby sees the data");
    put(&standby, "after").expect("the new active one writes");
}

#[test]
fn a_fenced_old_leader_writes_nothing_more() {
    let (d1, d2) = (tmp(), tmp());
    let mut cfg = postgres_for(d1.path());
    cfg.lease = Duration::from_secs(3);
    let old = open(d1.path(), &cfg).expect("old leader");
    put(&old, "old-1").expect("write while leader");
    // As if the old leader had been paused past its lease: the lease runs out and a standby takes over.
    let db = db_name(&cfg);
    postgres_cluster().psql(&db, "UPDATE mimi_leader SET expires_at = 'epoch'").expect("expire the lease");
    let new = open(d2.path(), &cfg).expect("the standby takes over");
    let failed = old.failed();
    let err = put(&old, "old-2").expect_err("the old leader's write is refused");
    assert!(err.to_string().contains("no longer this daemon's"), "{err}");
    assert!(*failed.borrow(), "the old leader's store fails (fail-stop)");
    assert!(put(&old, "old-3").is_err(), "and stays failed");
    assert_eq!(new.get("msgs", b"old-2").expect("get"), None, "nothing of the fenced write reached the database");
    assert_eq!(new.get("msgs", b"old-1").expect("get"), Some(b"v".to_vec()));
    put(&new, "new-1").expect("the new leader writes");
    drop(old);
    put(&new, "new-2").expect("the old leader's clean stop does not release the new leader's lease");
}

#[test]
fn a_lost_connection_fails_the_store_even_when_idle() {
    let d = tmp();
    let cfg = postgres_for(d.path());
    let store = open(d.path(), &cfg).expect("open");
    put(&store, "a").expect("write");
    let mut failed = store.failed();
    let db = db_name(&cfg);
    postgres_cluster()
        .psql(&db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .expect("terminate the store's connections");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), failed.wait_for(|f| *f)).await })
        .expect("the store fails within 5 s, without a write")
        .expect("watch");
    assert!(put(&store, "b").is_err(), "nothing is acknowledged after the connection was lost");
}

#[test]
fn tls_to_the_server_checks_its_certificate() {
    let pki = tmp();
    let ca = harness::pki::Ca::new(pki.path(), "pg-ca");
    let other_ca = harness::pki::Ca::new(pki.path(), "other-ca");
    let server = ca.issue("pg", &["127.0.0.1", "localhost"], true, false);
    let pg = harness::Postgres::start_with(harness::PostgresOptions { tls: Some((server.cert, server.key)) })
        .expect("PostgreSQL with TLS");
    let url = pg.create_database("tls").expect("database").replace("sslmode=disable", "sslmode=require");
    let d = tmp();
    let mut cfg = PostgresConfig::new(url);
    cfg.ca_file = Some(other_ca.cert.clone());
    let err = open(d.path(), &cfg).err().expect("a server certificate from another CA is refused");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    cfg.ca_file = Some(ca.cert.clone());
    let store = open(d.path(), &cfg).expect("TLS with the server's CA");
    put(&store, "over-tls").expect("write over TLS");
    let encrypted = pg
        .psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'mimi-bridge' AND s.ssl",
        )
        .expect("pg_stat_ssl");
    assert_eq!(encrypted, "3", "all three connections (reads, writes, lease) use TLS");
}

#[test]
fn a_used_data_directory_refuses_an_empty_database() {
    let d = tmp();
    let cfg = postgres_for(d.path());
    let store = open(d.path(), &cfg).expect("open");
    put(&store, "a").expect("write");
    drop(store);
    // The same data directory pointed at another, empty database (a typo, a server moved without its data).
    let other = postgres_for(tmp().path());
    let err = open(d.path(), &other).err().expect("an empty database behind a used data directory is refused");
    let msg = err.to_string();
    assert!(msg.contains("holds no mimi-bridge store") && msg.contains(&db_name(&other)), "{msg}");
    assert!(
        postgres_cluster().psql(&db_name(&other), "SELECT count(*) FROM mimi_kv").expect("count") == "0",
        "nothing was stamped into the wrong database"
    );
    open(d.path(), &cfg).expect("the right database still opens");
}
