//! The client API's policy for native MLS clients (the daemon's `/client/v1/...`), whatever carries it: who may
//! register ([`Registration`]), who a request is from ([`NativeClients::authenticate`]: user URI and bearer
//! token against the stored SHA-256), which names are valid, that only participants invite or publish a room's
//! GroupInfo, and where a request about a room goes — our hub, or, through [`Federation`], the hub of a room
//! hosted elsewhere.
//!
//! The provider never sees a client's private keys or plaintext: clients send MLS messages they made themselves.

use crate::failure::{Failure, Status};
use crate::federation::{Federation, Verdict};
use crate::pages::page_after;
use crate::quota::{QuotaConfig, Quotas};
use crate::service::{Provider, RoomRoute, uri_domain};
use mimi_protocol::hub::{JoinPolicy, Origin};
use mimi_protocol::wire::{GroupInfoRequest, GroupInfoResponse, LogPage, MlsMessageBytes, UpdateRequest, WireMessage};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest long-poll wait of [`NativeClients::messages`].
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Who may register native users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Anyone (development mode on loopback).
    Open,
    /// Whoever presents this token (compared in constant time).
    Token(String),
    /// Nobody.
    Closed,
}

/// A native user whose request carried valid credentials (only [`NativeClients::authenticate`] makes one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    uri: String,
}

impl Client {
    /// The user's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

/// A newly registered user: its URI and its API token (only its SHA-256 is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The user's URI.
    pub uri: String,
    /// The bearer token for its requests.
    pub token: String,
}

/// The native clients of a provider.
#[derive(Debug, Clone)]
pub struct NativeClients {
    federation: Federation,
    registration: Registration,
    quotas: Arc<Quotas>,
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    to_hex(&Sha256::digest(s.as_bytes()))
}

fn same_secret(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

/// Longest user or room name (the last segment of its URI).
pub const MAX_NAME: usize = 64;

/// User names the bridge keeps for itself: its own MLS identity (`mimi://DOMAIN/u/bridge`). Legacy users'
/// identities (`NETWORK.ACCOUNT~ESCAPED`) cannot be registered either: `~` is not a name character.
pub const RESERVED_USERS: &[&str] = &["bridge"];

/// True if `name` is 1 to [`MAX_NAME`] of `A-Z a-z 0-9 . _ -`, not starting with a dot.
fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The URI a registration for `user` (a name, or a URI of `domain`) asks for: 400 unless the name is valid, 403 if
/// it is reserved.
fn user_uri(user: &str, domain: &str) -> Result<String, Failure> {
    let name = match user.strip_prefix("mimi://") {
        None => user,
        Some(rest) => rest
            .strip_prefix(domain)
            .and_then(|r| r.strip_prefix("/u/"))
            .ok_or_else(|| Failure::bad_request(format!("{user} is not a user URI of {domain}")))?,
    };
    if !is_name(name) {
        return Err(Failure::bad_request(format!(
            "bad user name {name:?}: 1 to {MAX_NAME} of A-Z a-z 0-9 . _ - (legacy users' names with ~ are the bridge's)"
        )));
    }
    if RESERVED_USERS.contains(&name) {
        return Err(Failure::forbidden(format!("the user name {name:?} is reserved for the bridge")));
    }
    Ok(format!("mimi://{domain}/u/{name}"))
}

/// 400 unless `name` is a valid room name (the last segment of the room's URI).
fn check_room_name(name: &str) -> Result<(), Failure> {
    if !is_name(name) {
        return Err(Failure::bad_request(format!("bad room name {name:?}: 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -")));
    }
    Ok(())
}

/// A `GroupInfoRequest` whose signature verifies (400 otherwise).
pub(crate) fn verified(request: &GroupInfoRequest) -> Result<(), Failure> {
    request.verify().map_err(|e| Failure::bad_request(format!("GroupInfoRequest: {e}")))
}

impl NativeClients {
    /// The native clients of `federation`'s provider, registered under `registration`.
    pub fn new(federation: Federation, registration: Registration) -> Self {
        Self { federation, registration, quotas: Arc::new(Quotas::new(QuotaConfig::default())) }
    }

    /// The same, with these per-user quotas instead of the defaults.
    pub fn with_quotas(mut self, quotas: QuotaConfig) -> Self {
        self.quotas = Arc::new(Quotas::new(quotas));
        self
    }

    /// 429 unless `client` may put one more message of `bytes` into a log now ([`Quotas::take`]).
    fn take_quota(&self, client: &Client, bytes: usize) -> Result<(), Failure> {
        self.quotas
            .take(&client.uri, bytes, Instant::now())
            .map_err(|why| Failure::over_quota(format!("{}: {why}", client.uri), why.retry_after))
    }

    /// The provider and its peers.
    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    fn provider(&self) -> &Provider {
        self.federation.provider()
    }

    /// Registers `user` (a name, or a URI of our domain), if the registration policy lets the holder of `token`
    /// in; a fresh API token for it. Registering again needs the same token (409 otherwise).
    pub async fn register(&self, user: &str, token: Option<&str>) -> Result<Registered, Failure> {
        match &self.registration {
            Registration::Open => {}
            Registration::Token(t) if token.is_some_and(|given| same_secret(given, t)) => {}
            Registration::Token(_) => return Err(Failure::forbidden("registration needs a valid token")),
            Registration::Closed => return Err(Failure::forbidden("registration is closed")),
        }
        let uri = user_uri(user, self.provider().domain())?;
        let token = to_hex(&rand::random::<[u8; 32]>());
        self.provider().register_user(&uri, &sha256_hex(&token)).await?;
        Ok(Registered { uri, token })
    }

    /// The user of a request that names `user` and presents the bearer `token` (401 unless both are there and the
    /// token's SHA-256 is the one stored for the user; compared in constant time).
    pub fn authenticate(&self, user: Option<&str>, token: Option<&str>) -> Result<Client, Failure> {
        let unauthorized = || Failure::new(Status::Unauthorized, "missing or bad credentials");
        let (uri, token) = user.zip(token).ok_or_else(unauthorized)?;
        let rec = self.provider().user(uri)?.ok_or_else(unauthorized)?;
        if same_secret(&sha256_hex(token), &rec.token_sha256) {
            Ok(Client { uri: uri.to_owned() })
        } else {
            Err(unauthorized())
        }
    }

    /// Stores KeyPackages (MLSMessages) the client made.
    pub async fn upload_key_packages(&self, client: &Client, key_packages: &[MlsMessageBytes]) -> Result<(), Failure> {
        Ok(self.provider().upload_key_packages(&client.uri, key_packages).await?)
    }

    /// Creates room `name` of our domain for the MLS group that `group_info` (MLSMessage) and `ratchet_tree`
    /// (TLS encoding; else the GroupInfo's `ratchet_tree` extension) describe — its group id must be the room's
    /// URI, and the client one of its members — with the client as first participant; the room's URI.
    pub async fn create_room(
        &self,
        client: &Client,
        name: &str,
        group_info: &MlsMessageBytes,
        ratchet_tree: Option<&[u8]>,
        invite_only: bool,
    ) -> Result<String, Failure> {
        check_room_name(name)?;
        let room = format!("mimi://{}/r/{name}", self.provider().domain());
        match mimi_protocol::inspect::inspect(group_info) {
            Ok(mimi_protocol::inspect::Inspected::GroupInfo { group_id, .. }) if group_id == room.as_bytes() => {}
            _ => return Err(Failure::bad_request(format!("not a GroupInfo of group {room:?}"))),
        }
        let policy = if invite_only { JoinPolicy::Invite } else { JoinPolicy::Open };
        let quota = self.quotas.config().rooms;
        self.provider().create_user_room(&room, group_info, ratchet_tree, &client.uri, policy, quota).await?;
        Ok(room)
    }

    /// The GroupInfo MLSMessage of `room` as its hub keeps it (usually without the ratchet tree: commits carry none;
    /// the signed request brings it): ours, or for a room hosted elsewhere the hub's,
    /// asked for with a request signed by our own hub key (so only open rooms answer).
    pub async fn group_info(&self, client: &Client, room: &str) -> Result<Vec<u8>, Failure> {
        match self.federation.remote_hub(room)? {
            None => {
                self.require_reader(client, room)?;
                self.provider().group_info(room)?.ok_or_else(|| Failure::not_found("no GroupInfo for this room yet"))
            }
            Some(hub) => self.federation.fetch_group_info(room, &hub).await,
        }
    }

    /// The hub's answer to the client's own signed `GroupInfoRequest` (400 if its signature does not verify):
    /// ours (`noSuchRoom` for a room unknown here), or the remote hub's, unchanged.
    pub async fn request_group_info(
        &self,
        client: &Client,
        room: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, Failure> {
        verified(request)?;
        // The request's credential is the one the join will use: it must be the authenticated user's.
        if request.tbs.requesting_credential.basic_identity().as_deref() != Some(client.uri.as_bytes()) {
            return Err(Failure::forbidden(format!("the GroupInfoRequest's credential is not {}'s", client.uri)));
        }
        match self.federation.remote_hub(room) {
            Ok(None) => Ok(self.provider().answer_group_info(room, request).await?),
            Err(f) if f.status == Status::NotFound => Ok(self.provider().answer_group_info(room, request).await?),
            Ok(Some(hub)) => self.federation.relay_group_info_request(room, &hub, request).await,
            Err(f) => Err(f),
        }
    }

    /// 403 unless the client may read `room` ([`Provider::may_read`]: an invite-only room only its participants).
    pub fn require_reader(&self, client: &Client, room: &str) -> Result<(), Failure> {
        if self.provider().may_read(room, &client.uri)? {
            Ok(())
        } else {
            Err(Failure::forbidden(format!("{room} is invite-only and {} is not a participant", client.uri)))
        }
    }

    /// 403 unless the client is a participant of `room` (hosted here): only members invite or publish GroupInfo.
    pub fn require_participant(&self, client: &Client, room: &str) -> Result<(), Failure> {
        if self.provider().is_participant(room, &client.uri)? {
            Ok(())
        } else {
            Err(Failure::forbidden(format!("{} is not a participant of {room}", client.uri)))
        }
    }

    /// A participant hands in the GroupInfo MLSMessage of the current epoch of `room` (hosted here).
    pub async fn put_group_info(&self, client: &Client, room: &str, group_info: Vec<u8>) -> Result<(), Failure> {
        self.require_participant(client, room)?;
        let group_info = MlsMessageBytes::new(group_info).map_err(Failure::bad_request)?;
        Ok(self.provider().put_group_info(room, group_info).await?)
    }

    /// Claims one KeyPackage (MLSMessage) of user `target` — ours, or from its provider — to invite them to `room`
    /// (hosted here; the client must be a participant): the target goes on the room's participant list once a
    /// KeyPackage was claimed. Without a room, 400: nobody drains another user's KeyPackages.
    pub async fn claim_key_package(
        &self,
        client: &Client,
        target: &str,
        room: Option<&str>,
    ) -> Result<Vec<u8>, Failure> {
        // KeyPackages are one-time keys: they are handed out only for an invitation, by a participant of the room,
        // and each claim counts as a message against the claimer's quota (a user's own rooms are no way to drain
        // another user's KeyPackages fast; the last-resort one is never used up).
        let Some(room) = room else {
            return Err(Failure::bad_request("a KeyPackage is claimed to invite its user: name the room (?room=R)"));
        };
        self.require_participant(client, room)?;
        self.take_quota(client, 0)?;
        let domain = uri_domain(target).ok_or_else(|| Failure::bad_request(format!("bad user URI {target:?}")))?;
        let key_package = if domain != self.provider().domain() {
            self.federation.claim_remote_key_package(&client.uri, target, domain, room).await?
        } else {
            self.provider()
                .claim_key_package(target)
                .await?
                .ok_or_else(|| Failure::not_found(format!("no KeyPackage left for {target}")))?
        };
        // The invitee goes on the participant list only once there is a KeyPackage to add them with.
        self.provider().add_participant(room, target).await?;
        Ok(key_package)
    }

    /// The client's update (commit with Welcome and GroupInfo, or proposals) for `room`: sequenced by our hub, or
    /// sent to the room's hub ([`Federation::update_through_hub`]).
    pub async fn update(&self, client: &Client, room: &str, request: UpdateRequest) -> Result<Verdict, Failure> {
        self.take_quota(client, request.encode().map(|b| b.len()).map_err(Failure::bad_request)?)?;
        let user = &client.uri;
        match self.federation.remote_hub(room)? {
            None => Verdict::of_local(self.provider().update(room, request, user, Origin::Client(user.clone())).await),
            Some(hub) => self.federation.update_through_hub(room, &hub, user, request).await,
        }
    }

    /// The client's MLSMessage for `room`: sequenced by our hub, or — an application message — submitted to the
    /// hub of a room we follow.
    pub async fn submit(&self, client: &Client, room: &str, message: MlsMessageBytes) -> Result<Verdict, Failure> {
        self.take_quota(client, message.as_bytes().len())?;
        let user = &client.uri;
        match self.provider().route(room)? {
            RoomRoute::Hub => {
                Verdict::of_local(self.provider().submit(room, message, user, Origin::Client(user.clone())).await)
            }
            RoomRoute::Follower { hub } => self.federation.forward_submit(room, &hub, user, message).await,
            RoomRoute::Remote { .. } => Err(crate::ProviderError::UnknownRoom(room.to_owned()).into()),
        }
    }

    /// The entries of `room` (ours, or our copy of the hub's log) after `after`, waiting up to `wait` (at most
    /// [`MAX_WAIT`]) for one if there is none yet.
    pub async fn messages(&self, client: &Client, room: &str, after: u64, wait: Duration) -> Result<LogPage, Failure> {
        self.require_reader(client, room)?;
        let wait = wait.min(MAX_WAIT);
        if self.provider().last_seq(room)? <= after && !wait.is_zero() {
            self.provider().wait(room, after, wait).await?;
        }
        page_after(self.provider(), room, after)
    }

    /// The Welcomes waiting for the client: `(room, seq)`.
    pub fn invites(&self, client: &Client) -> Result<Vec<(String, u64)>, Failure> {
        Ok(self.provider().invites(&client.uri)?)
    }
}
