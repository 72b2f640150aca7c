//! Calls to the homeserver's client-server API, as the appservice (`as_token`) on behalf of a user (`?user_id=`).
//!
//! A 429 is waited out (its `retry_after_ms`, or `Retry-After`) and the same call made again, so calls stay in
//! order; an unreachable homeserver or a 5xx is [`HsError::Unavailable`] (the caller retries later), anything else
//! the homeserver refuses is [`HsError::Refused`].

use reqwest::{Method, StatusCode, Url};
use ruma::api::auth_scheme::SendAccessToken;
use ruma::events::AnyTimelineEvent;
use ruma::serde::Raw;
use serde_json::{Value, json};
use std::time::Duration;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest 429 wait honoured inside one call; a longer one makes the call [`HsError::Unavailable`].
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The largest JSON answer read.
const MAX_JSON_BYTES: u64 = 16 << 20;

/// What a request carries.
enum Body {
    Empty,
    Json(Value),
    /// A file, with its media type.
    File {
        bytes: Vec<u8>,
        media_type: String,
    },
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsError {
    /// Not now: unreachable, 5xx, or rate-limited for longer than we wait.
    #[error("homeserver unavailable: {0}")]
    Unavailable(String),
    /// The homeserver refused the call.
    #[error("homeserver refused ({status} {errcode}): {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Matrix error code (`M_FORBIDDEN`…).
        errcode: String,
        /// The homeserver's message.
        error: String,
    },
}

impl HsError {
    /// The Matrix error code, if the homeserver refused.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            HsError::Refused { errcode, .. } => Some(errcode),
            HsError::Unavailable(_) => None,
        }
    }
}

/// A client of one homeserver, as one appservice.
#[derive(Clone)]
pub struct Homeserver {
    http: reqwest::Client,
    base: Url,
    as_token: String,
}

impl std::fmt::Debug for Homeserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Homeserver").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl Homeserver {
    /// A client of the homeserver at `base_url`, authenticating with `as_token`.
    pub fn new(base_url: &str, as_token: &str) -> Result<Self, String> {
        let base = Url::parse(base_url).map_err(|e| format!("homeserver_url {base_url:?}: {e}"))?;
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http, base, as_token: as_token.to_owned() })
    }

    /// One call: `method` on the path made of `segments` (each percent-encoded), as `user_id` if given.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        user_id: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, HsError> {
        let query: Vec<(&str, &str)> = user_id.map(|u| ("user_id", u)).into_iter().collect();
        self.call_with_query(method, segments, &query, body).await
    }

    /// [`Homeserver::call`] with query parameters of its own (`user_id` among them to act as a user).
    pub async fn call_with_query(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, HsError> {
        let body = body.map(|b| Body::Json(b.clone())).unwrap_or(Body::Empty);
        let (_, bytes) = self.exchange(method, segments, query, body, MAX_JSON_BYTES).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// One request; the answer's media type and body (at most `limit` bytes) if it succeeded. 429s are waited out.
    async fn exchange(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Body,
        limit: u64,
    ) -> Result<(String, Vec<u8>), HsError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| HsError::Unavailable("homeserver_url cannot be a base".into()))?
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.exchange_at(method, url, body, limit).await
    }

    /// [`Homeserver::exchange`] at a whole URL.
    async fn exchange_at(
        &self,
        method: Method,
        url: Url,
        body: Body,
        limit: u64,
    ) -> Result<(String, Vec<u8>), HsError> {
        let mut waited = Duration::ZERO;
        loop {
            let mut req = self.http.request(method.clone(), url.clone()).bearer_auth(&self.as_token);
            req = match &body {
                Body::Empty => req,
                Body::Json(b) => req.json(b),
                Body::File { bytes, media_type } => {
                    req.header(reqwest::header::CONTENT_TYPE, media_type.as_str()).body(bytes.clone())
                }
            };
            let mut resp = req.send().await.map_err(|e| HsError::Unavailable(without_url(&e)))?;
            let status = resp.status();
            let header = |name| resp.headers().get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
            let retry_after =
                header(reqwest::header::RETRY_AFTER).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
            let media_type = header(reqwest::header::CONTENT_TYPE).unwrap_or("application/octet-stream").to_owned();
            let limit = if status.is_success() { limit } else { MAX_JSON_BYTES };
            let mut bytes = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| HsError::Unavailable(without_url(&e)))? {
                if (bytes.len() + chunk.len()) as u64 > limit {
                    return Err(HsError::Refused {
                        status: 413,
                        errcode: "M_TOO_LARGE".into(),
                        error: format!("the answer is larger than {limit} bytes"),
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            if status.is_success() {
                return Ok((media_type, bytes));
            }
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = json["retry_after_ms"]
                    .as_u64()
                    .map(Duration::from_millis)
                    .or(retry_after)
                    .unwrap_or(Duration::from_secs(1));
                if waited + wait > MAX_RATE_LIMIT_WAIT {
                    return Err(HsError::Unavailable(format!("rate-limited for {wait:?}")));
                }
                tracing::debug!(?wait, "homeserver rate limit; waiting");
                tokio::time::sleep(wait).await;
                waited += wait;
                continue;
            }
            let errcode = json["errcode"].as_str().unwrap_or("").to_owned();
            let error = json["error"].as_str().unwrap_or("").chars().take(300).collect();
            if status.is_server_error() {
                return Err(HsError::Unavailable(format!("{status} {errcode}: {error}")));
            }
            return Err(HsError::Refused { status: status.as_u16(), errcode, error });
        }
    }

    /// Downloads the file of an `mxc://` URI through authenticated media
    /// (`GET /_matrix/client/v1/media/download/{server}/{id}`) as `user_id`: its media type and bytes, at most
    /// `limit` of them.
    pub async fn download(&self, mxc: &str, user_id: &str, limit: u64) -> Result<(String, Vec<u8>), HsError> {
        let Some((server, id)) = crate::media::mxc_parts(mxc) else {
            return Err(HsError::Refused { status: 400, errcode: "M_INVALID_PARAM".into(), error: format!("{mxc:?}") });
        };
        let path = ["_matrix", "client", "v1", "media", "download", server, id];
        self.exchange(Method::GET, &path, &[("user_id", user_id)], Body::Empty, limit).await
    }

    /// Uploads a file as `user_id` (`POST /_matrix/media/v3/upload`); returns its `mxc://` URI.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        media_type: &str,
        filename: Option<&str>,
        user_id: &str,
    ) -> Result<String, HsError> {
        let mut query = vec![("user_id", user_id)];
        if let Some(f) = filename {
            query.push(("filename", f));
        }
        let body = Body::File { bytes, media_type: media_type.to_owned() };
        let (_, answer) =
            self.exchange(Method::POST, &["_matrix", "media", "v3", "upload"], &query, body, MAX_JSON_BYTES).await?;
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        v["content_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| HsError::Unavailable("upload answer without content_uri".into()))
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping`: the homeserver calls our ping endpoint and reports whether
    /// it could.
    pub async fn ping(&self, registration_id: &str) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v1", "appservice", registration_id, "ping"];
        self.call(Method::POST, &path, None, Some(&json!({"transaction_id": "mimi-bridge-ping"}))).await.map(drop)
    }

    /// The appservice's own user (the registration's `sender_localpart`): who the `as_token` is without `user_id`.
    pub async fn sender(&self) -> Result<String, HsError> {
        let v = self.call(Method::GET, &["_matrix", "client", "v3", "account", "whoami"], None, None).await?;
        Ok(v["user_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Registers a user of the appservice's namespace; one that exists already is fine.
    pub async fn register(&self, localpart: &str) -> Result<(), HsError> {
        let body = json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true});
        match self.call(Method::POST, &["_matrix", "client", "v3", "register"], None, Some(&body)).await {
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Sets `user_id`'s global display name.
    pub async fn set_display_name(&self, user_id: &str, name: &str) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "profile", user_id, "displayname"];
        self.call(Method::PUT, &path, Some(user_id), Some(&json!({"displayname": name}))).await.map(drop)
    }

    /// `user_id` joins `room` (an id or alias); returns the room id.
    pub async fn join(&self, room: &str, user_id: &str) -> Result<String, HsError> {
        let v = self
            .call(Method::POST, &["_matrix", "client", "v3", "join", room], Some(user_id), Some(&json!({})))
            .await?;
        Ok(v["room_id"].as_str().unwrap_or(room).to_owned())
    }

    /// The room id an alias (`#room:server`) names, from the room directory, asked as `user_id`.
    pub async fn resolve_alias(&self, alias: &str, user_id: &str) -> Result<String, HsError> {
        let v = self
            .call(Method::GET, &["_matrix", "client", "v3", "directory", "room", alias], Some(user_id), None)
            .await?;
        v["room_id"].as_str().map(str::to_owned).ok_or_else(|| HsError::Unavailable(format!("no room id for {alias}")))
    }

    /// `inviter` invites `user_id` to `room`.
    pub async fn invite(&self, room: &str, inviter: &str, user_id: &str) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "invite"];
        self.call(Method::POST, &path, Some(inviter), Some(&json!({"user_id": user_id}))).await.map(drop)
    }

    /// `user_id` leaves `room`.
    pub async fn leave(&self, room: &str, user_id: &str) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "leave"];
        self.call(Method::POST, &path, Some(user_id), Some(&json!({}))).await.map(drop)
    }

    /// Sends an event as `user_id` (on `device_id`, if given) with transaction id `txn_id`; returns its event id.
    /// Synapse remembers the transaction ids of a device for a day, in its database; without a device only in memory.
    pub async fn send(
        &self,
        room: &str,
        event_type: &str,
        txn_id: &str,
        content: &Value,
        (user_id, device_id): (&str, Option<&str>),
    ) -> Result<String, HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "send", event_type, txn_id];
        let v = self.call_with_query(Method::PUT, &path, &as_device(user_id, device_id), Some(content)).await?;
        event_id(&v)
    }

    /// Redacts `event_id` as `user_id` (on `device_id`, if given); returns the redaction's event id.
    pub async fn redact(
        &self,
        room: &str,
        event_id_: &str,
        txn_id: &str,
        (user_id, device_id): (&str, Option<&str>),
    ) -> Result<String, HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "redact", event_id_, txn_id];
        let v = self.call_with_query(Method::PUT, &path, &as_device(user_id, device_id), Some(&json!({}))).await?;
        event_id(&v)
    }

    /// Deletes the device `device_id` of `user_id` with its keys and inbox (MSC4190: no interactive auth); one that
    /// does not exist is fine.
    pub async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "devices", device_id];
        match self.call(Method::DELETE, &path, Some(user_id), Some(&json!({}))).await {
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Creates (or keeps) the device `device_id` of `user_id`, a user of the appservice's namespace (MSC4190:
    /// `PUT /devices/{id}?user_id=`, no login needed).
    pub async fn create_device(&self, user_id: &str, device_id: &str) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "devices", device_id];
        self.call(Method::PUT, &path, Some(user_id), Some(&json!({"display_name": "mimi-bridge"}))).await.map(drop)
    }

    /// The devices of `user_id` that have uploaded keys (`POST /keys/query`, as that user).
    pub async fn keyed_devices(&self, user_id: &str) -> Result<Vec<String>, HsError> {
        let path = ["_matrix", "client", "v3", "keys", "query"];
        let body = json!({"device_keys": {user_id: []}});
        let v = self.call(Method::POST, &path, Some(user_id), Some(&body)).await?;
        Ok(v["device_keys"][user_id].as_object().map(|d| d.keys().cloned().collect()).unwrap_or_default())
    }

    /// Sets `user_id`'s typing state in `room`.
    pub async fn typing(&self, room: &str, user_id: &str, active: bool) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "typing", user_id];
        let body = if active { json!({"typing": true, "timeout": 30000}) } else { json!({"typing": false}) };
        self.call(Method::PUT, &path, Some(user_id), Some(&body)).await.map(drop)
    }

    /// `user_id`'s display name in `room`, read as `reader`.
    pub async fn member_name(&self, room: &str, reader: &str, user_id: &str) -> Result<Option<String>, HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "state", "m.room.member", user_id];
        let v = self.call(Method::GET, &path, Some(reader), None).await?;
        Ok(v["displayname"].as_str().map(str::to_owned))
    }
}

impl Homeserver {
    /// Sends a client-server API request of ruma's as `user_id` on `device_id` (the calls of the end-to-end
    /// encryption machinery: key uploads, queries and claims, to-device messages); returns ruma's answer.
    pub async fn send_ruma<R>(
        &self,
        request: R,
        (user_id, device_id): (&str, Option<&str>),
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: ruma::api::OutgoingRequest<
                PathBuilder = ruma::api::path_builder::VersionHistory,
                Authentication = ruma::api::auth_scheme::AccessToken,
            >,
    {
        use ruma::api::IncomingResponse;
        let versions = ruma::api::SupportedVersions::from_parts(&["v1.11".to_owned()], &Default::default());
        let http: axum::http::Request<Vec<u8>> = request
            .try_into_http_request(
                self.base.as_str().trim_end_matches('/'),
                SendAccessToken::Always(&self.as_token),
                std::borrow::Cow::Owned(versions),
            )
            .map_err(|e| HsError::Refused { status: 0, errcode: "M_BAD_JSON".into(), error: e.to_string() })?;
        let mut url = Url::parse(&http.uri().to_string()).map_err(|e| HsError::Unavailable(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(as_device(user_id, device_id));
        let method = http.method().clone();
        let body = http.into_body();
        let body = if body.is_empty() {
            Body::Empty
        } else {
            Body::File { bytes: body, media_type: "application/json".into() }
        };
        let (_, bytes) = self.exchange_at(method, url, body, MAX_JSON_BYTES).await?;
        let answer = axum::http::Response::builder()
            .status(200)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .map_err(|e| HsError::Unavailable(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(answer)
            .map_err(|e| HsError::Unavailable(format!("an answer ruma cannot read: {e}")))
    }

    /// The users joined to `room`, read as `reader`.
    pub async fn joined_members(&self, room: &str, reader: &str) -> Result<Vec<String>, HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "joined_members"];
        let v = self.call(Method::GET, &path, Some(reader), None).await?;
        Ok(v["joined"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default())
    }

    /// Sends a to-device message of `event_type` as `user_id` on `device_id` to `to_user`'s `to_device`.
    pub async fn send_to_device(
        &self,
        (user_id, device_id): (&str, &str),
        event_type: &str,
        txn_id: &str,
        (to_user, to_device): (&str, &str),
        content: &Value,
    ) -> Result<(), HsError> {
        let path = ["_matrix", "client", "v3", "sendToDevice", event_type, txn_id];
        let body = json!({"messages": {to_user: {to_device: content}}});
        self.call_with_query(Method::PUT, &path, &as_device(user_id, Some(device_id)), Some(&body)).await.map(drop)
    }
}

/// One page of a room's timeline read backwards (`/messages?dir=b`).
#[derive(Debug)]
pub struct TimelinePage {
    /// The events, newest first.
    pub chunk: Vec<Raw<AnyTimelineEvent>>,
    /// The token of the page before this one; `None` at the timeline's start.
    pub end: Option<String>,
}

impl Homeserver {
    /// `GET /rooms/{room}/messages?dir=b`: the `limit` events of `room` before `from` (the newest ones if `None`),
    /// read as `user_id` (on `device_id`, if given: the homeserver shows that device the transaction ids of its own
    /// events), newest first.
    pub async fn messages(
        &self,
        room: &str,
        (user_id, device_id): (&str, Option<&str>),
        from: Option<&str>,
        limit: usize,
    ) -> Result<TimelinePage, HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "messages"];
        let limit = limit.to_string();
        let mut query = as_device(user_id, device_id);
        query.extend([("dir", "b"), ("limit", limit.as_str())]);
        if let Some(token) = from {
            query.push(("from", token));
        }
        let mut v = self.call_with_query(Method::GET, &path, &query, None).await?;
        timeline_page(&mut v)
    }
}

/// The page of a `/messages` answer (events that are not JSON objects are left out).
fn timeline_page(v: &mut Value) -> Result<TimelinePage, HsError> {
    let Some(chunk) = v.get_mut("chunk").and_then(Value::as_array_mut).map(std::mem::take) else {
        return Err(HsError::Unavailable("a /messages answer without chunk".into()));
    };
    let chunk = chunk
        .into_iter()
        .filter(Value::is_object)
        .filter_map(|e| serde_json::value::to_raw_value(&e).ok().map(Raw::from_json))
        .collect();
    let end = v["end"].as_str().map(str::to_owned);
    Ok(TimelinePage { chunk, end })
}

impl Homeserver {
    /// Who last changed `user_id`'s membership of `room` and to what (`join`, `leave`, `ban`…), read as `reader`;
    /// `None` if the user was never in the room.
    pub async fn membership(
        &self,
        room: &str,
        reader: &str,
        user_id: &str,
    ) -> Result<Option<(String, String)>, HsError> {
        Ok(self.state_event(room, reader, "m.room.member", user_id).await?.map(|v| {
            let membership = v["content"]["membership"].as_str().unwrap_or_default().to_owned();
            (membership, v["sender"].as_str().unwrap_or_default().to_owned())
        }))
    }

    /// The current state event of `event_type` and `state_key` in `room` (the whole event), read as `reader`;
    /// `None` if there is none.
    pub async fn state_event(
        &self,
        room: &str,
        reader: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<Value>, HsError> {
        let path = ["_matrix", "client", "v3", "rooms", room, "state", event_type, state_key];
        let query = [("user_id", reader), ("format", "event")];
        match self.call_with_query(Method::GET, &path, &query, None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The query acting as `user_id`, on `device_id` if given.
fn as_device<'a>(user_id: &'a str, device_id: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut query = vec![("user_id", user_id)];
    if let Some(d) = device_id {
        query.push(("device_id", d));
    }
    query
}

/// The `event_id` of a send's answer.
fn event_id(v: &Value) -> Result<String, HsError> {
    v["event_id"].as_str().map(str::to_owned).ok_or_else(|| HsError::Unavailable("answer without event_id".into()))
}

/// A reqwest error without its URL (which carries `user_id` but never tokens; kept short for logs).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_owned() } else { format!("{kind}: {detail}") }
}

#[cfg(test)]
#[path = "homeserver_tests.rs"]
mod tests;
