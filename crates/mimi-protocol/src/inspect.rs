//! What a hub can see of an MLS message without being a member: wire format, group, epoch, content type, and
//! for a PublicMessage its sender (RFC 9420 §6). Parsed with OpenMLS, never decrypted.

use super::wire::{MlsMessageBytes, WireError};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage, Sender};

/// The sender of a PublicMessage as far as the hub can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicSender {
    /// A member, by leaf index.
    Member(u32),
    /// An external sender (`external_senders` extension).
    External,
    /// A new member joining by external commit.
    NewMemberCommit,
    /// A new member proposing its own add.
    NewMemberProposal,
}

/// The public facts of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspected {
    /// A PrivateMessage (application message or encrypted handshake).
    Private {
        /// Group id.
        group_id: Vec<u8>,
        /// Epoch.
        epoch: u64,
        /// True for an application message.
        application: bool,
    },
    /// A PublicMessage.
    Public {
        /// Group id.
        group_id: Vec<u8>,
        /// Epoch.
        epoch: u64,
        /// True for a commit, false for a proposal (public application messages are refused).
        commit: bool,
        /// The sender.
        sender: PublicSender,
    },
    /// A Welcome.
    Welcome {
        /// KeyPackageRefs of the new members it is for.
        new_members: Vec<Vec<u8>>,
    },
    /// A GroupInfo.
    GroupInfo {
        /// Group id.
        group_id: Vec<u8>,
        /// Epoch.
        epoch: u64,
    },
    /// A KeyPackage.
    KeyPackage,
}

/// Inspects `m`.
pub fn inspect(m: &MlsMessageBytes) -> Result<Inspected, WireError> {
    let mut slice = m.as_bytes();
    let msg = MlsMessageIn::tls_deserialize(&mut slice).map_err(|e| WireError::Mls(e.to_string()))?;
    Ok(match msg.extract() {
        MlsMessageBodyIn::PrivateMessage(p) => {
            let pm: ProtocolMessage = p.into();
            Inspected::Private {
                group_id: pm.group_id().as_slice().to_vec(),
                epoch: pm.epoch().as_u64(),
                application: pm.content_type() == ContentType::Application,
            }
        }
        MlsMessageBodyIn::PublicMessage(p) => {
            let sender = match p.sender() {
                Sender::Member(i) => PublicSender::Member(i.u32()),
                Sender::External(_) => PublicSender::External,
                Sender::NewMemberCommit => PublicSender::NewMemberCommit,
                Sender::NewMemberProposal => PublicSender::NewMemberProposal,
            };
            let pm: ProtocolMessage = p.into();
            let commit = match pm.content_type() {
                ContentType::Commit => true,
                ContentType::Proposal => false,
                ContentType::Application => {
                    return Err(WireError::Invalid("application message as PublicMessage".into()));
                }
            };
            Inspected::Public {
                group_id: pm.group_id().as_slice().to_vec(),
                epoch: pm.epoch().as_u64(),
                commit,
                sender,
            }
        }
        MlsMessageBodyIn::Welcome(w) => {
            Inspected::Welcome { new_members: w.secrets().iter().map(|s| s.new_member().as_slice().to_vec()).collect() }
        }
        MlsMessageBodyIn::GroupInfo(g) => {
            Inspected::GroupInfo { group_id: g.group_id().as_slice().to_vec(), epoch: g.epoch().as_u64() }
        }
        MlsMessageBodyIn::KeyPackage(_) => Inspected::KeyPackage,
    })
}
