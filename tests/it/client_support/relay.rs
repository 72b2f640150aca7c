//! A transparent HTTP relay between two providers: a daemon's `[[mimi.peer]]` URL points at it, it forwards
//! every request to the real peer and its answer back (our `Mimi-Sequence` header included), remembers what
//! passed, and can hold back notifies (answering 503, as an overloaded peer would) to make the follower fall
//! behind on purpose.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request that passed the relay.
#[derive(Debug, Clone)]
pub struct Passed {
    /// Path and query.
    pub path: String,
    /// The answer's status (503 if held back, 502 if the peer was unreachable).
    pub status: u16,
    /// The answer's body.
    pub body: Vec<u8>,
}

struct Shared {
    target: String,
    hold_notifies: AtomicBool,
    passed: Mutex<Vec<Passed>>,
}

/// A running relay (it stops with the runtime it was started on).
pub struct Relay {
    /// Its base URL.
    pub url: String,
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts a relay to `target` (a base URL) on a free port.
    pub fn start(rt: &tokio::runtime::Runtime, target: &str) -> Self {
        let shared = Arc::new(Shared {
            target: target.to_owned(),
            hold_notifies: AtomicBool::new(false),
            passed: Mutex::default(),
        });
        let app = axum::Router::new().fallback(relay).with_state(shared.clone());
        let url = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            url
        });
        Self { url, shared }
    }

    /// Holds back (`true`) or lets through (`false`) every `/v1/notify`.
    pub fn hold_notifies(&self, hold: bool) {
        self.shared.hold_notifies.store(hold, Ordering::SeqCst);
    }

    /// The requests that passed so far whose path starts with `prefix`, in order.
    pub fn passed(&self, prefix: &str) -> Vec<Passed> {
        let passed = self.shared.passed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        passed.iter().filter(|p| p.path.starts_with(prefix)).cloned().collect()
    }
}

async fn relay(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str()).to_owned();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let from = header("from");
    let from = from.strip_prefix("mimi@").unwrap_or("");
    let (sequence, user) = (header("mimi-sequence"), header("mimi-user"));
    let mut pass: Vec<(&str, &str)> = Vec::new();
    if !sequence.is_empty() {
        pass.push(("mimi-sequence", &sequence));
    }
    if !user.is_empty() {
        pass.push(("mimi-user", &user));
    }
    let (status, answer_seq, answer) = if path.starts_with("/v1/notify/") && s.hold_notifies.load(Ordering::SeqCst) {
        (503, None, b"held back by the test relay".to_vec())
    } else {
        let url = format!("{}{path}", s.target);
        match mimi_bridge::mimi_http::http::request(method.as_str(), &url, from, &pass, body.to_vec()).await {
            Ok(a) => (a.status, a.sequence, a.body),
            Err(e) => (502, None, e.into_bytes()),
        }
    };
    s.passed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Passed {
        path,
        status,
        body: answer.clone(),
    });
    let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), answer).into_response();
    if let Some(seq) = answer_seq {
        r.headers_mut().insert("mimi-sequence", seq.into());
    }
    r
}
