//! One order on every leg: what the hub sequenced before a message the portal publishes, and the portal has not
//! recorded yet, is handed back with it ([`crate::room_of_record::Published::earlier`]).

use super::{MlsRooms, Slot, decode_incoming_with_parts, kept_list, take_external_parts};
use crate::room_of_record::GroupMessage;
use bridge_api::ids::{MessageId, PortalId};
use mimi_content::model::ExternalPart;
use mimi_mls::{MlsError, PortalGroup, UserLeaves};

/// One kept message, decoded: its log sequence number, MIMI id, content and external parts.
pub(super) type Kept = (u64, MessageId, GroupMessage, Vec<ExternalPart>);

/// The messages of `room` decrypted but not yet handed on (the kept list) whose sequence number `wanted` takes,
/// decoded, oldest first; those of the bridge's own per-user `leaves` and those that do not decode are left out.
pub(super) fn decoded_kept(
    group: &PortalGroup,
    portal: &PortalId,
    room: &str,
    leaves: Option<&UserLeaves>,
    wanted: impl Fn(u64) -> bool,
) -> Result<Vec<Kept>, MlsError> {
    let mut out = Vec::new();
    for k in group.kept_messages(&kept_list(room))?.into_iter().filter(|k| wanted(k.seq)) {
        if leaves.is_some_and(|l| std::str::from_utf8(&k.sender_identity).is_ok_and(|u| l.contains(u))) {
            continue;
        }
        match decode_incoming_with_parts(portal, room, &k.sender_identity, &k.plaintext) {
            Ok((id, msg, parts)) => out.push((k.seq, id, msg, parts)),
            Err(e) => tracing::debug!(portal = %portal, error = %e, "kept message discarded"),
        }
    }
    Ok(out)
}

impl MlsRooms {
    /// The messages of other members the hub sequenced before `seq` that the router has not taken yet, in log
    /// order: the log is applied up to now first, so none is missing. (Each also goes the usual way, through the
    /// incoming path, where the portal drops it by message id.) A failure leaves them to that path alone.
    pub(super) async fn kept_before(
        &self,
        portal: &PortalId,
        s: &mut Slot,
        seq: u64,
    ) -> Vec<(MessageId, GroupMessage)> {
        if let Err(e) = self.catch_up(portal, s).await {
            tracing::warn!(portal = %portal, error = %e, "catching up with the room log failed");
        }
        let handed_on = self.handed_on.lock().ok().and_then(|h| h.get(&s.room).copied()).unwrap_or(0);
        let kept = match decoded_kept(&s.group, portal, &s.room, s.leaves.as_ref(), |k| k > handed_on && k < seq) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(portal = %portal, error = %e, "messages sequenced earlier not read");
                return Vec::new();
            }
        };
        let mut earlier = Vec::new();
        for (_, id, mut msg, parts) in kept {
            if !parts.is_empty() {
                take_external_parts(self.media.get(), &mut msg, &parts).await;
            }
            earlier.push((id, msg));
        }
        earlier
    }
}
