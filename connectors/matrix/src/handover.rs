//! Handing Matrix events to the core, as both modes do: queue each, then wait for the core's durable
//! acknowledgements. A temporary refusal is the caller's to retry (the appservice answers the transaction 500, the
//! bot syncs the same response again); a final one is logged and the event dropped.

use bridge_api::connector::PendingAck;
use bridge_api::{AccountId, InboundEvent, RouteError};

/// Whether the core's refusal is temporary (store or room of record unavailable, shutting down).
pub(crate) fn temporary(e: &RouteError) -> bool {
    matches!(e, RouteError::Store(_) | RouteError::Closed | RouteError::Room(bridge_api::RoomError::Unavailable(_)))
}

/// Queues `inbound` on its portal: its acknowledgement to wait for, `None` if the core refused it for good, `Err`
/// if it cannot take it now.
pub(crate) async fn queue(
    account: &AccountId,
    sink: &bridge_api::InboundSink,
    inbound: InboundEvent,
) -> Result<Option<PendingAck>, String> {
    match sink.enqueue(inbound).await {
        Ok(ack) => Ok(Some(ack)),
        Err(e) if temporary(&e) => Err(e.to_string()),
        Err(e) => {
            tracing::warn!(%account, error = %e, "event refused by the core");
            Ok(None)
        }
    }
}

/// Waits until the core durably took (or refused for good) every queued event; `Err` at the first temporary
/// refusal.
pub(crate) async fn settled(account: &AccountId, pending: Vec<PendingAck>) -> Result<(), String> {
    for ack in pending {
        match ack.wait().await {
            Ok(_) => {}
            Err(e) if temporary(&e) => return Err(e.to_string()),
            Err(e) => tracing::warn!(%account, error = %e, "event refused by the core"),
        }
    }
    Ok(())
}
