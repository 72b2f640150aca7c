//! The protocol messages of draft-ietf-mimi-protocol-06 §5 that this provider speaks, in the TLS presentation
//! language encoding (RFC 8446 §3, with MLS's variable-length vectors `<V>`, RFC 9420 §2.1.2).
//!
//! Primitives come from `tls_codec` (the crate OpenMLS uses); MLS objects embedded in the bodies (`MLSMessage`,
//! `Welcome`, `GroupInfo`) are delimited by parsing them with OpenMLS, so a body with a truncated or trailing
//! MLS object is refused as a whole.
//!
//! Implemented: `SubmitMessageRequest`/`SubmitMessageResponse` (§5.4), `FanoutMessage` (§5.5), `UpdateRequest`
//! (`HandshakeBundle`) / `UpdateRoomResponse` (§5.3), `KeyMaterialRequest`/`KeyMaterialResponse` (§5.2, in
//! [`key_material`]; requests are unsigned), `GroupInfoRequest`/`GroupInfoResponse` (§5.6, in [`group_info`]), `IdentifierUri`. Franks are never produced (the optional `Frank` is
//! always absent), `PartialGroupInfo` and `SemiPrivateMessage` are not supported.
//!
//! One extension of ours, since the draft has no way for a follower to catch up after downtime:
//! [`SequencedFanout`] (`uint64 seq; FanoutMessage fanout;`), the hub's log entry, served by the hub's log
//! endpoint and announced on `/notify` with the `Mimi-Sequence` header; the hub's answers to `/submitMessage`
//! and `/update` carry the sequence number it gave in the same header (see `src/mimi_http/`).

use openmls::prelude::MlsMessageIn;
use openmls::prelude::tls_codec::Deserialize as _;
use tls_codec::{DeserializeBytes, Serialize, VLBytes};

pub mod group_info;
pub mod key_material;
pub use group_info::{
    DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoRatchetTreeTbe, GroupInfoRequest, GroupInfoRequestSecret,
    GroupInfoRequestTbs, GroupInfoResponse, GroupInfoResponseTbs, HubSigner, PendingProposal,
};
pub use key_material::{
    ClientKeyMaterial, ClientMaterial, KeyMaterialRequest, KeyMaterialResponse, KeyMaterialUserCode,
};

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body ended early.
    #[error("truncated body")]
    Truncated,
    /// Bytes were left over after the structure.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
    /// A field has a value the draft does not allow here.
    #[error("invalid {0}")]
    Invalid(String),
    /// An embedded MLS object is malformed.
    #[error("malformed MLS object: {0}")]
    Mls(String),
    /// Encoding failed (a field is too long for its length prefix).
    #[error("encoding failed: {0}")]
    Encode(String),
}

fn invalid(what: impl Into<String>) -> WireError {
    WireError::Invalid(what.into())
}

/// A MIMI protocol message: encodes to and decodes from its TLS presentation-language bytes.
pub trait WireMessage: Sized {
    /// Appends the encoding to `out`.
    fn write(&self, out: &mut Writer) -> Result<(), WireError>;
    /// Reads one value.
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError>;

    /// The encoding.
    fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::default();
        self.write(&mut w)?;
        Ok(w.0)
    }

    /// Decodes exactly one value from `bytes` (trailing bytes are an error).
    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

/// Output buffer of the encoders.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    fn prim(&mut self, v: &impl Serialize) -> Result<(), WireError> {
        v.tls_serialize(&mut self.0).map(|_| ()).map_err(|e| WireError::Encode(format!("{e:?}")))
    }
    /// `uint8`.
    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.prim(&v)
    }
    /// `uint16`.
    pub fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.prim(&v)
    }
    /// `uint64`.
    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.prim(&v)
    }
    /// `opaque x<V>`.
    pub fn vl_bytes(&mut self, v: &[u8]) -> Result<(), WireError> {
        self.prim(&VLBytes::new(v.to_vec()))
    }
    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    /// Raw bytes (an embedded MLS object, already encoded).
    pub fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// `T items<V>`: the items' encodings behind their total length.
    pub fn vl_list<T>(
        &mut self,
        items: &[T],
        f: impl Fn(&mut Writer, &T) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let mut inner = Writer::default();
        for i in items {
            f(&mut inner, i)?;
        }
        self.vl_bytes(&inner.0)
    }
}

/// Input cursor of the decoders.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }
    fn prim<T: DeserializeBytes>(&mut self) -> Result<T, WireError> {
        let (v, rest) = T::tls_deserialize_bytes(self.0).map_err(|e| match e {
            tls_codec::Error::EndOfStream => WireError::Truncated,
            other => invalid(format!("{other:?}")),
        })?;
        self.0 = rest;
        Ok(v)
    }
    /// `uint8`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        self.prim()
    }
    /// `uint16`.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        self.prim()
    }
    /// `uint32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.prim()
    }
    /// `uint64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.prim()
    }
    /// What is left to read.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
    /// `opaque x<V>`: the variable-size length of RFC 9420 §2.1.2 (1, 2 or 4 bytes, minimal), then the bytes.
    /// Decoded by hand: `tls_codec`'s `VLBytes` asserts (panics in debug builds) on a truncated body.
    pub fn vl_bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let first = *self.0.first().ok_or(WireError::Truncated)?;
        let width = 1usize << (first >> 6);
        if width == 8 {
            return Err(invalid("vector length prefix of 8 bytes"));
        }
        let head = self.0.get(..width).ok_or(WireError::Truncated)?;
        let mut len = u64::from(first & 0x3f);
        for b in &head[1..] {
            len = (len << 8) | u64::from(*b);
        }
        let minimal = match width {
            1 => true,
            2 => len >= 64,
            _ => len >= 16384,
        };
        if !minimal {
            return Err(invalid("non-minimal vector length"));
        }
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        let body = self.0.get(width..width + len).ok_or(WireError::Truncated)?.to_vec();
        self.0 = &self.0[width + len..];
        Ok(body)
    }
    /// `T items<V>`.
    pub fn vl_list<T>(&mut self, f: impl Fn(&mut Reader<'_>) -> Result<T, WireError>) -> Result<Vec<T>, WireError> {
        let body = self.vl_bytes()?;
        let mut r = Reader::new(&body);
        let mut out = Vec::new();
        while !r.0.is_empty() {
            out.push(f(&mut r)?);
        }
        Ok(out)
    }
    /// One `MLSMessage`, delimited by parsing it.
    pub fn mls_message(&mut self) -> Result<MlsMessageBytes, WireError> {
        let mut slice = self.0;
        MlsMessageIn::tls_deserialize(&mut slice).map_err(|e| WireError::Mls(e.to_string()))?;
        let used = self.0.len() - slice.len();
        let bytes = self.0[..used].to_vec();
        self.0 = slice;
        MlsMessageBytes::new(bytes)
    }
    /// A bare MLS struct (`Welcome`, `GroupInfo`) of `wire_format`, returned as the MLSMessage wrapping it.
    pub fn mls_inner(&mut self, wire_format: u16) -> Result<MlsMessageBytes, WireError> {
        let mut framed = Vec::with_capacity(self.0.len() + 4);
        framed.extend_from_slice(&MLS10.to_be_bytes());
        framed.extend_from_slice(&wire_format.to_be_bytes());
        framed.extend_from_slice(self.0);
        let mut slice = framed.as_slice();
        MlsMessageIn::tls_deserialize(&mut slice).map_err(|e| WireError::Mls(e.to_string()))?;
        let used = framed.len() - slice.len();
        self.0 = &self.0[used - 4..];
        framed.truncate(used);
        MlsMessageBytes::new(framed)
    }
    /// Ends decoding: nothing may be left.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.0.is_empty() { Ok(()) } else { Err(WireError::Trailing(self.0.len())) }
    }
}

/// `ProtocolVersion mls10`.
const MLS10: u16 = 1;

/// MLS wire formats (RFC 9420 §6).
pub mod wire_format {
    /// `mls_public_message`.
    pub const PUBLIC: u16 = 1;
    /// `mls_private_message`.
    pub const PRIVATE: u16 = 2;
    /// `mls_welcome`.
    pub const WELCOME: u16 = 3;
    /// `mls_group_info`.
    pub const GROUP_INFO: u16 = 4;
    /// `mls_key_package`.
    pub const KEY_PACKAGE: u16 = 5;
}

/// One well-framed `MLSMessage` (RFC 9420 §6): its bytes, checked to parse, and its wire format.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MlsMessageBytes(Vec<u8>);

impl MlsMessageBytes {
    /// Checks that `bytes` is exactly one MLSMessage of protocol version mls10.
    pub fn new(bytes: Vec<u8>) -> Result<Self, WireError> {
        let mut slice = bytes.as_slice();
        MlsMessageIn::tls_deserialize(&mut slice).map_err(|e| WireError::Mls(e.to_string()))?;
        if !slice.is_empty() {
            return Err(WireError::Trailing(slice.len()));
        }
        if bytes.get(..2) != Some(&MLS10.to_be_bytes()[..]) {
            return Err(invalid("MLS protocol version"));
        }
        Ok(Self(bytes))
    }
    /// The MLSMessage bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Into the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    /// Its wire format (see [`wire_format`]).
    pub fn wire_format(&self) -> u16 {
        u16::from_be_bytes([self.0[2], self.0[3]])
    }
    /// The inner struct without the MLSMessage header (version and wire format).
    fn inner(&self) -> &[u8] {
        &self.0[4..]
    }
}

/// `Protocol` (§5): only `mls10(1)` exists.
fn read_protocol(r: &mut Reader<'_>) -> Result<(), WireError> {
    match r.u8()? {
        1 => Ok(()),
        p => Err(invalid(format!("protocol {p}"))),
    }
}

/// `struct { opaque uri<V>; } IdentifierUri;`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierUri(pub String);

impl WireMessage for IdentifierUri {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.vl_bytes(self.0.as_bytes())
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        String::from_utf8(r.vl_bytes()?).map(Self).map_err(|_| invalid("URI is not UTF-8"))
    }
}

/// `SubmitMessageRequest` (§5.4): an application message (PrivateMessage) and the sender's URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitMessageRequest {
    /// The PrivateMessage.
    pub app_message: MlsMessageBytes,
    /// The sending participant's URI.
    pub sending_uri: String,
}

impl WireMessage for SubmitMessageRequest {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u8(1)?;
        out.raw(self.app_message.as_bytes());
        IdentifierUri(self.sending_uri.clone()).write(out)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        let app_message = r.mls_message()?;
        if app_message.wire_format() != wire_format::PRIVATE {
            return Err(invalid("appMessage is not a PrivateMessage"));
        }
        Ok(Self { app_message, sending_uri: IdentifierUri::read(r)?.0 })
    }
}

/// `SubmitMessageResponse` (§5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMessageResponse {
    /// `accepted(0)`: the hub sequenced the message at `accepted_timestamp` (ms since the UNIX epoch).
    Accepted {
        /// Hub acceptance time.
        accepted_timestamp: u64,
    },
    /// `notAllowed(1)`.
    NotAllowed,
    /// `epochTooOld(2)`: the hub's group is at `current_epoch`.
    EpochTooOld {
        /// The hub's epoch.
        current_epoch: u64,
    },
}

impl WireMessage for SubmitMessageResponse {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u8(1)?;
        match self {
            Self::Accepted { accepted_timestamp } => {
                out.u8(0)?;
                out.u64(*accepted_timestamp)?;
                out.u8(0) // optional<Frank>: absent
            }
            Self::NotAllowed => out.u8(1),
            Self::EpochTooOld { current_epoch } => {
                out.u8(2)?;
                out.u64(*current_epoch)
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        match r.u8()? {
            0 => {
                let accepted_timestamp = r.u64()?;
                if r.u8()? != 0 {
                    // A frank: server_frank[32], CipherSuite, opaque signature<V>. Skipped.
                    for _ in 0..32 {
                        r.u8()?;
                    }
                    r.u16()?;
                    r.vl_bytes()?;
                }
                Ok(Self::Accepted { accepted_timestamp })
            }
            1 => Ok(Self::NotAllowed),
            2 => Ok(Self::EpochTooOld { current_epoch: r.u64()? }),
            c => Err(invalid(format!("SubmitResponseCode {c}"))),
        }
    }
}

/// `RatchetTreeOption` (draft-mahy-mls-ratchet-tree-options §3), the representations we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RatchetTreeOption {
    /// `full(1)`: the tree (its TLS encoding, `optional<Node> ratchet_tree<V>`).
    Full(Vec<u8>),
    /// `outOfBand(3)`: a URL to fetch it from.
    OutOfBand(String),
    /// `distributionService(4)`: ask the hub (or the tree is inside the Welcome / GroupInfo).
    DistributionService,
}

impl WireMessage for RatchetTreeOption {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        match self {
            Self::Full(tree) => {
                out.u8(1)?;
                out.raw(tree);
                Ok(())
            }
            Self::OutOfBand(url) => {
                out.u8(3)?;
                out.vl_bytes(url.as_bytes())
            }
            Self::DistributionService => out.u8(4),
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            1 => {
                let body = r.vl_bytes()?;
                let mut w = Writer::default();
                w.vl_bytes(&body)?;
                Ok(Self::Full(w.0))
            }
            3 => String::from_utf8(r.vl_bytes()?).map(Self::OutOfBand).map_err(|_| invalid("tree URL")),
            4 => Ok(Self::DistributionService),
            c => Err(invalid(format!("RatchetTreeRepresentation {c}"))),
        }
    }
}

/// `FanoutMessage` (§5.5): a message the hub accepted, as it is sent to followers (`/notify`) and clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutMessage {
    /// Hub acceptance time, ms since the UNIX epoch.
    pub timestamp: u64,
    /// The MLSMessage: PrivateMessage, PublicMessage (proposal or commit) or Welcome.
    pub message: MlsMessageBytes,
    /// For a Welcome: how to get the ratchet tree.
    pub ratchet_tree: Option<RatchetTreeOption>,
    /// For a PublicMessage: `moreProposals` / `externalProposals`.
    pub more_proposals: Vec<MlsMessageBytes>,
}

impl FanoutMessage {
    /// A fanout of `message` with nothing attached.
    pub fn plain(timestamp: u64, message: MlsMessageBytes) -> Self {
        let ratchet_tree =
            (message.wire_format() == wire_format::WELCOME).then_some(RatchetTreeOption::DistributionService);
        Self { timestamp, message, ratchet_tree, more_proposals: Vec::new() }
    }
}

impl WireMessage for FanoutMessage {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u64(self.timestamp)?;
        out.raw(self.message.as_bytes());
        match self.message.wire_format() {
            wire_format::PRIVATE => out.u8(0),
            wire_format::WELCOME => {
                self.ratchet_tree.as_ref().unwrap_or(&RatchetTreeOption::DistributionService).write(out)
            }
            wire_format::PUBLIC => out.vl_list(&self.more_proposals, |w, m| {
                w.raw(m.as_bytes());
                Ok(())
            }),
            f => Err(WireError::Encode(format!("wire format {f} cannot be fanned out"))),
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let timestamp = r.u64()?;
        let message = r.mls_message()?;
        let (mut ratchet_tree, mut more_proposals) = (None, Vec::new());
        match message.wire_format() {
            wire_format::PRIVATE => {
                if r.u8()? != 0 {
                    return Err(invalid("franks are not supported"));
                }
            }
            wire_format::WELCOME => ratchet_tree = Some(RatchetTreeOption::read(r)?),
            wire_format::PUBLIC => more_proposals = r.vl_list(|r| r.mls_message())?,
            f => return Err(invalid(format!("wire format {f} in a FanoutMessage"))),
        }
        Ok(Self { timestamp, message, ratchet_tree, more_proposals })
    }
}

/// Our extension: one entry of the hub's room log, `struct { uint64 seq; FanoutMessage fanout; }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedFanout {
    /// The hub's sequence number in the room (from 1, no gaps).
    pub seq: u64,
    /// The message.
    pub fanout: FanoutMessage,
}

impl WireMessage for SequencedFanout {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u64(self.seq)?;
        self.fanout.write(out)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { seq: r.u64()?, fanout: FanoutMessage::read(r)? })
    }
}

/// Our extension: a page of the hub's log, `SequencedFanout entries<V>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage(pub Vec<SequencedFanout>);

impl WireMessage for LogPage {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.vl_list(&self.0, |w, e| e.write(w))
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.vl_list(SequencedFanout::read).map(Self)
    }
}

/// `GroupInfoOption` (§5.3), `full(1)` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoOption(pub MlsMessageBytes);

/// `HandshakeBundle` (§5.3), the body of `UpdateRequest` for MLS 1.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateRequest {
    /// A commit (PublicMessage), with what new members and external joiners need.
    Commit {
        /// The commit.
        commit: MlsMessageBytes,
        /// The Welcome for added members (as an MLSMessage).
        welcome: Option<MlsMessageBytes>,
        /// The GroupInfo of the new epoch (as an MLSMessage).
        group_info: GroupInfoOption,
        /// The ratchet tree of the new epoch.
        ratchet_tree: RatchetTreeOption,
    },
    /// Proposals (PublicMessages).
    Proposals {
        /// The first proposal.
        proposal: MlsMessageBytes,
        /// `moreProposals`.
        more: Vec<MlsMessageBytes>,
    },
}

impl UpdateRequest {
    /// The handshake message the hub sequences.
    pub fn message(&self) -> &MlsMessageBytes {
        match self {
            Self::Commit { commit, .. } => commit,
            Self::Proposals { proposal, .. } => proposal,
        }
    }
}

/// The content type of a PublicMessage: 2 proposal, 3 commit (RFC 9420 §6), or `None` for other messages.
pub fn public_content_type(m: &MlsMessageBytes) -> Option<u8> {
    use openmls::prelude::{ContentType, MlsMessageBodyIn, ProtocolMessage};
    let mut slice = m.as_bytes();
    let msg = MlsMessageIn::tls_deserialize(&mut slice).ok()?;
    let MlsMessageBodyIn::PublicMessage(p) = msg.extract() else { return None };
    let pm: ProtocolMessage = p.into();
    Some(match pm.content_type() {
        ContentType::Application => 1,
        ContentType::Proposal => 2,
        ContentType::Commit => 3,
    })
}

impl WireMessage for UpdateRequest {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        match self {
            Self::Commit { commit, welcome, group_info, ratchet_tree } => {
                out.raw(commit.as_bytes());
                match welcome {
                    Some(w) => {
                        out.u8(1)?;
                        out.raw(w.inner());
                    }
                    None => out.u8(0)?,
                }
                out.u8(1)?; // GroupInfoRepresentation full
                out.raw(group_info.0.inner());
                ratchet_tree.write(out)
            }
            Self::Proposals { proposal, more } => {
                out.raw(proposal.as_bytes());
                out.vl_list(more, |w, m| {
                    w.raw(m.as_bytes());
                    Ok(())
                })
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let first = r.mls_message()?;
        match public_content_type(&first) {
            Some(3) => {
                let welcome = match r.u8()? {
                    0 => None,
                    1 => Some(r.mls_inner(wire_format::WELCOME)?),
                    _ => return Err(invalid("optional<Welcome> flag")),
                };
                if r.u8()? != 1 {
                    return Err(invalid("GroupInfoRepresentation (only full is supported)"));
                }
                let group_info = GroupInfoOption(r.mls_inner(wire_format::GROUP_INFO)?);
                let ratchet_tree = RatchetTreeOption::read(r)?;
                Ok(Self::Commit { commit: first, welcome, group_info, ratchet_tree })
            }
            Some(2) => Ok(Self::Proposals { proposal: first, more: r.vl_list(|r| r.mls_message())? }),
            _ => Err(invalid("proposalOrCommit is not a PublicMessage proposal or commit")),
        }
    }
}

/// `UpdateResponseCode` and its data (`UpdateRoomResponse`, §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateRoomResponse {
    /// `success(0)`.
    Success {
        /// Hub acceptance time, ms since the UNIX epoch.
        accepted_timestamp: u64,
    },
    /// `wrongEpoch(1)`.
    WrongEpoch {
        /// The hub's epoch.
        current_epoch: u64,
        /// Why.
        description: String,
    },
    /// `notAllowed(2)`.
    NotAllowed {
        /// Why.
        description: String,
    },
    /// `invalidProposal(3)` (we never list the refs).
    InvalidProposal {
        /// Why.
        description: String,
    },
}

impl WireMessage for UpdateRoomResponse {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        match self {
            Self::Success { accepted_timestamp } => {
                out.u8(0)?;
                out.vl_bytes(b"")?;
                out.u64(*accepted_timestamp)
            }
            Self::WrongEpoch { current_epoch, description } => {
                out.u8(1)?;
                out.vl_bytes(description.as_bytes())?;
                out.u64(*current_epoch)
            }
            Self::NotAllowed { description } => {
                out.u8(2)?;
                out.vl_bytes(description.as_bytes())
            }
            Self::InvalidProposal { description } => {
                out.u8(3)?;
                out.vl_bytes(description.as_bytes())?;
                out.vl_bytes(b"")
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let code = r.u8()?;
        let description = String::from_utf8(r.vl_bytes()?).map_err(|_| invalid("errorDescription"))?;
        match code {
            0 => Ok(Self::Success { accepted_timestamp: r.u64()? }),
            1 => Ok(Self::WrongEpoch { current_epoch: r.u64()?, description }),
            2 => Ok(Self::NotAllowed { description }),
            3 => {
                r.vl_bytes()?;
                Ok(Self::InvalidProposal { description })
            }
            c => Err(invalid(format!("UpdateResponseCode {c}"))),
        }
    }
}
