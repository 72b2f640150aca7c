//! The homeserver client against a scripted HTTP server on a real socket: what it sends, and how it takes 429s,
//! 5xx, refusals and an absent server.

use super::*;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode as Status};
use axum::routing::put;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the scripted server saw: (path segments after /send/, query, authorization).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A server whose send endpoint answers 429 (retry after 300 ms) to the first call and 200 afterwards, except for
/// transaction ids `fail500` and `forbidden`.
async fn scripted() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/_matrix/client/v3/rooms/{room}/send/{ty}/{txn}",
            put(
                |State(seen): State<Seen>,
                 Path((room, ty, txn)): Path<(String, String, String)>,
                 RawQuery(q): RawQuery,
                 h: HeaderMap| async move {
                    let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let first = {
                        let mut s = seen.lock().expect("lock");
                        s.push((format!("{room}/{ty}/{txn}"), q.unwrap_or_default(), auth));
                        s.len() == 1
                    };
                    match txn.as_str() {
                        "fail500" => {
                            (Status::BAD_GATEWAY, axum::Json(json!({"errcode": "M_UNKNOWN", "error": "down"})))
                        }
                        "forbidden" => {
                            (Status::FORBIDDEN, axum::Json(json!({"errcode": "M_FORBIDDEN", "error": "no"})))
                        }
                        _ if first => (
                            Status::TOO_MANY_REQUESTS,
                            axum::Json(json!({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 300})),
                        ),
                        _ => (Status::OK, axum::Json(json!({"event_id": format!("$ev-{txn}")}))),
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", tcp.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(tcp, app).await });
    (url, seen)
}

#[tokio::test]
async fn a_429_is_waited_out_and_the_same_call_made_again_in_order() {
    let (url, seen) = scripted().await;
    let hs = Homeserver::new(&url, "as-token").expect("client");
    let started = Instant::now();
    let a = hs.send("!r:hs", "m.room.message", "t1", &json!({"body": "a"}), ("@mimi_x:hs", None)).await;
    assert_eq!(a.as_deref(), Ok("$ev-t1"));
    assert!(started.elapsed() >= Duration::from_millis(300), "waited {:?}", started.elapsed());
    let b = hs.send("!r:hs", "m.room.message", "t2", &json!({"body": "b"}), ("@mimi_x:hs", None)).await;
    assert_eq!(b.as_deref(), Ok("$ev-t2"));
    let seen = seen.lock().expect("lock").clone();
    let order: Vec<&str> = seen.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(order, ["!r:hs/m.room.message/t1", "!r:hs/m.room.message/t1", "!r:hs/m.room.message/t2"]);
    assert_eq!(seen[0].1, "user_id=%40mimi_x%3Ahs", "the call is made as the ghost");
    assert_eq!(seen[0].2, "Bearer as-token");
}

#[tokio::test]
async fn server_errors_are_temporary_refusals_are_not() {
    let (url, _) = scripted().await;
    let hs = Homeserver::new(&url, "t").expect("client");
    // The first call takes the 429.
    let _ = hs.send("!r:hs", "m.room.message", "warmup", &json!({}), ("@u:hs", None)).await;
    let e = hs.send("!r:hs", "m.room.message", "fail500", &json!({}), ("@u:hs", None)).await;
    assert!(matches!(e, Err(HsError::Unavailable(_))), "{e:?}");
    let e = hs.send("!r:hs", "m.room.message", "forbidden", &json!({}), ("@u:hs", None)).await;
    assert!(matches!(&e, Err(HsError::Refused { status: 403, errcode, .. }) if errcode == "M_FORBIDDEN"), "{e:?}");
}

#[tokio::test]
async fn an_absent_homeserver_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let hs = Homeserver::new(&format!("http://127.0.0.1:{port}"), "t").expect("client");
    let e = hs.ping("id").await;
    assert!(matches!(&e, Err(HsError::Unavailable(m)) if m.contains("cannot connect")), "{e:?}");
}
