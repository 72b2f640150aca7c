//! The appservice API over a real socket, with a recording handler in place of the account.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
struct Recorder {
    batches: std::sync::Mutex<Vec<usize>>,
    fail: AtomicBool,
}

#[async_trait]
impl Transactions for Recorder {
    async fn handle(&self, txn: push_events::v1::Request) -> Result<(), String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("store down".into());
        }
        self.batches.lock().map_err(|e| e.to_string())?.push(txn.events.len());
        Ok(())
    }
    async fn query_user(&self, user_id: &str) -> bool {
        user_id.starts_with("@mimi_")
    }
}

/// Serves the API on a free port; returns its base URL.
async fn serve(handler: Arc<Recorder>) -> String {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let app = router("hs-secret", handler);
    tokio::spawn(async move { axum::serve(tcp, app).await });
    format!("http://{addr}")
}

fn txn_body() -> serde_json::Value {
    json!({"events": [{
        "type": "m.room.message", "event_id": "$e", "sender": "@a:hs", "room_id": "!r:hs",
        "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "hi"},
    }]})
}

async fn put_txn(base: &str, txn: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().put(format!("{base}/_matrix/app/v1/transactions/{txn}")).json(&txn_body());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("answer").status().as_u16()
}

#[tokio::test]
async fn the_hs_token_is_required_on_every_endpoint() {
    let rec = Arc::new(Recorder::default());
    let base = serve(rec.clone()).await;
    assert_eq!(put_txn(&base, "1", None).await, 401);
    assert_eq!(put_txn(&base, "1", Some("hs-secreT")).await, 403);
    assert_eq!(put_txn(&base, "1", Some("hs-secret-longer")).await, 403);
    let c = reqwest::Client::new();
    for path in ["/_matrix/app/v1/users/@mimi_x:hs", "/_matrix/app/v1/rooms/%23a:hs", "/_matrix/app/v1/other"] {
        let s = c.get(format!("{base}{path}")).send().await.expect("answer").status();
        assert_eq!(s, 401, "{path}");
    }
    assert!(rec.batches.lock().expect("lock").is_empty());
    let legacy = c
        .put(format!("{base}/_matrix/app/v1/transactions/2?access_token=hs%2Dsecret"))
        .json(&txn_body())
        .send()
        .await
        .expect("answer");
    assert_eq!(legacy.status(), 200);
}

#[tokio::test]
async fn a_transaction_seen_before_is_answered_without_processing() {
    let rec = Arc::new(Recorder::default());
    let base = serve(rec.clone()).await;
    assert_eq!(put_txn(&base, "t1", Some("hs-secret")).await, 200);
    assert_eq!(put_txn(&base, "t1", Some("hs-secret")).await, 200);
    assert_eq!(*rec.batches.lock().expect("lock"), [1]);
    assert_eq!(put_txn(&base, "t2", Some("hs-secret")).await, 200);
    assert_eq!(*rec.batches.lock().expect("lock"), [1, 1]);
}

#[tokio::test]
async fn a_transaction_id_used_again_for_other_events_is_processed() {
    // Synapse (on SQLite) numbers transactions afresh after a restart.
    let rec = Arc::new(Recorder::default());
    let base = serve(rec.clone()).await;
    assert_eq!(put_txn(&base, "1", Some("hs-secret")).await, 200);
    let mut other = txn_body();
    other["events"][0]["event_id"] = json!("$f");
    let put = reqwest::Client::new()
        .put(format!("{base}/_matrix/app/v1/transactions/1"))
        .json(&other)
        .bearer_auth("hs-secret")
        .send()
        .await
        .expect("answer");
    assert_eq!(put.status(), 200);
    assert_eq!(*rec.batches.lock().expect("lock"), [1, 1], "both processed");
}

#[tokio::test]
async fn a_transaction_not_accepted_is_answered_500_and_processed_on_retry() {
    let rec = Arc::new(Recorder::default());
    let base = serve(rec.clone()).await;
    rec.fail.store(true, Ordering::SeqCst);
    assert_eq!(put_txn(&base, "t1", Some("hs-secret")).await, 500);
    rec.fail.store(false, Ordering::SeqCst);
    assert_eq!(put_txn(&base, "t1", Some("hs-secret")).await, 200);
    assert_eq!(*rec.batches.lock().expect("lock"), [1]);
}

#[tokio::test]
async fn users_aliases_ping_and_garbage() {
    let rec = Arc::new(Recorder::default());
    let base = serve(rec).await;
    let c = reqwest::Client::new();
    let get = |path: &str| c.get(format!("{base}{path}")).bearer_auth("hs-secret").send();
    assert_eq!(get("/_matrix/app/v1/users/@mimi_x:hs").await.expect("answer").status(), 200);
    assert_eq!(get("/_matrix/app/v1/users/@alice:hs").await.expect("answer").status(), 404);
    let alias = get("/_matrix/app/v1/rooms/%23a:hs").await.expect("answer");
    assert_eq!(alias.status(), 404);
    assert_eq!(alias.json::<serde_json::Value>().await.expect("json")["errcode"], "M_NOT_FOUND");
    let ping = c.post(format!("{base}/_matrix/app/v1/ping")).bearer_auth("hs-secret").json(&json!({})).send().await;
    assert_eq!(ping.expect("answer").status(), 200);
    let bad = c
        .put(format!("{base}/_matrix/app/v1/transactions/x"))
        .bearer_auth("hs-secret")
        .body("{not json")
        .send()
        .await
        .expect("answer");
    assert_eq!(bad.status(), 400);
}
