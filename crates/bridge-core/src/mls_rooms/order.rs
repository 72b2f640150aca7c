//! One order on every leg: what the hub sequenced before a message the portal publishes, and the portal has not
//! recorded yet, is handed back with it ([`crate::room_of_record::Published::earlier`]).

use super::{MlsRooms, Slot, decode_incoming_with_parts, kept_list, leaves, take_external_parts};
use crate::room_of_record::GroupMessage;
use bridge_api::ids::{MessageId, PortalId};

impl MlsRooms {
    /// The messages of other members the hub sequenced before `seq` that the router has not taken yet, in log
    /// order: the log is applied up to now first, so none is missing. (Each also goes the usual way, through the
    /// incoming path, where the portal drops it by message id.) A failure leaves them to that path alone.
    pub(super) async fn sequenced_before(
        &self,
        portal: &PortalId,
        s: &mut Slot,
        seq: u64,
    ) -> Vec<(MessageId, GroupMessage)> {
        if let Err(e) = self.catch_up(portal, s).await {
            tracing::warn!(portal = %portal, error = %e, "catching up with the room log failed");
        }
        let handed_on = self.handed_on.lock().ok().and_then(|h| h.get(&s.room).copied()).unwrap_or(0);
        let kept = match s.group.kept_messages(&kept_list(&s.room)) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(portal = %portal, error = %e, "messages sequenced earlier not read");
                return Vec::new();
            }
        };
        let mut earlier = Vec::new();
        for k in kept.into_iter().filter(|k| k.seq > handed_on && k.seq < seq) {
            if leaves::is_local_leaf(s, &k.sender_identity) {
                continue;
            }
            match decode_incoming_with_parts(portal, &s.room, &k.sender_identity, &k.plaintext) {
                Ok((id, mut msg, parts)) => {
                    if !parts.is_empty() {
                        take_external_parts(self.media.get(), &mut msg, &parts).await;
                    }
                    earlier.push((id, msg));
                }
                Err(e) => tracing::debug!(portal = %portal, error = %e, "kept message discarded"),
            }
        }
        earlier
    }
}
